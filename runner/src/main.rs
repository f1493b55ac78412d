//! wasm-shim-component-runner: runs one `wasi:cli/run` component, or serves one `wasi:http/proxy` component, in a
//! process of its own.
//!
//! The shim daemon (Python, wasmtime-py) runs components in runner processes so that a kill stops them
//! whatever they are blocked in (sleeping, reading, accepting: inside wasmtime's WASI code, where no epoch
//! reaches). This runner is that process: built on the wasmtime crates it starts in a few milliseconds, and
//! it can do what wasmtime-py cannot: give a component sockets (`wasm.shim.io/network`, docs/annotations.md)
//! and decide every socket address itself.
//!
//! Contract with the daemon (`shim/engines/wasmtime/runner.py`, `runner_plan`):
//! - argv: `wasm-shim-component-runner PLAN`, PLAN a JSON object (`Plan` below) that the daemon validated;
//!   the runner re-checks what it relies on and exits 1 with `wasm error: component runner: ...` on stderr
//!   when something is wrong. `wasm-shim-component-runner --precompile CACHE_DIR FILE...` fills the cache
//!   (`wasm-shim precompile` calls it); `--check CACHE_DIR FILE` compiles one component into the cache and
//!   prints its exports (the daemon validates components with it: they are compiled once, here, not also in
//!   the daemon).
//! - fds 0-2 are the guest's stdio; fd `report_fd` (3) is a pipe to the daemon, where the runner writes `oom`
//!   when the guest failed after its memory limit refused a memory.grow; nothing else is inherited. The
//!   environment is not the guest's.
//! - With a network grant, before any thread exists, the runner joins the pod's network namespace (`netns`),
//!   so every socket the guest opens lives there; the node's namespace is never used. Without one, the guest
//!   gets no sockets at all. PR_SET_PDEATHSIG makes the runner die with the daemon.
//! - A plan with `serve` set is a `wasi:http/proxy` component: the runner joins the pod's network namespace
//!   (with or without a grant) and serves it, an instance per request, until SIGTERM/SIGINT drains it
//!   (`http.rs`, which says the rest).
//! - Exit status and CPU limits follow the one rule of `shim/engines/base.py` (its docstring): the guest's
//!   (`wasi:cli/exit`), 0/1 for `run` returning ok/err, 134 after a trap (`wasm trap: ...` on stderr), 1 for
//!   any other error (`wasm error: ...` on stderr). Kill, pause and resume are signals from the daemon
//!   (SIGKILL, SIGSTOP, SIGCONT): nothing here needs to cooperate.
//! - Compiled components are cached under `cache_dir/<fingerprint>/<sha256>.component.cwasm` in the daemon's
//!   private (0700, ours) directory: wasmtime's serialized component as it is, beside `<...>.cwasm.sha256`
//!   (the hex sha256 of that file). A start maps the file (`Component::deserialize_file`) instead of copying it,
//!   so every runner of one component shares its compiled code in the page cache; the file is hashed first, and
//!   one failing a check is ignored and rewritten (by rename: a mapped file is never changed), never mapped.

use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, I32Exit, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod http;

const EXIT_FAILURE: i32 = 1; // `run` returned err, or an error that is not a trap (base.py's rule)
const EXIT_TRAP: i32 = 134; // 128 + SIGABRT, what the wasmtime CLI exits with on a trap
const TICK: Duration = Duration::from_millis(10);
const CPU_BURST_SECONDS: f64 = 0.1; // base.py's CPU_BURST_SECONDS: the bucket holds 0.1 s of the guest's share

