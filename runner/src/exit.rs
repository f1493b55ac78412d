//! Exit statuses and what a failed guest leaves on its stderr: the one rule of shim/engines/base.py's docstring
//! ("Exit statuses"), which the daemon's wasmtime-py engine follows too.
//!
//! Invariants:
//! - `run` returning ok is 0, err is 1; `wasi:cli/exit` is its code (low 8 bits).
//! - A failure is a trap exactly when wasmtime raised it as one: a `Trap` (a trap code) in the error's chain,
//!   never decided by the text. A trap is 134 with one line, `wasm trap: <wasmtime's description of the code>`;
//!   any other error is 1 with one line `wasm error: <the error chain, backtraces left out>`. Nothing else (no
//!   backtrace) is written on the guest's stderr.
//! - The runner's own failures (a bad plan, a missing cache directory) are 1 with `wasm error: component runner:
//!   ...` (`fail`).
//! - The vectors in tests/vectors/engine_rules.json ("traps") hold both implementations to the same answers.

use std::io::Write;

use wasmtime::{Trap, WasmBacktrace};
use wasmtime_wasi::I32Exit;

use crate::plan::Plan;

/// `run` returned err, or an error that is not a trap (base.py's EXIT_FAILURE).
pub const EXIT_FAILURE: i32 = 1;
/// 128 + SIGABRT, what the wasmtime CLI exits with on a trap (base.py's EXIT_TRAP).
pub const EXIT_TRAP: i32 = 134;

/// The runner's own failure: one line on stderr, exit 1.
pub fn fail(message: impl AsRef<str>) -> ! {
    let line = format!("wasm error: component runner: {}\n", message.as_ref());
    let _ = std::io::stderr().write_all(line.as_bytes());
    std::process::exit(EXIT_FAILURE)
}

/// (status, the line for the guest's stderr) of a guest that failed with `error`.
pub fn failure(error: &wasmtime::Error) -> (i32, String) {
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return (exit.0 & 0xFF, String::new()); // a POSIX exit status keeps the low 8 bits
    }
    match error.downcast_ref::<Trap>() {
        Some(trap) => (EXIT_TRAP, trap.to_string()), // Trap's Display: "wasm trap: <description>"
        None => (EXIT_FAILURE, format!("wasm error: {}", one_line(error))),
    }
}

/// The status of a `wasi:cli/run` call, writing its line (if any) on stderr.
pub fn run_status(result: wasmtime::Result<Result<(), ()>>) -> i32 {
    match result {
        Ok(Ok(())) => 0,
        Ok(Err(())) => EXIT_FAILURE,
        Err(error) => failed(&error),
    }
}

/// The status of a guest that failed with `error`, writing its line (if any) on stderr.
pub fn failed(error: &wasmtime::Error) -> i32 {
    let (status, line) = failure(error);
    if !line.is_empty() {
        let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    }
    status
}

/// The error's chain as one line (its causes joined with ": "), without wasm backtraces.
fn one_line(error: &wasmtime::Error) -> String {
    let backtrace = error
        .downcast_ref::<WasmBacktrace>()
        .map(|bt| bt.to_string());
    let parts: Vec<String> = error
        .chain()
        .map(|cause| cause.to_string())
        .filter(|text| Some(text) != backtrace.as_ref())
        .map(|text| text.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|text| !text.is_empty())
        .collect();
    parts.join(": ")
}

/// One line to the daemon on the report fd of the plan (a pipe the daemon reads once we are reaped).
pub fn report(plan: &Plan, line: &str) {
    if let Some(fd) = plan.report_fd {
        let text = format!("{line}\n");
        unsafe { libc::write(fd, text.as_ptr().cast(), text.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::{MemoryBudget, StoreLimiter};
    use serde::Deserialize;
    use wasmtime::component::{Component, Linker};
    use wasmtime::{Engine, Instance, Module, Store};

    /// tests/vectors/engine_rules.json: the cases both implementations of the rules must answer alike.
    const VECTORS: &str = include_str!("../../tests/vectors/engine_rules.json");

    #[derive(Deserialize)]
    struct Vectors {
        traps: Vec<TrapCase>,
    }

    #[derive(Deserialize)]
    struct TrapCase {
        name: String,
        wat: String,
        #[serde(default)]
        memory_limit: Option<u64>,
        status: i32,
        #[serde(default)]
        stderr: Option<String>,
        #[serde(default)]
        stderr_prefix: Option<String>,
    }

    /// Calls the case's `run` export (a module's `() -> ()`, or a component's `() -> result`), in a store limited
    /// as the runner limits a guest's.
    fn outcome(engine: &Engine, case: &TrapCase) -> wasmtime::Result<Result<(), ()>> {
        let mut store = Store::new(engine, MemoryBudget::new(case.memory_limit).limiter());
        store.limiter(|limiter: &mut StoreLimiter| limiter);
        store.set_epoch_deadline(u64::MAX / 2); // the runner's engine has epoch interruption on
        if case.wat.trim_start().starts_with("(component") {
            let component = Component::new(engine, &case.wat)?;
            let instance = Linker::new(engine).instantiate(&mut store, &component)?;
            let run = instance.get_typed_func::<(), (Result<(), ()>,)>(&mut store, "run")?;
            Ok(run.call(&mut store, ())?.0)
        } else {
            let module = Module::new(engine, &case.wat)?;
            let instance = Instance::new(&mut store, &module, &[])?;
            let run = instance.get_typed_func::<(), ()>(&mut store, "run")?;
            run.call(&mut store, ())?;
            Ok(Ok(()))
        }
    }

    #[test]
    fn failures_are_classified_as_every_vector_says() {
        let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
        assert!(vectors.traps.len() >= 10);
        let engine = Engine::new(&crate::engine_config()).unwrap();
        for case in &vectors.traps {
            let (status, line) = match outcome(&engine, case) {
                Ok(Ok(())) => (0, String::new()),
                Ok(Err(())) => (EXIT_FAILURE, String::new()),
                Err(error) => failure(&error),
            };
            assert_eq!(status, case.status, "{}: {line}", case.name);
            if let Some(expected) = &case.stderr {
                assert_eq!(&line, expected, "{}", case.name);
            }
            if let Some(prefix) = &case.stderr_prefix {
                assert!(line.starts_with(prefix.as_str()), "{}: {line}", case.name);
                assert!(!line.contains('\n'), "{}: {line}", case.name);
            }
        }
    }
}
