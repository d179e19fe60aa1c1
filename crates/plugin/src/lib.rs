//! Write Vigil resource-type plugins in Rust.
//!
//! A plugin is a shared library (`crate-type = ["cdylib"]`) with the C ABI of
//! `include/vigil_plugin.h`: one exported `vigil_plugin_entry` returning a function table.
//! [`abi`] is that header in Rust (the RHS loads plugins through it too); [`Plugin`] is the
//! safe side: implement it and export it with [`export_plugin!`]:
//!
//! ```ignore
//! struct Marker { /* … */ }
//! impl vigil_plugin::Plugin for Marker {
//!     fn open(ctx: &vigil_plugin::Context) -> Result<Self, String> { /* … */ }
//!     fn online(&mut self) -> vigil_plugin::Status { /* … */ }
//! }
//! vigil_plugin::export_plugin!(Marker, name = "marker", description = "…", schema = "[…]");
//! ```
//!
//! A panic in an entry point is caught and answered as a failure naming the panic; it never
//! unwinds into the RHS.

use std::collections::BTreeMap;
use std::ffi::{CStr, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};

/// `include/vigil_plugin.h` in Rust.
pub mod abi {
    use std::ffi::{c_char, c_void};

    pub const ABI_VERSION: u32 = 1;
    /// The one exported symbol (NUL-terminated, for `dlsym`).
    pub const ENTRY: &[u8] = b"vigil_plugin_entry\0";

    pub type Status = i32;
    pub const OK: Status = 0;
    pub const PENDING: Status = 1;
    pub const FAILED: Status = 2;
    pub const STOPPED: Status = 3;
    pub const CONFIG_ERROR: Status = 4;

    #[repr(C)]
    pub struct Param {
        pub name: *const c_char,
        pub value: *const c_char,
    }

    #[repr(C)]
    pub struct OpenContext {
        pub resource: *const c_char,
        pub node: *const c_char,
        pub epoch: u64,
        pub params: *const Param,
        pub n_params: usize,
    }

    pub type OpenFn = unsafe extern "C" fn(*const OpenContext, *mut c_char, usize) -> *mut c_void;
    pub type CloseFn = unsafe extern "C" fn(*mut c_void);
    pub type ActionFn = unsafe extern "C" fn(*mut c_void, *mut c_char, usize) -> Status;
    pub type TerminateFn = unsafe extern "C" fn(*mut c_void);
    pub type ControlFn =
        unsafe extern "C" fn(*mut c_void, *const c_char, *mut c_char, usize) -> Status;

    #[repr(C)]
    pub struct PluginTable {
        pub abi_version: u32,
        pub table_size: u32,
        pub name: *const c_char,
        pub description: *const c_char,
        pub schema_json: *const c_char,
        pub open: Option<OpenFn>,
        pub close: Option<CloseFn>,
        pub online: Option<ActionFn>,
        pub offline: Option<ActionFn>,
        pub terminate: Option<TerminateFn>,
        pub looks_alive: Option<ActionFn>,
        pub is_alive: Option<ActionFn>,
        pub control: Option<ControlFn>,
    }

    // SAFETY: the table is immutable and its pointers are to static, NUL-terminated text.
    unsafe impl Sync for PluginTable {}

    pub type EntryFn = unsafe extern "C" fn() -> *const PluginTable;
}

/// An entry point's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    /// Online/Offline still working: call again.
    Pending,
    Failed(String),
    /// Checks: stopped outside the cluster on purpose (not restarted).
    Stopped(String),
    /// The configuration is wrong on this node: not retried here.
    ConfigError(String),
}

/// What [`Plugin::open`] is told.
#[derive(Clone, Debug)]
pub struct Context {
    pub resource: String,
    pub node: String,
    pub epoch: u64,
    pub params: BTreeMap<String, String>,
}

/// A resource type. Every entry point but `open` has a default that does nothing and
/// succeeds, as a NULL entry in the C table would.
pub trait Plugin: Sized + Send + 'static {
    fn open(ctx: &Context) -> Result<Self, String>;
    fn online(&mut self) -> Status {
        Status::Ok
    }
    fn offline(&mut self) -> Status {
        Status::Ok
    }
    fn terminate(&mut self) {}
    fn looks_alive(&mut self) -> Status {
        Status::Ok
    }
    fn is_alive(&mut self) -> Status {
        Status::Ok
    }
    fn control(&mut self, request: &str) -> Result<String, String> {
        Err(format!("unsupported request {request:?}"))
    }
}

/// Builds the table for `T`; used by [`export_plugin!`].
pub const fn table<T: Plugin>(
    name: &'static CStr,
    description: &'static CStr,
    schema_json: &'static CStr,
) -> abi::PluginTable {
    abi::PluginTable {
        abi_version: abi::ABI_VERSION,
        table_size: std::mem::size_of::<abi::PluginTable>() as u32,
        name: name.as_ptr(),
        description: description.as_ptr(),
        schema_json: schema_json.as_ptr(),
        open: Some(open::<T>),
        close: Some(close::<T>),
        online: Some(online::<T>),
        offline: Some(offline::<T>),
        terminate: Some(terminate::<T>),
        looks_alive: Some(looks_alive::<T>),
        is_alive: Some(is_alive::<T>),
        control: Some(control::<T>),
    }
}