/// What the daemon asks for. Every field is required: the daemon always writes all of them.
#[derive(Deserialize)]
struct Plan {
    task_id: String,
    wasm: PathBuf,      // the component's bytes (in the container's rootfs)
    digest: String,     // sha256 (hex) of those bytes, as the daemon read and compiled them
    cache_dir: PathBuf, // the daemon's private directory for compiled artifacts
    rootfs: PathBuf,
    root_readonly: bool,
    args: Vec<String>,
    env: Vec<(String, String)>,
    mounts: Vec<(String, PathBuf, bool)>, // (guest path, host directory, read-only)
    memory_limit: Option<u64>,
    cpu_limit: Option<f64>,
    netns: Option<String>, // the pod's network namespace; required with a grant (checked), ignored without
    report_fd: Option<i32>, // where to say "oom" (see `report`); the daemon's pipe, inherited
    parent: i32,
    network: Grant,
    /// Present for a wasi:http/proxy component: serve it (`http.rs`) instead of calling wasi:cli/run.
    #[serde(default)]
    serve: Option<http::Serve>,
}

/// The socket grant: everything in the pod's namespace, or exactly the listed rules.
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Grant {
    None,
    Pod,
    Rules { rules: Vec<Rule> },
}

/// One rule of `wasm.shim.io/network`, canonicalised by the daemon: `use` on `ip/prefix` (None = any
/// address of either family) for ports `ports.0..=ports.1`.
#[derive(Deserialize, Clone)]
struct Rule {
    #[serde(rename = "use")]
    verb: Verb,
    ip: Option<IpAddr>,
    prefix: u8,
    ports: (u16, u16),
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
enum Verb {
    TcpListen,
    TcpConnect,
    UdpBind,
    UdpSend,
}

impl Rule {
    fn matches(&self, addr: &SocketAddr) -> bool {
        let port = addr.port();
        if port < self.ports.0 || port > self.ports.1 {
            return false;
        }
        let Some(net) = self.ip else { return true };
        match (net, canonical_ip(addr.ip())) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_match(
                u32::from(net) as u128,
                u32::from(ip) as u128,
                32,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_match(u128::from(net), u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) reaches the IPv4 host: match it as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn prefix_match(net: u128, ip: u128, bits: u32, prefix: u8) -> bool {
    let prefix = u32::from(prefix).min(bits);
    if prefix == 0 {
        return true;
    }
    let shift = bits - prefix;
    (net >> shift) == (ip >> shift)
}

/// Whether the rules allow `use` of `addr` (wasmtime asks before every bind, listen, accept, connect, send
/// and receive). Implicit binds (the OS picks the port for a connect or a first send) come as the wildcard
/// address with port 0 and are allowed when a connect or send rule exists; accepted clients are allowed
/// when a listen rule exists; datagrams are received from anyone when a bind rule exists, otherwise only
/// from the addresses a send rule names (the replies).
fn allowed(rules: &[Rule], addr: &SocketAddr, usage: SocketAddrUse) -> bool {
    let any = |verb: Verb| rules.iter().any(|r| r.verb == verb);
    let matching = |verb: Verb| rules.iter().any(|r| r.verb == verb && r.matches(addr));
    let implicit = addr.ip().is_unspecified() && addr.port() == 0;
    match usage {
        SocketAddrUse::TcpBind => matching(Verb::TcpListen) || (implicit && any(Verb::TcpConnect)),
        SocketAddrUse::TcpListen => matching(Verb::TcpListen),
        SocketAddrUse::TcpAccept => any(Verb::TcpListen),
        SocketAddrUse::TcpConnect => matching(Verb::TcpConnect),
        SocketAddrUse::UdpBind => matching(Verb::UdpBind) || (implicit && any(Verb::UdpSend)),
        SocketAddrUse::UdpSend => matching(Verb::UdpSend),
        SocketAddrUse::UdpReceive => any(Verb::UdpBind) || matching(Verb::UdpSend),
    }
}

/// The store's data: the guest's WASI context, its resources and its memory limit.
struct Guest {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: MemoryLimit,
}

/// `linux.resources.memory.limit` per linear memory: a memory.grow beyond it fails inside the guest (as a
/// failed allocation does), and the refusal is remembered for the OOM report.
struct MemoryLimit {
    bytes: Option<usize>,
    refused: bool,
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let ok = self.bytes.is_none_or(|limit| desired <= limit);
        self.refused |= !ok;
        Ok(ok)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

fn fail(message: impl AsRef<str>) -> ! {
    let line = format!("wasm error: component runner: {}\n", message.as_ref());
    let _ = std::io::stderr().write_all(line.as_bytes());
    std::process::exit(EXIT_FAILURE)
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() >= 3 && argv[1] == "--precompile" {
        std::process::exit(precompile(Path::new(&argv[2]), &argv[3..]));
    }
    if argv.len() == 4 && argv[1] == "--check" {
        std::process::exit(check(Path::new(&argv[2]), Path::new(&argv[3])));
    }
    if argv.len() != 2 || argv[1].starts_with('-') {
        eprintln!(
            "usage: wasm-shim-component-runner PLAN\n       wasm-shim-component-runner --precompile CACHE_DIR \
             FILE...\n       wasm-shim-component-runner --check CACHE_DIR FILE\n\nStarted by the wasm-shim \
             daemon for each component it runs in a process of its own; PLAN is JSON (see the crate docs). \
             --precompile fills CACHE_DIR as `wasm-shim precompile` does; --check is how the daemon validates a \
             component before its first start."
        );
        std::process::exit(2);
    }
    let plan: Plan =
        serde_json::from_str(&argv[1]).unwrap_or_else(|e| fail(format!("bad plan: {e}")));
    // Die with the daemon; if it is already gone, the prctl came too late: do not run an orphan.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if unsafe { libc::getppid() } != plan.parent {
        std::process::exit(128 + libc::SIGKILL);
    }
    // A server listens in the pod's namespace whatever the grant says about the guest's own sockets.
    let needs_netns = !matches!(plan.network, Grant::None) || plan.serve.is_some();
    match (needs_netns, &plan.netns) {
        (false, _) => {}
        (true, Some(netns)) => join_network_namespace(netns).unwrap_or_else(|e| fail(e)),
        (true, None) => fail("a network grant or a server without a network namespace to join"),
    }
    if plan.serve.is_some() {
        std::process::exit(http::serve(plan));
    }
    std::process::exit(run(&plan).unwrap_or_else(|e| fail(format!("task {}: {e}", plan.task_id))));
}

/// setns(2) into the pod's network namespace. Only valid while this process has one thread: threads made
/// later (wasmtime's, tokio's) inherit the namespace, threads made earlier would not.
fn join_network_namespace(path: &str) -> Result<(), String> {
    let threads = fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0);
    if threads != 1 {
        return Err(format!(
            "cannot join {path}: the runner already has {threads} threads"
        ));
    }
    let cpath = CString::new(path).map_err(|_| format!("network namespace {path:?}: bad path"))?;
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!(
            "network namespace {path}: {}",
            std::io::Error::last_os_error()
        ));
    }
    let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
    let err = std::io::Error::last_os_error();
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(format!("cannot join network namespace {path}: {err}"));
    }
    Ok(())
}

