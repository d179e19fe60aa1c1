//! Plugin types: a shared library with the C ABI of `crates/plugin/include/vigil_plugin.h`
//! (the seed's resource DLL), loaded only inside an RHS process.
//!
//! [`PluginType::load`] opens the library, finds `vigil_plugin_entry`, and checks the ABI
//! version and table size before it reads anything else from the table. A library that does
//! not load, lacks the symbol or speaks another ABI version is an error naming the path and
//! the problem. `vigil rhs --probe PATH` runs the same load in a process of its own, for
//! `vigil type register`: the agent never loads a plugin.
//!
//! Answers map as the header says; a status the ABI does not define is a failure naming the
//! status. A crash takes down this RHS only; a hang is caught by the host's watchdog.

use std::ffi::{CStr, CString, c_char, c_void};
use std::path::Path;
use std::sync::Arc;

use vigil_core::model::Plugin;
use vigil_core::params::ParamSpec;
use vigil_plugin::abi;

use super::{CallBound, Fault, Health, OpenContext, Progress, Resource, ResourceType};

/// Room for a reason or reply written by the plugin.
const MSG_BYTES: usize = 4096;

pub struct PluginType {
    /// What registration learns (and the cluster database keeps).
    info: Plugin,
    table: &'static abi::PluginTable,
    /// Kept loaded while the type or any instance lives (`table` points into it).
    library: Arc<libloading::Library>,
}

fn text(p: *const c_char, what: &str) -> Result<String, String> {
    if p.is_null() {
        return Err(format!("its {what} is missing (NULL)"));
    }
    // SAFETY: the table's strings are NUL-terminated and static (the ABI says so).
    Ok(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

impl PluginType {
    /// Loads the plugin at `path` and checks its table.
    pub fn load(path: &str) -> Result<PluginType, String> {
        let fail = |why: String| format!("plugin {path}: {why}");
        if !Path::new(path).is_absolute() {
            return Err(fail("the path must be absolute".to_string()));
        }
        // SAFETY: loading runs the library's initializers; that is what a plugin is for, and
        // it happens only in an RHS (a crash there takes down only that process).
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| {
            let detail = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            fail(format!("cannot be loaded: {e}{detail}"))
        })?;
        // SAFETY: the symbol's type is the ABI's entry type; checked by name only, as dlsym can.
        let entry: abi::EntryFn = unsafe { library.get::<abi::EntryFn>(abi::ENTRY) }
            .map(|s| *s)
            .map_err(|_| {
                fail("has no vigil_plugin_entry symbol: it is not a Vigil plugin".to_string())
            })?;
        // SAFETY: calling the plugin's entry as the ABI defines it.
        let table = unsafe { entry() };
        if table.is_null() {
            return Err(fail("vigil_plugin_entry returned NULL".to_string()));
        }
        // The version is the first field in every ABI version: read it before anything else.
        // SAFETY: the entry returned a non-null pointer to its table.
        let version = unsafe { *table.cast::<u32>() };
        if version != abi::ABI_VERSION {
            return Err(fail(format!(
                "speaks plugin ABI version {version}; this Vigil speaks version {}",
                abi::ABI_VERSION
            )));
        }
        // SAFETY: same ABI version: the table has this layout and lives as long as the library.
        let table: &'static abi::PluginTable = unsafe { &*table };
        let size = std::mem::size_of::<abi::PluginTable>();
        if (table.table_size as usize) < size {
            return Err(fail(format!(
                "its table is {} bytes, version {} needs {size}",
                table.table_size,
                abi::ABI_VERSION
            )));
        }
        let name = text(table.name, "name").map_err(fail)?;
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(fail(format!(
                "its name {name:?} is not valid: use lowercase letters, digits, '_' and '-'"
            )));
        }
        let description = text(table.description, "description").map_err(fail)?;
        let schema_json = text(table.schema_json, "schema").map_err(fail)?;
        let schema: Vec<ParamSpec> = serde_json::from_str(&schema_json)
            .map_err(|e| fail(format!("its parameter schema is not valid: {e}")))?;
        if table.open.is_none() {
            return Err(fail("its table has no open entry".to_string()));
        }
        Ok(PluginType {
            info: Plugin {
                name,
                library: path.to_string(),
                description,
                abi_version: version,
                schema,
            },
            table,
            library: Arc::new(library),
        })
    }

    pub fn info(&self) -> &Plugin {
        &self.info
    }
}

