//! wasm-shim-component-runner: runs one `wasi:cli/run` component, or serves one `wasi:http/proxy` component, in a
//! process of its own.
//!
//! The shim daemon (Python, wasmtime-py) runs components in runner processes so that a kill stops them
//! whatever they are blocked in (sleeping, reading, accepting: inside wasmtime's WASI code, where no epoch
//! reaches). This runner is that process: built on the wasmtime crates it starts in a few milliseconds, and
//! it can do what wasmtime-py cannot: give a component sockets (`wasm.shim.io/network`, docs/annotations.md),
//! decide every socket address itself, and sum every memory and table of the guest against its memory limit.
//!
//! Contract with the daemon (`shim/engines/wasmtime/runner.py`, `runner_plan`), one module per concern:
//! - `plan.rs`: `wasm-shim-component-runner --plan-fd N`; the plan (JSON) is read from the inherited fd N, never
//!   from argv (where every local user could read the guest's environment). `--precompile CACHE_DIR FILE...`
//!   fills the cache (`wasm-shim precompile` calls it); `--check CACHE_DIR FILE` compiles one component into the
//!   cache and prints its exports (the daemon validates components with it: they are compiled once, here, not
//!   also in the daemon).
//! - fds 0-2 are the guest's stdio; fd `report_fd` (3) is a pipe to the daemon, where the runner writes `oom`
//!   when the guest failed after its memory limit refused a growth (`exit.rs`); nothing else is inherited. The
//!   environment is not the guest's. PR_SET_PDEATHSIG makes the runner die with the daemon.
//! - `network.rs`: with a network grant, before any thread exists, the runner joins the pod's network namespace
//!   (`netns`), so every socket the guest opens lives there; without one, the guest gets no sockets at all.
//! - `http.rs`: a plan with `serve` set is a `wasi:http/proxy` component: the runner joins the pod's network
//!   namespace (with or without a grant) and serves it, an instance per request, until SIGTERM/SIGINT drains it.
//! - `exit.rs`, `limits.rs`: exit statuses, memory and CPU limits follow the rules of `shim/engines/base.py` (its
//!   docstring), checked against the same test vectors as the daemon (tests/vectors/engine_rules.json). Kill,
//!   pause and resume are signals from the daemon (SIGKILL, SIGSTOP, SIGCONT): nothing here needs to cooperate.
//! - `cache.rs`: compiled components, shared with the daemon's `--check` in its private cache directory.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{Config, Engine, Store, UpdateDeadline};
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

mod cache;
mod exit;
mod http;
mod limits;
mod network;
mod plan;

use exit::fail;
use limits::{MemoryBudget, StoreLimiter, TICK, ThreadCpuLimit};
use plan::{Grant, Plan};

const USAGE: &str = "usage: wasm-shim-component-runner --plan-fd FD\n       wasm-shim-component-runner \
    --precompile CACHE_DIR FILE...\n       wasm-shim-component-runner --check CACHE_DIR FILE\n\nStarted by the \
    wasm-shim daemon for each component it runs in a process of its own; FD holds its plan (JSON, see the crate \
    docs). --precompile fills CACHE_DIR as `wasm-shim precompile` does; --check is how the daemon validates a \
    component before its first start.";

/// The store's data: the guest's WASI context, its resources and its share of the memory limit.
struct Guest {
    ctx: WasiCtx,
    table: ResourceTable,
    limits: StoreLimiter,
}

impl WasiView for Guest {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.len() >= 3 && argv[1] == "--precompile" {
        std::process::exit(cache::precompile(Path::new(&argv[2]), &argv[3..]));
    }
    if argv.len() == 4 && argv[1] == "--check" {
        std::process::exit(cache::check(Path::new(&argv[2]), Path::new(&argv[3])));
    }
    let fd = match argv.as_slice() {
        [_, flag, fd] if flag == "--plan-fd" => fd.parse::<i32>().ok(),
        _ => None,
    };
    let Some(fd) = fd else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let plan = plan::read_plan(fd).unwrap_or_else(|e| fail(e));
    // Die with the daemon; if it is already gone, the prctl came too late: do not run an orphan.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if unsafe { libc::getppid() } != plan.parent {
        std::process::exit(128 + libc::SIGKILL);
    }
    // A server listens in the pod's namespace whatever the grant says about the guest's own sockets.
    let needs_netns = !matches!(plan.network, Grant::None) || plan.serve.is_some();
    match (needs_netns, &plan.netns) {
        (false, _) => {}
        (true, Some(netns)) => network::join_network_namespace(netns).unwrap_or_else(|e| fail(e)),
        (true, None) => fail("a network grant or a server without a network namespace to join"),
    }
    if plan.serve.is_some() {
        std::process::exit(http::serve(plan));
    }
    std::process::exit(run(&plan).unwrap_or_else(|e| fail(format!("task {}: {e}", plan.task_id))));
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
    wasi.inherit_stdio().args(&plan.args).envs(&plan.env);
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
    network::grant_sockets(&mut wasi, &plan.network);
    Ok(wasi)
}

/// Run the component's `wasi:cli/run` once; the process's exit status (exit.rs).
fn run(plan: &Plan) -> Result<i32, String> {
    let engine = new_engine()?;
    let component = cache::load_component(&engine, plan)?;

    let mut linker: Linker<Guest> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(|e| format!("wasi: {e:#}"))?;

    let guest = Guest {
        ctx: guest_wasi(plan)?.build(),
        table: ResourceTable::new(),
        limits: MemoryBudget::new(plan.memory_limit).limiter(),
    };
    let mut store = Store::new(&engine, guest);
    store.limiter(|guest| &mut guest.limits);
    store.set_epoch_deadline(1);
    let ticking = Arc::new(AtomicBool::new(true));
    if let Some(cpus) = plan.cpu_limit.filter(|c| *c > 0.0) {
        let mut cpu = ThreadCpuLimit::new(cpus);
        store.epoch_deadline_callback(move |_| {
            cpu.settle();
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

    let status = match Command::instantiate(&mut store, &component, &linker) {
        Ok(command) => exit::run_status(command.wasi_cli_run().call_run(&mut store)),
        // An instantiation can fail at the memory limit (its initial memories and tables): an error, and an OOM.
        Err(error) => exit::failed(&error.context("cannot instantiate the component")),
    };
    ticking.store(false, Ordering::Relaxed);
    let _ = std::io::stdout().flush();
    if status != 0 && store.data().limits.refused {
        exit::report(plan, "oom"); // it failed after its memory limit refused it: the daemon publishes /tasks/oom
    }
    Ok(status)
}