fn fs_perms(readonly: bool) -> FsPerms {
    if readonly {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    }
}

/// The engine configuration every run, serve and precompile starts from (the cache fingerprint depends on it).
fn engine_config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true); // CPU limits slice time at epoch ticks (the ticker runs only with a limit)
    config
}

fn new_engine() -> Result<Engine, String> {
    Engine::new(&engine_config()).map_err(|e| format!("wasmtime engine: {e:#}"))
}

/// The guest's WASI context as the plan describes it: stdio, args, env, the rootfs and mounts, and sockets only
/// as far as the network grant goes (each request of a server gets one built the same way).
fn guest_wasi(plan: &Plan) -> Result<WasiCtxBuilder, String> {
    let mut wasi = WasiCtxBuilder::new();
    wasi.inherit_stdio()
        .args(&plan.args)
        .envs(&plan.env)
        .allow_ip_name_lookup(false);
    wasi.preopened_dir(&plan.rootfs, "/", fs_perms(plan.root_readonly))
        .map_err(|e| format!("rootfs {}: {e:#}", plan.rootfs.display()))?;
    for (guest, host, readonly) in &plan.mounts {
        wasi.preopened_dir(host, guest, fs_perms(*readonly))
            .map_err(|e| {
                format!(
                    "mount {guest}: cannot open directory {}: {e:#}",
                    host.display()
                )
            })?;
    }
    match &plan.network {
        Grant::None => {
            wasi.allow_tcp(false).allow_udp(false); // and the default address check denies everything
        }
        Grant::Pod => {
            wasi.allow_tcp(true).allow_udp(true).inherit_network();
        }
        Grant::Rules { rules } => {
            let rules: Arc<[Rule]> = rules.clone().into();
            let tcp = rules
                .iter()
                .any(|r| matches!(r.verb, Verb::TcpListen | Verb::TcpConnect));
            let udp = rules
                .iter()
                .any(|r| matches!(r.verb, Verb::UdpBind | Verb::UdpSend));
            wasi.allow_tcp(tcp)
                .allow_udp(udp)
                .socket_addr_check(move |addr, usage| {
                    let ok = allowed(&rules, &addr, usage);
                    Box::pin(async move { ok })
                });
        }
    }
    Ok(wasi)
}

