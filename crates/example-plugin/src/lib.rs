//! An example resource-type plugin: a marker file.
//!
//! - Online writes `path` with the resource, node and epoch; Offline and Terminate remove it.
//! - LooksAlive: the file exists. IsAlive: it still holds what Online wrote.
//! - A `path` whose directory does not exist is a configuration error (not retried here).
//! - `pending_polls=N`: Online answers "pending" N times first (a long Online).
//! - `password`: a parameter its schema marks secret. The plugin answers it to the control
//!   request `password`, carelessly, as a real one might in an error; the RHS takes it out.
//! - `fault` makes it misbehave on purpose, for the isolation tests: `segv_on_online`
//!   (a segmentation fault), `hang_on_is_alive` (never returns), `panic_on_online`.
//!   (A plugin answering garbage is tested with a C plugin: the SDK cannot produce garbage.)

use std::path::PathBuf;

use vigil_plugin::{Context, Plugin, Status};

pub struct Marker {
    path: PathBuf,
    content: String,
    fault: Fault,
    /// Online answers "pending" this many more times before it does its work.
    pending_polls: u32,
    password: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    SegvOnOnline,
    HangOnIsAlive,
    PanicOnOnline,
}

impl Plugin for Marker {
    fn open(ctx: &Context) -> Result<Self, String> {
        let path = ctx.params.get("path").ok_or("parameter path is required")?;
        if !path.starts_with('/') {
            return Err(format!("path {path:?} must be absolute"));
        }
        let fault = match ctx.params.get("fault").map(String::as_str) {
            None | Some("none") => Fault::None,
            Some("segv_on_online") => Fault::SegvOnOnline,
            Some("hang_on_is_alive") => Fault::HangOnIsAlive,
            Some("panic_on_online") => Fault::PanicOnOnline,
            Some(other) => {
                return Err(format!(
                    "fault {other:?} is not one of none, segv_on_online, hang_on_is_alive, panic_on_online"
                ));
            }
        };
        let pending_polls = match ctx.params.get("pending_polls") {
            None => 0,
            Some(v) => v
                .parse()
                .map_err(|_| format!("pending_polls {v:?} is not a whole number"))?,
        };
        Ok(Marker {
            pending_polls,
            password: ctx.params.get("password").cloned(),
            path: PathBuf::from(path),
            content: format!("{} on {} epoch {}\n", ctx.resource, ctx.node, ctx.epoch),
            fault,
        })
    }

    fn online(&mut self) -> Status {
        match self.fault {
            Fault::SegvOnOnline => {
                // SAFETY: none; this is the fault the isolation test asks for.
                unsafe { std::ptr::null_mut::<u32>().write_volatile(1) };
            }
            Fault::PanicOnOnline => panic!("asked to panic"),
            _ => {}
        }
        if self.pending_polls > 0 {
            // A long Online: the host calls again until it is done.
            self.pending_polls -= 1;
            return Status::Pending;
        }
        let dir = self.path.parent().unwrap_or(std::path::Path::new("/"));
        if !dir.is_dir() {
            return Status::ConfigError(format!("directory {} does not exist", dir.display()));
        }
        match std::fs::write(&self.path, &self.content) {
            Ok(()) => Status::Ok,
            Err(e) => Status::Failed(format!("cannot write {}: {e}", self.path.display())),
        }
    }

    fn offline(&mut self) -> Status {
        self.remove()
    }

    fn terminate(&mut self) {
        self.remove();
    }

    fn looks_alive(&mut self) -> Status {
        if self.path.exists() {
            Status::Ok
        } else {
            Status::Failed(format!("marker {} is gone", self.path.display()))
        }
    }

    fn is_alive(&mut self) -> Status {
        if self.fault == Fault::HangOnIsAlive {
            loop {
                std::thread::park();
            }
        }
        match std::fs::read_to_string(&self.path) {
            Ok(c) if c == self.content => Status::Ok,
            Ok(c) => Status::Failed(format!(
                "marker {} holds {:?}, not {:?}",
                self.path.display(),
                c.trim_end(),
                self.content.trim_end()
            )),
            Err(e) => Status::Failed(format!("marker {}: {e}", self.path.display())),
        }
    }

    fn control(&mut self, request: &str) -> Result<String, String> {
        match request {
            "path" => Ok(self.path.display().to_string()),
            "password" => Ok(format!("the password is {:?}", self.password)),
            other => Err(format!("unknown request {other:?}; known: path, password")),
        }
    }
}

impl Marker {
    fn remove(&self) -> Status {
        match std::fs::remove_file(&self.path) {
            Ok(()) => Status::Ok,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Status::Ok,
            Err(e) => Status::Failed(format!("cannot remove {}: {e}", self.path.display())),
        }
    }
}

vigil_plugin::export_plugin!(
    Marker,
    name = "marker",
    description = "an example plugin: a marker file that exists while the resource is online",
    schema = r#"[
  {"name": "path", "kind": "string", "required": true, "default": null,
   "description": "absolute path of the marker file"},
  {"name": "password", "kind": "string", "required": false, "default": null, "secret": true,
   "description": "a secret the marker never uses (its schema marks it secret)"},
  {"name": "pending_polls", "kind": "integer", "required": false, "default": "0",
   "description": "answer pending this many times before coming online (a long Online)"},
  {"name": "fault", "kind": "string", "required": false, "default": "none",
   "description": "misbehave on purpose: none, segv_on_online, hang_on_is_alive, panic_on_online"}
]"#
);

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn the_exported_table_names_the_abi_and_the_type() {
        // SAFETY: our own entry returns a pointer to a static table.
        let t = unsafe { &*vigil_plugin_entry() };
        assert_eq!(t.abi_version, vigil_plugin::abi::ABI_VERSION);
        // SAFETY: static NUL-terminated text.
        assert_eq!(unsafe { CStr::from_ptr(t.name) }.to_str(), Ok("marker"));
        assert!(t.online.is_some() && t.is_alive.is_some());
    }

    #[test]
    fn online_writes_the_marker_and_the_checks_follow_it() {
        let dir = std::env::temp_dir().join(format!("marker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m");
        let ctx = Context {
            resource: "r".into(),
            node: "n1".into(),
            epoch: 3,
            params: [("path".to_string(), path.display().to_string())].into(),
        };
        let mut m = Marker::open(&ctx).unwrap();
        assert_eq!(m.online(), Status::Ok);
        assert_eq!(m.is_alive(), Status::Ok);
        std::fs::write(&path, "someone else").unwrap();
        assert!(matches!(m.is_alive(), Status::Failed(w) if w.contains("someone else")));
        assert_eq!(m.offline(), Status::Ok);
        assert!(matches!(m.looks_alive(), Status::Failed(w) if w.contains("is gone")));
        let bad = Context {
            params: [("path".to_string(), "/nonexistent-dir/m".to_string())].into(),
            ..ctx
        };
        let mut m = Marker::open(&bad).unwrap();
        assert!(matches!(m.online(), Status::ConfigError(w) if w.contains("/nonexistent-dir")));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
