//! The plan: everything the daemon tells a runner about its one guest (`runner_plan` in
//! shim/engines/wasmtime/runner.py), and how it arrives.
//!
//! Invariants:
//! - The plan comes as JSON on an inherited file descriptor (`--plan-fd N`: a sealed memfd the daemon wrote), read
//!   to its end once and closed. It never travels in argv, where `/proc/PID/cmdline` would show the guest's
//!   environment (Kubernetes puts Secrets there) to every local user, and where one argument over 128 KiB fails
//!   the exec with E2BIG.
//! - Every field is required (the daemon always writes all of them; `serve` may be null); the runner re-checks
//!   what it relies on and refuses a plan it cannot read with a message naming the field.
//! - A plan is at most `MAX_PLAN_BYTES`: an fd that keeps giving is refused, never read without end.

use std::fs::File;
use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::FromRawFd;
use std::path::PathBuf;

use serde::Deserialize;

/// The largest plan read (the guest's args and env are most of it; Kubernetes bounds a pod spec well below this).
pub const MAX_PLAN_BYTES: u64 = 64 << 20;

/// What the daemon asks for.
#[derive(Deserialize)]
pub struct Plan {
    pub task_id: String,
    pub wasm: PathBuf,      // the component's bytes (in the container's rootfs)
    pub digest: String,     // sha256 (hex) of those bytes, as the daemon read and compiled them
    pub cache_dir: PathBuf, // the daemon's private directory for compiled artifacts
    pub rootfs: PathBuf,
    pub root_readonly: bool,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<(String, PathBuf, bool)>, // (guest path, host directory, read-only)
    pub memory_limit: Option<u64>,
    pub cpu_limit: Option<f64>,
    pub netns: Option<String>, // the pod's network namespace; required with a grant (checked), ignored without
    pub report_fd: Option<i32>, // where to say "oom" (`exit::report`); the daemon's pipe, inherited
    pub parent: i32,
    pub network: Grant,
    /// Present for a wasi:http/proxy component: serve it (`http.rs`) instead of calling wasi:cli/run.
    #[serde(default)]
    pub serve: Option<Serve>,
}

/// The `serve` part of the plan: how a wasi:http/proxy component is served (http.rs); all written by the daemon.
#[derive(Deserialize)]
pub struct Serve {
    pub addr: SocketAddr,
    pub request_timeout_ms: u64,
    pub max_body_bytes: u64,
    pub drain_timeout_ms: u64,
    pub max_concurrency: u32,
}

/// The socket grant: everything in the pod's namespace, or exactly the listed rules (`network.rs` applies it).
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Grant {
    None,
    Pod,
    Rules { rules: Vec<Rule> },
}

/// One rule of `wasm.shim.io/network`, canonicalised by the daemon: `use` on `ip/prefix` (None = any
/// address of either family) for ports `ports.0..=ports.1`.
#[derive(Deserialize, Clone)]
pub struct Rule {
    #[serde(rename = "use")]
    pub verb: Verb,
    pub ip: Option<IpAddr>,
    pub prefix: u8,
    pub ports: (u16, u16),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum Verb {
    TcpListen,
    TcpConnect,
    UdpBind,
    UdpSend,
}

/// The plan from `fd` (`--plan-fd`), which is read to its end and closed.
pub fn read_plan(fd: i32) -> Result<Plan, String> {
    if fd < 3 {
        return Err(format!("plan fd {fd}: fds 0-2 are the guest's stdio"));
    }
    // SAFETY: the daemon handed us this fd for the plan alone; nothing else in this process uses it, and the
    // File closes it when dropped.
    let file = unsafe { File::from_raw_fd(fd) };
    let mut text = Vec::new();
    file.take(MAX_PLAN_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("plan fd {fd}: {e}"))?;
    if text.len() as u64 > MAX_PLAN_BYTES {
        return Err(format!("plan fd {fd}: more than {MAX_PLAN_BYTES} bytes"));
    }
    parse_plan(&text)
}

/// The plan from its JSON text.
pub fn parse_plan(text: &[u8]) -> Result<Plan, String> {
    serde_json::from_slice(text).map_err(|e| format!("bad plan: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::IntoRawFd;

    fn plan_json(env_value: &str) -> String {
        serde_json::json!({
            "task_id": "t", "wasm": "/r/app.wasm", "digest": "0".repeat(64), "cache_dir": "/c",
            "rootfs": "/r", "root_readonly": true, "args": ["/app.wasm"], "env": [["SECRET", env_value]],
            "mounts": [], "memory_limit": null, "cpu_limit": null, "netns": null, "report_fd": 3,
            "parent": 1, "network": {"kind": "none"}, "serve": null,
        })
        .to_string()
    }

    /// A plan far over the 128 KiB one argv string may hold arrives whole through an fd.
    #[test]
    fn a_large_plan_is_read_whole_from_its_fd() {
        let big = "x".repeat(300 << 10);
        let mut pipe = [0; 2];
        assert_eq!(
            unsafe { libc::pipe2(pipe.as_mut_ptr(), libc::O_CLOEXEC) },
            0
        );
        let text = plan_json(&big);
        let writer = std::thread::spawn(move || {
            let mut w = unsafe { File::from_raw_fd(pipe[1]) };
            w.write_all(text.as_bytes()).unwrap();
        });
        let plan = read_plan(pipe[0]).unwrap();
        writer.join().unwrap();
        assert_eq!(plan.env, vec![("SECRET".to_owned(), big)]);
        // read_plan closed its fd
        assert_eq!(unsafe { libc::fcntl(pipe[0], libc::F_GETFD) }, -1);
    }

    #[test]
    fn a_plan_missing_a_field_is_refused_naming_it() {
        let mut value: serde_json::Value = serde_json::from_str(&plan_json("v")).unwrap();
        value.as_object_mut().unwrap().remove("digest");
        let err = parse_plan(value.to_string().as_bytes()).err().unwrap();
        assert!(err.contains("digest"), "{err}");
    }

    #[test]
    fn stdio_is_never_taken_for_the_plan() {
        let err = read_plan(0).err().unwrap();
        assert!(err.contains("stdio"), "{err}");
        let file = tempfile_fd();
        assert!(read_plan(file).is_err()); // empty: not JSON
    }

    fn tempfile_fd() -> i32 {
        let name = std::ffi::CString::new("plan-test").unwrap();
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 3);
        unsafe { File::from_raw_fd(fd) }.into_raw_fd()
    }
}