fn run(plan: &Plan) -> Result<i32, String> {
    let engine = new_engine()?;
    let component = load_component(&engine, plan)?;

    let mut linker: Linker<Guest> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("wasi: {e:#}"))?;

    let limits = MemoryLimit {
        bytes: plan
            .memory_limit
            .map(|limit| usize::try_from(limit).unwrap_or(usize::MAX)),
        refused: false,
    };
    let guest = Guest {
        ctx: guest_wasi(plan)?.build(),
        table: ResourceTable::new(),
        limits,
    };
    let mut store = Store::new(&engine, guest);
    store.limiter(|guest| &mut guest.limits);
    store.set_epoch_deadline(1);
    let ticking = Arc::new(AtomicBool::new(true));
    if let Some(cpus) = plan.cpu_limit.filter(|c| *c > 0.0) {
        let mut bucket = CpuBucket::new(cpus);
        store.epoch_deadline_callback(move |_| {
            bucket.settle();
            Ok(UpdateDeadline::Continue(1))
        });
        let (engine, ticking) = (engine.clone(), ticking.clone());
        std::thread::spawn(move || {
            while ticking.load(Ordering::Relaxed) {
                std::thread::sleep(TICK);
                engine.increment_epoch();
            }
        });
    } else {
        store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Continue(u64::MAX / 2)));
    }

    let command = Command::instantiate(&mut store, &component, &linker)
        .map_err(|e| format!("cannot instantiate the component: {e:#}"))?;
    let result = command.wasi_cli_run().call_run(&mut store);
    ticking.store(false, Ordering::Relaxed);
    let _ = std::io::stdout().flush();
    let status = match result {
        Ok(Ok(())) => 0,
        Ok(Err(())) => EXIT_FAILURE,
        Err(error) => {
            if let Some(exit) = error.downcast_ref::<I32Exit>() {
                exit.0
            } else {
                // The trap's own text already starts with "wasm trap: " (as the daemon's reports do).
                let (cause, status) = match error.downcast_ref::<wasmtime::Trap>() {
                    Some(trap) => (trap.to_string(), EXIT_TRAP),
                    None => (format!("wasm error: {error:#}"), EXIT_FAILURE),
                };
                let _ = std::io::stderr().write_all(format!("{cause}\n").as_bytes());
                status
            }
        }
    };
    if status != 0 && store.data().limits.refused {
        report(plan, "oom"); // it failed after its memory limit refused it: the daemon publishes /tasks/oom
    }
    Ok(status)
}