impl ResourceType for PluginType {
    fn name(&self) -> &str {
        &self.info.name
    }

    fn description(&self) -> &str {
        &self.info.description
    }

    fn schema(&self) -> Vec<ParamSpec> {
        self.info.schema.clone()
    }

    fn check(
        &self,
        _params: &std::collections::BTreeMap<String, String>,
    ) -> Result<CallBound, String> {
        Ok(CallBound {
            ms: 0,
            why: "a plugin states no bound".to_string(),
        })
    }

    fn open(&self, ctx: OpenContext) -> Result<Box<dyn Resource>, String> {
        let cstr = |s: &str, what: &str| {
            CString::new(s).map_err(|_| format!("{what} {s:?} contains a NUL byte"))
        };
        let resource = cstr(&ctx.resource, "resource name")?;
        let node = cstr(&ctx.node, "node name")?;
        let mut owned = Vec::new();
        for (k, v) in &ctx.params {
            owned.push((cstr(k, "parameter")?, cstr(v, "parameter value")?));
        }
        let params: Vec<abi::Param> = owned
            .iter()
            .map(|(k, v)| abi::Param {
                name: k.as_ptr(),
                value: v.as_ptr(),
            })
            .collect();
        let c = abi::OpenContext {
            resource: resource.as_ptr(),
            node: node.as_ptr(),
            epoch: ctx.epoch,
            params: params.as_ptr(),
            n_params: params.len(),
        };
        let open = self.table.open.expect("checked at load");
        let mut msg = [0u8; MSG_BYTES];
        // SAFETY: the context and its strings live for the call; msg has MSG_BYTES bytes.
        let instance = unsafe { open(&c, msg.as_mut_ptr().cast(), MSG_BYTES) };
        if instance.is_null() {
            let why = reason(&msg);
            return Err(format!(
                "plugin {} ({}) refused to open {}: {}",
                self.info.name,
                self.info.library,
                ctx.resource,
                if why.is_empty() {
                    "no reason given"
                } else {
                    &why
                }
            ));
        }
        Ok(Box::new(PluginResource {
            table: self.table,
            instance: Instance(instance),
            _library: self.library.clone(),
        }))
    }
}

/// The plugin's instance pointer; the host calls one entry at a time per resource.
struct Instance(*mut c_void);
// SAFETY: the ABI requires entry points to accept calls from any thread, one at a time per
// instance, which is how the host calls them.
unsafe impl Send for Instance {}

struct PluginResource {
    table: &'static abi::PluginTable,
    instance: Instance,
    /// Keeps the library loaded while this instance lives.
    _library: Arc<libloading::Library>,
}

/// The NUL-terminated text the plugin left in `msg`, invalid UTF-8 replaced.
fn reason(msg: &[u8]) -> String {
    let end = msg.iter().position(|b| *b == 0).unwrap_or(msg.len());
    String::from_utf8_lossy(&msg[..end]).trim().to_string()
}

/// An answer from the plugin, with its message.
enum Answer {
    Ok,
    Pending,
    Failed(String),
    Stopped(String),
    Misconfigured(String),
}

impl PluginResource {
    fn call(&mut self, entry: &str, f: Option<abi::ActionFn>) -> Answer {
        let Some(f) = f else {
            return Answer::Ok;
        };
        let mut msg = [0u8; MSG_BYTES];
        // SAFETY: a live instance of this plugin; msg has MSG_BYTES bytes.
        let status = unsafe { f(self.instance.0, msg.as_mut_ptr().cast(), MSG_BYTES) };
        let why = reason(&msg);
        let or = |default: &str| {
            if why.is_empty() {
                default.to_string()
            } else {
                why.clone()
            }
        };
        match status {
            abi::OK => Answer::Ok,
            abi::PENDING => Answer::Pending,
            abi::FAILED => Answer::Failed(or(&format!("{entry} failed (no reason given)"))),
            abi::STOPPED => Answer::Stopped(or("stopped outside the cluster")),
            abi::CONFIG_ERROR => Answer::Misconfigured(or(&format!(
                "{entry}: configuration error (no reason given)"
            ))),
            other => Answer::Failed(format!(
                "the plugin's {entry} answered status {other}, which plugin ABI version {} does not define (0-4){}",
                abi::ABI_VERSION,
                if why.is_empty() {
                    String::new()
                } else {
                    format!("; it said {why:?}")
                }
            )),
        }
    }