/// Exports `$ty` as this library's plugin.
#[macro_export]
macro_rules! export_plugin {
    ($ty:ty, name = $name:literal, description = $description:literal, schema = $schema:literal $(,)?) => {
        /// The plugin's function table (see `include/vigil_plugin.h`).
        #[unsafe(no_mangle)]
        pub extern "C" fn vigil_plugin_entry() -> *const $crate::abi::PluginTable {
            static TABLE: $crate::abi::PluginTable = $crate::table::<$ty>(
                match ::std::ffi::CStr::from_bytes_with_nul(concat!($name, "\0").as_bytes()) {
                    Ok(s) => s,
                    Err(_) => panic!("the plugin name contains a NUL"),
                },
                match ::std::ffi::CStr::from_bytes_with_nul(concat!($description, "\0").as_bytes())
                {
                    Ok(s) => s,
                    Err(_) => panic!("the description contains a NUL"),
                },
                match ::std::ffi::CStr::from_bytes_with_nul(concat!($schema, "\0").as_bytes()) {
                    Ok(s) => s,
                    Err(_) => panic!("the schema contains a NUL"),
                },
            );
            &TABLE
        }
    };
}

/// Copies `text` into the caller's buffer, cut to fit (at a character boundary) and
/// NUL-terminated.
fn write_msg(text: &str, msg: *mut c_char, len: usize) {
    if msg.is_null() || len == 0 {
        return;
    }
    let mut end = text.len().min(len - 1);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    // SAFETY: the caller gives `len` writable bytes at `msg`; we write `end + 1 <= len`.
    unsafe {
        std::ptr::copy_nonoverlapping(text.as_ptr(), msg.cast::<u8>(), end);
        *msg.add(end) = 0;
    }
}

fn text(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the host passes NUL-terminated strings that live for the call.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| e.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_string())
}

fn answer(status: Status, msg: *mut c_char, len: usize) -> abi::Status {
    match status {
        Status::Ok => abi::OK,
        Status::Pending => abi::PENDING,
        Status::Failed(why) => {
            write_msg(&why, msg, len);
            abi::FAILED
        }
        Status::Stopped(why) => {
            write_msg(&why, msg, len);
            abi::STOPPED
        }
        Status::ConfigError(why) => {
            write_msg(&why, msg, len);
            abi::CONFIG_ERROR
        }
    }
}

/// Runs `f` on the instance, turning a panic into a failure.
fn with<T: Plugin>(
    instance: *mut c_void,
    msg: *mut c_char,
    len: usize,
    f: impl FnOnce(&mut T) -> Status,
) -> abi::Status {
    if instance.is_null() {
        write_msg("no instance (open failed)", msg, len);
        return abi::FAILED;
    }
    // SAFETY: `instance` came from `open::<T>` and the host calls one entry at a time.
    let this = unsafe { &mut *instance.cast::<T>() };
    match catch_unwind(AssertUnwindSafe(|| f(this))) {
        Ok(status) => answer(status, msg, len),
        Err(e) => answer(
            Status::Failed(format!("the plugin panicked: {}", panic_text(&*e))),
            msg,
            len,
        ),
    }
}

unsafe extern "C" fn open<T: Plugin>(
    ctx: *const abi::OpenContext,
    msg: *mut c_char,
    len: usize,
) -> *mut c_void {
    if ctx.is_null() {
        write_msg("no open context", msg, len);
        return std::ptr::null_mut();
    }
    // SAFETY: the host passes a valid context for the duration of the call.
    let c = unsafe { &*ctx };
    let params = if c.params.is_null() || c.n_params == 0 {
        &[][..]
    } else {
        // SAFETY: `params` points to `n_params` entries for the duration of the call.
        unsafe { std::slice::from_raw_parts(c.params, c.n_params) }
    };
    let context = Context {
        resource: text(c.resource),
        node: text(c.node),
        epoch: c.epoch,
        params: params
            .iter()
            .map(|p| (text(p.name), text(p.value)))
            .collect(),
    };
    match catch_unwind(|| T::open(&context)) {
        Ok(Ok(instance)) => Box::into_raw(Box::new(instance)).cast(),
        Ok(Err(why)) => {
            write_msg(&why, msg, len);
            std::ptr::null_mut()
        }
        Err(e) => {
            write_msg(
                &format!("the plugin panicked in open: {}", panic_text(&*e)),
                msg,
                len,
            );
            std::ptr::null_mut()
        }
    }
}

unsafe extern "C" fn close<T: Plugin>(instance: *mut c_void) {
    if !instance.is_null() {
        // SAFETY: `instance` came from `open::<T>`; the host closes it once.
        let this = unsafe { Box::from_raw(instance.cast::<T>()) };
        let _ = catch_unwind(AssertUnwindSafe(|| drop(this)));
    }
}

unsafe extern "C" fn online<T: Plugin>(i: *mut c_void, msg: *mut c_char, len: usize) -> i32 {
    with::<T>(i, msg, len, T::online)
}

unsafe extern "C" fn offline<T: Plugin>(i: *mut c_void, msg: *mut c_char, len: usize) -> i32 {
    with::<T>(i, msg, len, T::offline)
}

unsafe extern "C" fn terminate<T: Plugin>(i: *mut c_void) {
    with::<T>(i, std::ptr::null_mut(), 0, |t| {
        t.terminate();
        Status::Ok
    });
}

unsafe extern "C" fn looks_alive<T: Plugin>(i: *mut c_void, msg: *mut c_char, len: usize) -> i32 {
    with::<T>(i, msg, len, T::looks_alive)
}

unsafe extern "C" fn is_alive<T: Plugin>(i: *mut c_void, msg: *mut c_char, len: usize) -> i32 {
    with::<T>(i, msg, len, T::is_alive)
}

unsafe extern "C" fn control<T: Plugin>(
    i: *mut c_void,
    request: *const c_char,
    msg: *mut c_char,
    len: usize,
) -> i32 {
    let request = text(request);
    with::<T>(i, msg, len, |t| match t.control(&request) {
        Ok(reply) => {
            write_msg(&reply, msg, len);
            Status::Ok
        }
        Err(why) => Status::Failed(why),
    })
}