/// One line to the daemon on the report fd of the plan (a pipe the daemon reads once we are reaped).
fn report(plan: &Plan, line: &str) {
    if let Some(fd) = plan.report_fd {
        let text = format!("{line}\n");
        unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    }
}

/// A token bucket on this thread's CPU clock (base.py's "CPU limits"): the guest earns `cpus` CPU-seconds per
/// wall second, holds at most `CPU_BURST_SECONDS * cpus`, starts full, and sleeps off any debt at the next
/// epoch tick (the daemon's `CpuBucket` in shim/engines/wasmtime/epochs.py is the same rule).
struct CpuBucket {
    cpus: f64,
    tokens: f64,
    wall: Instant,
    cpu: f64,
}

impl CpuBucket {
    fn new(cpus: f64) -> Self {
        CpuBucket {
            cpus,
            tokens: CPU_BURST_SECONDS * cpus,
            wall: Instant::now(),
            cpu: thread_cpu_seconds(),
        }
    }

    fn settle(&mut self) {
        let (now, cpu) = (Instant::now(), thread_cpu_seconds());
        let earned = now.duration_since(self.wall).as_secs_f64() * self.cpus;
        self.tokens = (self.tokens + earned - (cpu - self.cpu)).min(CPU_BURST_SECONDS * self.cpus);
        self.wall = now;
        self.cpu = cpu;
        if self.tokens < 0.0 {
            let debt = Duration::from_secs_f64(-self.tokens / self.cpus);
            std::thread::sleep(debt);
            let after = Instant::now();
            self.tokens += after.duration_since(self.wall).as_secs_f64() * self.cpus;
            self.wall = after;
        }
    }
}

fn thread_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// The compiled component: from our cache file when it passes every check, else compiled from the wasm
/// bytes (whose sha256 must be the digest the daemon checked) and written to the cache.
fn load_component(engine: &Engine, plan: &Plan) -> Result<Component, String> {
    if plan.digest.len() != 64 || !plan.digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("bad digest {:?}", plan.digest));
    }
    let cache = Cache::open(engine, &plan.cache_dir)?;
    if let Some(component) = cache.get(engine, &plan.digest) {
        return Ok(component);
    }
    let bytes = fs::read(&plan.wasm).map_err(|e| format!("{}: {e}", plan.wasm.display()))?;
    let digest = hex(&Sha256::digest(&bytes));
    if digest != plan.digest {
        return Err(format!(
            "{} changed since the daemon read it (sha256 {digest})",
            plan.wasm.display()
        ));
    }
    cache.compile(engine, &bytes, &digest)
}

/// `--precompile CACHE_DIR FILE...`: compile each component into the cache (what the first start of it on
/// this node would do); prints `SHA256 FILE compiled|cached` per file; exit 1 if any failed.
fn precompile(cache_dir: &Path, files: &[String]) -> i32 {
    let result = new_engine().and_then(|engine| Ok((Cache::open(&engine, cache_dir)?, engine)));
    let (cache, engine) = result.unwrap_or_else(|e| fail(e));
    let mut status = 0;
    for file in files {
        let outcome = fs::read(file).map_err(|e| e.to_string()).and_then(|bytes| {
            let digest = hex(&Sha256::digest(&bytes));
            if cache.get(&engine, &digest).is_some() {
                return Ok(format!("{digest} {file} cached"));
            }
            cache.compile(&engine, &bytes, &digest)?;
            Ok(format!("{digest} {file} compiled"))
        });
        match outcome {
            Ok(line) => println!("{line}"),
            Err(e) => {
                eprintln!("wasm-shim-component-runner: {file}: {e}");
                status = 1;
            }
        }
    }
    status
}

