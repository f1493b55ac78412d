//! The guest's limits in the runner: its memory budget and its CPU bucket (the rules of shim/engines/base.py's
//! docstring, "Memory limits" and "CPU limits"; the daemon's wasmtime-py engine follows the same ones).
//!
//! Memory. One `MemoryBudget` per guest holds `linux.resources.memory.limit`; every store of the guest (the one
//! store of a run, each request's store of a served component) has a `StoreLimiter` drawing on it. wasmtime asks
//! the limiter before it creates or grows any linear memory or table of any instance in that store, so the sum of
//! all of them, a table element counting `TABLE_ELEMENT_BYTES`, never passes the limit. A refused growth fails
//! inside the guest (`memory.grow`/`table.grow` return -1; an instantiation fails) and is remembered for the OOM
//! report. Invariants:
//! - What a store took is given back only when the store is dropped (its instances, memories and tables go with
//!   it). A growth wasmtime fails after the limiter allowed it (the OS refused the pages) stays counted: the
//!   budget errs on the safe side, never the other way.
//! - A growth past the memory's or table's own declared maximum fails in wasmtime whatever the limiter says, so it
//!   is allowed here without being counted (and is not an OOM).
//!
//! CPU. `CpuBucket` is a token bucket on the guest thread's CPU clock; pure (times are passed in), so the test
//! vectors in tests/vectors/engine_rules.json check it and the daemon's `CpuBucket` (epochs.py) alike.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wasmtime::ResourceLimiter;

/// Bytes one table element counts for: wasmtime stores a pointer per element.
pub const TABLE_ELEMENT_BYTES: usize = std::mem::size_of::<usize>();
/// base.py's CPU_BURST_SECONDS: the bucket holds 0.1 s of the guest's share.
pub const CPU_BURST_SECONDS: f64 = 0.1;
/// The epoch tick: CPU debts and request deadlines are looked at this often.
pub const TICK: Duration = Duration::from_millis(10);

/// The memory limit of one guest, shared by all of its stores.
pub struct MemoryBudget {
    limit: Option<usize>,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes (None: no limit, only counted).
    pub fn new(limit: Option<u64>) -> Arc<MemoryBudget> {
        Arc::new(MemoryBudget {
            limit: limit.map(|bytes| usize::try_from(bytes).unwrap_or(usize::MAX)),
            used: AtomicUsize::new(0),
        })
    }

    /// Bytes held by the guest's memories and tables now.
    #[cfg(test)]
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, bytes: usize) -> bool {
        let limit = self.limit.unwrap_or(usize::MAX);
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|total| *total <= limit)
            })
            .is_ok()
    }

    fn give_back(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// A limiter for one more store of this guest.
    pub fn limiter(self: &Arc<Self>) -> StoreLimiter {
        StoreLimiter {
            budget: self.clone(),
            held: 0,
            refused: false,
        }
    }
}

/// One store's share of its guest's `MemoryBudget` (see the module docs).
pub struct StoreLimiter {
    budget: Arc<MemoryBudget>,
    held: usize,
    /// A memory or table growth of this store was refused by the limit.
    pub refused: bool,
}

impl StoreLimiter {
    fn grow(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> bool {
        if maximum.is_some_and(|max| desired > max) {
            return true; // wasmtime fails it for its declared maximum: not ours to count or to call an OOM
        }
        let delta = desired.saturating_sub(current);
        if self.budget.take(delta) {
            self.held += delta;
            true
        } else {
            self.refused = true;
            false
        }
    }
}

impl ResourceLimiter for StoreLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(self.grow(current, desired, maximum))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let bytes = |elements: usize| elements.saturating_mul(TABLE_ELEMENT_BYTES);
        Ok(self.grow(bytes(current), bytes(desired), maximum.map(bytes)))
    }
}

impl Drop for StoreLimiter {
    fn drop(&mut self) {
        self.budget.give_back(self.held);
    }
}

/// The CPU-limit token bucket (base.py's "CPU limits"): the guest earns `cpus` CPU-ns per wall-ns, holds at most
/// `cpus * CPU_BURST_SECONDS` CPU-seconds, starts full, and sleeps off any debt. Time while the guest was stopped
/// (paused) is wall time like any other: it earns, up to a full bucket. The daemon's `CpuBucket` is the same.
pub struct CpuBucket {
    cpus: f64,
    capacity: f64, // CPU-ns
    tokens: f64,   // CPU-ns
    wall: u64,     // ns, CLOCK_MONOTONIC
    cpu: u64,      // ns, the guest thread's CPU clock
}