    fn health(&mut self, entry: &str, f: Option<abi::ActionFn>) -> Health {
        match self.call(entry, f) {
            Answer::Ok => Health::Alive,
            Answer::Pending => Health::Failed(format!(
                "the plugin's {entry} answered pending, which a check may not"
            )),
            Answer::Failed(w) => Health::Failed(w),
            Answer::Stopped(w) => Health::StoppedOutOfBand(w),
            Answer::Misconfigured(w) => Health::Misconfigured(w),
        }
    }

    fn progress(&mut self) -> Result<Progress, Fault> {
        match self.call("online", self.table.online) {
            Answer::Ok => Ok(Progress::Done),
            Answer::Pending => Ok(Progress::Pending(None)),
            Answer::Failed(w) | Answer::Stopped(w) => Err(Fault::Failed(w)),
            Answer::Misconfigured(w) => Err(Fault::Misconfigured(w)),
        }
    }
}

impl Resource for PluginResource {
    fn online(&mut self) -> Result<Progress, Fault> {
        self.progress()
    }

    fn online_progress(&mut self) -> Result<Progress, Fault> {
        self.progress()
    }

    fn offline(&mut self) -> Result<Option<String>, String> {
        loop {
            match self.call("offline", self.table.offline) {
                Answer::Ok => return Ok(None),
                // Bounded by the host's watchdog, like every call.
                Answer::Pending => std::thread::sleep(std::time::Duration::from_millis(50)),
                Answer::Failed(w) | Answer::Stopped(w) | Answer::Misconfigured(w) => {
                    return Err(w);
                }
            }
        }
    }

    fn terminate(&mut self) {
        if let Some(f) = self.table.terminate {
            // SAFETY: a live instance of this plugin.
            unsafe { f(self.instance.0) }
        }
    }

    fn looks_alive(&mut self) -> Health {
        self.health("looks_alive", self.table.looks_alive)
    }

    fn is_alive(&mut self) -> Health {
        self.health("is_alive", self.table.is_alive)
    }

    fn control(&mut self, request: &str) -> Result<String, String> {
        let Some(f) = self.table.control else {
            return Err("the plugin has no control entry".to_string());
        };
        let request = CString::new(request)
            .map_err(|_| format!("request {request:?} contains a NUL byte"))?;
        let mut msg = [0u8; MSG_BYTES];
        // SAFETY: a live instance; the request lives for the call; msg has MSG_BYTES bytes.
        let status = unsafe {
            f(
                self.instance.0,
                request.as_ptr(),
                msg.as_mut_ptr().cast(),
                MSG_BYTES,
            )
        };
        let said = reason(&msg);
        match status {
            abi::OK => Ok(said),
            abi::FAILED | abi::STOPPED | abi::CONFIG_ERROR | abi::PENDING => {
                Err(if said.is_empty() {
                    format!("the plugin refused the request (status {status})")
                } else {
                    said
                })
            }
            other => Err(format!(
                "the plugin's control answered status {other}, which plugin ABI version {} does not define (0-4)",
                abi::ABI_VERSION
            )),
        }
    }

    fn close(&mut self) {
        if let Some(f) = self.table.close {
            // SAFETY: a live instance, closed once: the pointer is cleared right after.
            unsafe { f(self.instance.0) }
        }
        self.instance.0 = std::ptr::null_mut();
    }
}

impl Drop for PluginResource {
    fn drop(&mut self) {
        if !self.instance.0.is_null() {
            self.close();
        }
    }
}