/// `--check CACHE_DIR FILE`: how the daemon validates a component before it first runs it here. Compiles FILE into
/// the cache (or finds it there: the start that follows only deserializes it) and prints one JSON line, its
/// sha256 and the names of its exports; exit 1 with the reason on stderr when this engine cannot compile it.
fn check(cache_dir: &Path, file: &Path) -> i32 {
    let result = (|| -> Result<String, String> {
        let engine = new_engine()?;
        let cache = Cache::open(&engine, cache_dir)?;
        let bytes = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let digest = hex(&Sha256::digest(&bytes));
        let component = match cache.get(&engine, &digest) {
            Some(component) => component,
            None => cache.compile(&engine, &bytes, &digest)?,
        };
        let ty = component.component_type();
        let exports: Vec<String> = ty
            .exports(&engine)
            .map(|(name, _)| name.to_owned())
            .collect();
        Ok(serde_json::json!({ "sha256": digest, "exports": exports }).to_string())
    })();
    match result {
        Ok(line) => {
            println!("{line}");
            0
        }
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// Compiled components of this engine under the daemon's private cache directory.
struct Cache {
    dir: PathBuf,
}

impl Cache {
    fn open(engine: &Engine, cache_dir: &Path) -> Result<Cache, String> {
        check_private_dir(cache_dir)?;
        Ok(Cache {
            dir: cache_dir.join(fingerprint(engine)),
        })
    }

    fn path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.component.cwasm"))
    }

    fn sum_path(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{digest}.component.cwasm.sha256"))
    }

    /// The cached component, when its file passes every check (else None: compile again).
    fn get(&self, engine: &Engine, digest: &str) -> Option<Component> {
        let path = self.path(digest);
        let expected = read_private_file(&self.sum_path(digest), 64)?;
        let actual = sha256_of_private_file(&path)?;
        if actual.as_bytes() != expected.as_slice() {
            return None;
        }
        // SAFETY: the file is ours, private (0600 in a 0700 directory), its contents hash to the digest
        // recorded when this engine (the directory's compatibility hash) wrote it, and it is only ever replaced
        // by rename, never written in place, so the mapping stays as checked; wasmtime checks it too.
        unsafe { Component::deserialize_file(engine, &path) }.ok()
    }

    /// Compile `bytes` (whose sha256 is `digest`) and store the result; a cache we cannot write only costs the
    /// next start a compile.
    fn compile(&self, engine: &Engine, bytes: &[u8], digest: &str) -> Result<Component, String> {
        let component =
            Component::from_binary(engine, bytes).map_err(|e| format!("cannot compile: {e:#}"))?;
        if let Ok(payload) = component.serialize() {
            let _ = fs::create_dir(&self.dir)
                .map(|_| fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700)));
            if check_private_dir(&self.dir).is_ok() {
                // The file first, then its sum: a reader between the two sees a mismatch and compiles.
                let sum = hex(&Sha256::digest(&payload));
                let _ = write_private_file(&self.path(digest), &payload)
                    .and_then(|_| write_private_file(&self.sum_path(digest), sum.as_bytes()));
            }
        }
        Ok(component)
    }
}

/// The cache subdirectory of this engine: compiled code is only valid for the wasmtime build and settings
/// that made it (wasmtime's own compatibility hash: version, Config, target).
fn fingerprint(engine: &Engine) -> String {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!(
        "component-runner-{}-{:016x}",
        std::env::consts::ARCH,
        hasher.finish()
    )
}

fn check_private_dir(path: &Path) -> Result<(), String> {
    let meta = fs::symlink_metadata(path)
        .map_err(|e| format!("cache directory {}: {e}", path.display()))?;
    let uid = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "cache directory {} must be a 0700 directory owned by uid {uid}",
            path.display()
        ));
    }
    Ok(())
}

/// `path` opened for reading when it is a regular file of ours that nobody else can read or write.
fn open_private_file(path: &Path) -> Option<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.uid() != unsafe { libc::geteuid() } || meta.mode() & 0o077 != 0 {
        return None;
    }
    Some(file)
}

/// The contents of a private file of at most `limit` bytes.
fn read_private_file(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut content = Vec::new();
    open_private_file(path)?
        .take(limit + 1)
        .read_to_end(&mut content)
        .ok()?;
    (content.len() as u64 <= limit).then_some(content)
}