impl CpuBucket {
    pub fn new(cpus: f64, wall_ns: u64, cpu_ns: u64) -> CpuBucket {
        let capacity = cpus * CPU_BURST_SECONDS * 1e9;
        CpuBucket {
            cpus,
            capacity,
            tokens: capacity,
            wall: wall_ns,
            cpu: cpu_ns,
        }
    }

    /// Account for the time since the last call; the seconds of debt to sleep off now (0.0 for none).
    pub fn settle(&mut self, wall_ns: u64, cpu_ns: u64) -> f64 {
        let used = cpu_ns.saturating_sub(self.cpu);
        self.cpu = cpu_ns;
        self.charge(wall_ns, used)
    }

    /// `settle` for a caller that measured the CPU used itself (`used_ns` since the last call).
    pub fn charge(&mut self, wall_ns: u64, used_ns: u64) -> f64 {
        let earned = self.cpus * wall_ns.saturating_sub(self.wall) as f64;
        self.tokens = (self.tokens + earned - used_ns as f64).min(self.capacity);
        self.wall = wall_ns;
        if self.tokens < 0.0 {
            -self.tokens / self.cpus / 1e9
        } else {
            0.0
        }
    }

    /// The guest slept (off its debt) until `wall_ns`: it earned its share meanwhile and used no CPU.
    pub fn slept(&mut self, wall_ns: u64) {
        let earned = self.cpus * wall_ns.saturating_sub(self.wall) as f64;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.wall = wall_ns;
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CLOCK_MONOTONIC in ns (what the daemon's `time.monotonic_ns` reads).
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// This thread's CPU clock in ns.
pub fn thread_cpu_ns() -> u64 {
    clock_ns(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// A CPU bucket for the calling thread, settled at each epoch tick: sleeps off any debt on this thread.
pub struct ThreadCpuLimit(CpuBucket);

impl ThreadCpuLimit {
    pub fn new(cpus: f64) -> ThreadCpuLimit {
        ThreadCpuLimit(CpuBucket::new(cpus, monotonic_ns(), thread_cpu_ns()))
    }

    pub fn settle(&mut self) {
        let debt = self.0.settle(monotonic_ns(), thread_cpu_ns());
        if debt > 0.0 {
            std::thread::sleep(Duration::from_secs_f64(debt));
            self.0.slept(monotonic_ns());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use wasmtime::{Config, Engine, Instance, Module, Store};

    /// tests/vectors/engine_rules.json: the cases both implementations of the rules must answer alike.
    const VECTORS: &str = include_str!("../../tests/vectors/engine_rules.json");

    #[derive(Deserialize)]
    struct Vectors {
        cpu_bucket: BucketVectors,
    }

    #[derive(Deserialize)]
    struct BucketVectors {
        burst_seconds: f64,
        cases: Vec<BucketCase>,
    }

    #[derive(Deserialize)]
    struct BucketCase {
        name: String,
        cpus: f64,
        start_us: (u64, u64),
        steps: Vec<BucketStep>,
    }

    #[derive(Deserialize)]
    #[serde(tag = "op", rename_all = "lowercase")]
    enum BucketStep {
        Settle {
            wall_us: u64,
            cpu_us: u64,
            debt_us: f64,
        },
        Slept {
            wall_us: u64,
        },
    }

    #[test]
    fn cpu_bucket_answers_every_vector() {
        let vectors: Vectors = serde_json::from_str(VECTORS).unwrap();
        assert_eq!(vectors.cpu_bucket.burst_seconds, CPU_BURST_SECONDS);
        assert!(!vectors.cpu_bucket.cases.is_empty());
        for case in &vectors.cpu_bucket.cases {
            let (wall, cpu) = case.start_us;
            let mut bucket = CpuBucket::new(case.cpus, wall * 1000, cpu * 1000);
            for (n, step) in case.steps.iter().enumerate() {
                match step {
                    BucketStep::Settle {
                        wall_us,
                        cpu_us,
                        debt_us,
                    } => {
                        let debt = bucket.settle(wall_us * 1000, cpu_us * 1000) * 1e6;
                        assert!(
                            (debt - debt_us).abs() < 1e-3,
                            "{}: step {n}: debt {debt} us, expected {debt_us} us",
                            case.name
                        );
                    }
                    BucketStep::Slept { wall_us } => bucket.slept(wall_us * 1000),
                }
            }
        }
    }

    const MIB: usize = 1 << 20;
    const PAGE: usize = 64 << 10;

    fn engine() -> Engine {
        let mut config = Config::new();
        config.wasm_multi_memory(true);
        Engine::new(&config).unwrap()
    }

    fn instance(
        engine: &Engine,
        budget: &Arc<MemoryBudget>,
        wat: &str,
    ) -> (Store<StoreLimiter>, Instance) {
        let module = Module::new(engine, wat).unwrap();
        let mut store = Store::new(engine, budget.limiter());
        store.limiter(|limiter| limiter);
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        (store, instance)
    }

    fn call(store: &mut Store<StoreLimiter>, instance: &Instance, name: &str, arg: i32) -> i32 {
        let func = instance
            .get_typed_func::<i32, i32>(&mut *store, name)
            .unwrap();
        func.call(&mut *store, arg).unwrap()
    }

    /// Four memories, each asking for 30 MiB under a 64 MiB limit: the sum is what is limited.
    #[test]
    fn every_memory_of_a_store_draws_on_one_budget() {
        let engine = engine();
        let budget = MemoryBudget::new(Some(64 << 20));
        let wat = r#"(module (memory $a 0) (memory $b 0) (memory $c 0) (memory $d 0)
            (func (export "a") (param i32) (result i32) (memory.grow $a (local.get 0)))
            (func (export "b") (param i32) (result i32) (memory.grow $b (local.get 0)))
            (func (export "c") (param i32) (result i32) (memory.grow $c (local.get 0)))
            (func (export "d") (param i32) (result i32) (memory.grow $d (local.get 0))))"#;
        let (mut store, instance) = instance(&engine, &budget, wat);
        let pages = (30 * MIB / PAGE) as i32;
        assert_eq!(call(&mut store, &instance, "a", pages), 0);
        assert_eq!(call(&mut store, &instance, "b", pages), 0);
        assert_eq!(call(&mut store, &instance, "c", pages), -1); // 90 MiB > 64 MiB
        assert!(store.data().refused);
        assert_eq!(
            call(&mut store, &instance, "c", 4 * MIB as i32 / PAGE as i32),
            0
        ); // what is left
        assert_eq!(budget.used(), 64 * MIB);
        assert_eq!(call(&mut store, &instance, "d", 1), -1);
        drop(store);
        assert_eq!(budget.used(), 0); // a dropped store gives back everything it held
    }

    /// Table elements count too (8 bytes each), in every store of the guest together.
    #[test]
    fn tables_and_other_stores_share_the_budget() {
        let engine = engine();
        let budget = MemoryBudget::new(Some(8 << 20));
        let wat = r#"(module (table $t 0 funcref) (memory 0)
            (func (export "table") (param i32) (result i32) (table.grow $t (ref.null func) (local.get 0)))
            (func (export "memory") (param i32) (result i32) (memory.grow (local.get 0))))"#;
        let (mut first, one) = instance(&engine, &budget, wat);
        let (mut second, two) = instance(&engine, &budget, wat);
        let half = (4 * MIB / TABLE_ELEMENT_BYTES) as i32; // 4 MiB of table
        assert_eq!(call(&mut first, &one, "table", half), 0);
        assert_eq!(call(&mut second, &two, "table", half + 1), -1); // 4 MiB + 8 bytes: too much
        assert!(second.data().refused && !first.data().refused);
        assert_eq!(call(&mut second, &two, "memory", 64), 0); // exactly the other 4 MiB
        assert_eq!(call(&mut first, &one, "memory", 1), -1);
        drop(second);
        assert_eq!(call(&mut first, &one, "memory", 64), 0);
        assert_eq!(budget.used(), 8 * MIB);
    }

    /// A growth past a declared maximum fails in wasmtime, costs nothing and is no OOM; an instantiation whose
    /// initial memory passes the limit fails.
    #[test]
    fn declared_maxima_and_initial_sizes() {
        let engine = engine();
        let budget = MemoryBudget::new(Some(MIB as u64));
        let wat = r#"(module (memory 1 2)
            (func (export "grow") (param i32) (result i32) (memory.grow (local.get 0))))"#;
        let (mut store, instance) = instance(&engine, &budget, wat);
        assert_eq!(call(&mut store, &instance, "grow", 5), -1);
        assert!(!store.data().refused);
        assert_eq!(budget.used(), PAGE);
        let big = Module::new(&engine, "(module (memory 17))").unwrap(); // 17 pages > 1 MiB - 1 page
        let mut other = Store::new(&engine, budget.limiter());
        other.limiter(|limiter| limiter);
        assert!(Instance::new(&mut other, &big, &[]).is_err());
        assert!(other.data().refused);
    }
}