/// The hex sha256 of a private file, read in chunks (the page cache holds it; no copy stays in this process).
fn sha256_of_private_file(path: &Path) -> Option<String> {
    let mut file = open_private_file(path)?;
    let mut hasher = Sha256::new();
    let mut chunk = vec![0u8; 1 << 20];
    loop {
        match file.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => hasher.update(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return None,
        }
    }
    Some(hex(&hasher.finalize()))
}

/// Replace `path` with `payload` (0600) all at once: a temporary file, synced, then renamed over it.
fn write_private_file(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let result = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(payload)?;
        file.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(verb: Verb, ip: Option<&str>, prefix: u8, ports: (u16, u16)) -> Rule {
        Rule {
            verb,
            ip: ip.map(|s| s.parse().unwrap()),
            prefix,
            ports,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn connect_rules_match_prefix_and_ports() {
        let rules = [rule(Verb::TcpConnect, Some("10.1.0.0"), 16, (5432, 5432))];
        assert!(allowed(
            &rules,
            &addr("10.1.2.3:5432"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &rules,
            &addr("10.2.2.3:5432"),
            SocketAddrUse::TcpConnect
        ));
        assert!(!allowed(
            &rules,
            &addr("10.1.2.3:5433"),
            SocketAddrUse::TcpConnect
        ));
        assert!(allowed(
            &rules,
            &addr("[::ffff:10.1.0.9]:5432"),
            SocketAddrUse::TcpConnect
        ));
        // connect's implicit bind, but no listening
        assert!(allowed(&rules, &addr("0.0.0.0:0"), SocketAddrUse::TcpBind));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:0"),
            SocketAddrUse::TcpListen
        ));
        assert!(!allowed(
            &rules,
            &addr("10.1.2.3:53"),
            SocketAddrUse::UdpSend
        ));
    }

    #[test]
    fn listen_rules_allow_bind_listen_and_accept() {
        let rules = [rule(Verb::TcpListen, None, 0, (8080, 8080))];
        assert!(allowed(
            &rules,
            &addr("0.0.0.0:8080"),
            SocketAddrUse::TcpBind
        ));
        assert!(allowed(
            &rules,
            &addr("[::]:8080"),
            SocketAddrUse::TcpListen
        ));
        assert!(allowed(
            &rules,
            &addr("192.0.2.1:40000"),
            SocketAddrUse::TcpAccept
        ));
        assert!(!allowed(
            &rules,
            &addr("0.0.0.0:8081"),
            SocketAddrUse::TcpBind
        ));
        assert!(!allowed(
            &rules,
            &addr("192.0.2.1:80"),
            SocketAddrUse::TcpConnect
        ));
    }

    #[test]
    fn udp_send_allows_replies_only_from_its_targets() {
        let rules = [rule(Verb::UdpSend, Some("fd00::"), 8, (53, 53))];
        assert!(allowed(
            &rules,
            &addr("[fd12::1]:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allowed(
            &rules,
            &addr("[fd12::1]:53"),
            SocketAddrUse::UdpReceive
        ));
        assert!(!allowed(
            &rules,
            &addr("[fe80::1]:53"),
            SocketAddrUse::UdpReceive
        ));
        assert!(!allowed(
            &rules,
            &addr("10.0.0.1:53"),
            SocketAddrUse::UdpSend
        ));
        assert!(allowed(&rules, &addr("[::]:0"), SocketAddrUse::UdpBind));
    }

    #[test]
    fn no_rules_allow_nothing() {
        for usage in [
            SocketAddrUse::TcpBind,
            SocketAddrUse::TcpConnect,
            SocketAddrUse::UdpBind,
            SocketAddrUse::UdpSend,
        ] {
            assert!(!allowed(&[], &addr("127.0.0.1:80"), usage));
        }
    }
}
