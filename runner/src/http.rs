//! Serving a `wasi:http/proxy` component: HTTP/1.1 on hyper, a fresh instance per request.
//!
//! Owns the listener, the connections, the per-request store and its limits, the outgoing-request grant and the
//! drain on SIGTERM. The daemon asks for it with a plan whose `serve` is set (it found, at Create, that the
//! component exports `wasi:http/incoming-handler` and not `wasi:cli/run`).
//!
//! Invariants:
//! - The listener is bound in the pod's network namespace (main joined it before any thread existed), on
//!   `serve.addr` (0.0.0.0:8080 unless the guest's `WASMTIME_HTTP_PROXY_SOCKET_ADDR` or the annotation says
//!   otherwise: the daemon decides). It is bound only after one probe instance was made, so a pod becomes Ready
//!   (a TCP or HTTP probe connects) only once requests can be served.
//! - Every request gets its own `Store` from one `ProxyPre` (instantiation is the cheap part of `wasmtime serve`'s
//!   model, kept here): its own WASI context built from the plan, its CPU share (`CpuMeter`), its deadline.
//!   Memory is the guest's as a whole (base.py's "Memory limits"): every request's store draws on the one
//!   `MemoryBudget` of the container, so the requests in flight together stay within its memory limit, and a
//!   finished request gives its share back. A trap, a timeout or a refused growth answers that request (500,
//!   504, 500) and the server keeps serving.
//! - At most `max_concurrency` requests run at once (a semaphore; the pooling allocator is sized for exactly
//!   that many instances, so it never runs out). Request bodies larger than `max_body_bytes` are refused with 413:
//!   at once when Content-Length says so, else when the guest reads past the cap.
//! - Outgoing requests (`wasi:http/outgoing-handler`) go only where the network grant allows a TCP connect, to an
//!   IP literal (name lookup stays off, as for sockets: the resolver would read the node's resolv.conf).
//! - SIGTERM or SIGINT: stop accepting, let hyper finish the requests in flight (idle keep-alive connections
//!   close at once), exit 0 when all are done or 1 after `drain_timeout_ms`. SIGKILL needs no cooperation.
//! - The guest's stdout and stderr are the runner's (the container's log); our own lines start with
//!   `wasm-shim http:`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Semaphore, watch};
use wasmtime::component::{Linker, ResourceTable};
use wasmtime::{
    Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{
    RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

use crate::cache::load_component;
use crate::exit::{EXIT_FAILURE, fail, failure};
use crate::limits::{CpuBucket, MemoryBudget, StoreLimiter, TICK, monotonic_ns, thread_cpu_ns};
use crate::network::allowed;
use crate::plan::{Grant, Plan, Serve};
use crate::{engine_config, guest_wasi};

/// How long a client may take to send a request's head (slowloris bound; hyper answers 408 after it).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes of a request head hyper buffers (a larger head is answered 431).
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Pooling slots per component: a JavaScript (StarlingMonkey) component has a few core instances, memories and
/// tables; one beyond these limits makes the probe fail and the runner fall back to on-demand allocation.
const POOL_CORE_INSTANCES_PER_COMPONENT: u32 = 32;
const POOL_MEMORIES_PER_COMPONENT: u32 = 4;
const POOL_TABLES_PER_COMPONENT: u32 = 8;
const POOL_TABLE_ELEMENTS: usize = 100_000;
const POOL_CORE_INSTANCE_SIZE: usize = 4 << 20;

/// Serve until SIGTERM/SIGINT; the process's exit status.
pub fn serve(plan: Plan) -> i32 {
    let plan: &'static Plan = Box::leak(Box::new(plan));
    let signals = block_stop_signals(); // before any thread exists, so every thread inherits the mask
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap_or_else(|e| fail(format!("tokio runtime: {e}")));
    match runtime.block_on(run_server(plan, signals)) {
        Ok(status) => status,
        Err(e) => fail(format!("task {}: {e}", plan.task_id)),
    }
}

/// SIGTERM and SIGINT, blocked in this (still only) thread; `stop_signal` takes them with sigwait.
fn block_stop_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A receiver that changes to true once SIGTERM or SIGINT arrives (a thread of its own waits in sigwait).
fn stop_signal(set: libc::sigset_t) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    std::thread::spawn(move || {
        let mut signal = 0;
        if unsafe { libc::sigwait(&set, &mut signal) } == 0 {
            let _ = tx.send(true);
        }
    });
    rx
}

/// What every request needs, shared by all of them.
struct Server {
    plan: &'static Plan,
    serve: &'static Serve,
    engine: Engine,
    pre: ProxyPre<RequestState>,
    permits: Arc<Semaphore>,
    next_id: AtomicU64,
    memory: Arc<MemoryBudget>, // the container's memory limit, shared by every request's store
}

async fn run_server(plan: &'static Plan, signals: libc::sigset_t) -> Result<i32, String> {
    let serve = plan
        .serve
        .as_ref()
        .expect("serve() is only called with a serve plan");
    let mut stop = stop_signal(signals);
    let server: &'static Server = Box::leak(Box::new(prepare(plan, serve).await?));
    let engine = server.engine.clone();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(TICK); // request deadlines and CPU shares are checked at these ticks
            engine.increment_epoch();
        }
    });

    let socket = match serve.addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    // SO_REUSEADDR: a restarted container binds again while the previous one's connections sit in TIME_WAIT.
    socket
        .set_reuseaddr(true)
        .map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    socket
        .bind(serve.addr)
        .map_err(|e| format!("cannot listen on {}: {e}", serve.addr))?;
    let listener = socket
        .listen(1024)
        .map_err(|e| format!("cannot listen on {}: {e}", serve.addr))?;
    eprintln!("wasm-shim http: serving on http://{}/", serve.addr);

    let (draining_tx, draining) = watch::channel(false);
    let connections = TaskCount::default();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => {
                let Ok((stream, _peer)) = accepted else { continue };
                let _ = stream.set_nodelay(true); // small body chunks go out at once (no Nagle delay)
                let guard = connections.enter();
                let draining = draining.clone();
                tokio::spawn(async move {
                    serve_connection(server, stream, draining).await;
                    drop(guard);
                });
            }
        }
    }
    drop(listener); // stop accepting: new connections are refused from here on
    let _ = draining_tx.send(true);
    let in_flight = connections.count();
    eprintln!("wasm-shim http: stopping; draining {in_flight} connection(s)");
    let drained = tokio::time::timeout(
        Duration::from_millis(serve.drain_timeout_ms),
        connections.idle(),
    )
    .await
    .is_ok();
    if drained {
        eprintln!("wasm-shim http: drained, exiting");
        Ok(0)
    } else {
        eprintln!(
            "wasm-shim http: {} connection(s) still busy after {} ms, exiting",
            connections.count(),
            serve.drain_timeout_ms
        );
        Ok(EXIT_FAILURE)
    }
}

/// Compile (or load) the component, link it, and make one probe instance: with the pooling allocator when
/// the component fits its slots, else (said on stderr) with on-demand allocation.
async fn prepare(plan: &'static Plan, serve: &'static Serve) -> Result<Server, String> {
    let pooled = build(plan, serve, true)?;
    let failure = match probe(&pooled).await {
        Ok(()) => return Ok(pooled),
        Err(e) => e,
    };
    eprintln!("wasm-shim http: pooling allocator: {failure}; using on-demand allocation");
    let server = build(plan, serve, false)?;
    probe(&server)
        .await
        .map_err(|e| format!("cannot instantiate the component: {e}"))?;
    Ok(server)
}

fn build(plan: &'static Plan, serve: &'static Serve, pooling: bool) -> Result<Server, String> {
    let mut config = engine_config();
    if pooling {
        let instances = serve.max_concurrency.saturating_add(1); // the probe's, dropped before serving
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(POOL_CORE_INSTANCES_PER_COMPONENT))
            .max_core_instances_per_component(POOL_CORE_INSTANCES_PER_COMPONENT)
            .total_memories(instances.saturating_mul(POOL_MEMORIES_PER_COMPONENT))
            .max_memories_per_component(POOL_MEMORIES_PER_COMPONENT)
            .max_memories_per_module(POOL_MEMORIES_PER_COMPONENT)
            .total_tables(instances.saturating_mul(POOL_TABLES_PER_COMPONENT))
            .max_tables_per_component(POOL_TABLES_PER_COMPONENT)
            .max_tables_per_module(POOL_TABLES_PER_COMPONENT)
            .table_elements(POOL_TABLE_ELEMENTS)
            .max_core_instance_size(POOL_CORE_INSTANCE_SIZE)
            .total_stacks(instances);
        if let Some(limit) = plan.memory_limit {
            pool.max_memory_size(usize::try_from(limit).unwrap_or(usize::MAX));
        }
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    let engine = wasmtime::Engine::new(&config).map_err(|e| format!("wasmtime engine: {e:#}"))?;
    let component = load_component(&engine, plan)?;
    let mut linker: Linker<RequestState> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(|e| format!("wasi: {e:#}"))?;
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
        .map_err(|e| format!("wasi:http: {e:#}"))?;
    let instance = linker
        .instantiate_pre(&component)
        .map_err(|e| format!("cannot link the component: {e:#}"))?;
    let pre = ProxyPre::new(instance)
        .map_err(|e| format!("the component is not a wasi:http/proxy: {e:#}"))?;
    Ok(Server {
        plan,
        serve,
        engine,
        pre,
        permits: Arc::new(Semaphore::new(serve.max_concurrency as usize)),
        next_id: AtomicU64::new(0),
        memory: MemoryBudget::new(plan.memory_limit),
    })
}

async fn probe(server: &Server) -> Result<(), String> {
    let mut store = new_store(server)?;
    server
        .pre
        .instantiate_async(&mut store)
        .await
        .map(drop)
        .map_err(|e| format!("{e:#}"))
}

async fn serve_connection(
    server: &'static Server,
    stream: tokio::net::TcpStream,
    mut draining: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |request| handle(server, request));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    if !*draining.borrow() {
        tokio::select! {
            _ = connection.as_mut() => return,
            _ = draining.changed() => {}
        }
    }
    // Draining: hyper finishes the request in flight (if any), then closes; an idle connection closes now.
    connection.as_mut().graceful_shutdown();
    let _ = connection.await;
}

/// One request: a fresh instance runs `wasi:http/incoming-handler.handle` in a task of its own (which keeps
/// streaming the body after the head went out); the answer is what it sets, or our error when it sets none.
async fn handle(
    server: &'static Server,
    request: Request<Incoming>,
) -> Result<Response<HyperOutgoingBody>, Infallible> {
    let id = server.next_id.fetch_add(1, Ordering::Relaxed);
    let target = format!("{} {}", request.method(), request.uri());
    let cap = server.serve.max_body_bytes;
    if declared_length(&request).is_some_and(|length| length > cap) {
        return Ok(error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body larger than {cap} bytes"),
        ));
    }
    let Ok(permit) = server.permits.clone().acquire_owned().await else {
        return Ok(error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down".into(),
        ));
    };
    let over_cap = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| CappedBody {
        inner: body,
        seen: 0,
        cap,
        over: over_cap.clone(),
    });
    let mut store = match new_store(server) {
        Ok(store) => store,
        Err(e) => return Ok(failed(id, &target, StatusCode::INTERNAL_SERVER_ERROR, e)),
    };
    let (sender, receiver) = tokio::sync::oneshot::channel();
    let prepared = (|| -> wasmtime::Result<_> {
        let mut http = store.data_mut().http();
        let incoming = http.new_incoming_request(Scheme::Http, request)?;
        let outparam = http.new_response_outparam(sender)?;
        Ok((incoming, outparam))
    })();
    let (incoming, outparam) = match prepared {
        Ok(pair) => pair,
        Err(e) => {
            let why = format!("{e:#}");
            return Ok(failed(id, &target, StatusCode::INTERNAL_SERVER_ERROR, why));
        }
    };
    let deadline = Duration::from_millis(server.serve.request_timeout_ms);
    let task = tokio::spawn(async move {
        let call = async {
            let proxy = server.pre.instantiate_async(&mut store).await?;
            proxy
                .wasi_http_incoming_handler()
                .call_handle(&mut store, incoming, outparam)
                .await
        };
        let result = tokio::time::timeout(deadline, call).await;
        let outcome = match result {
            Ok(Ok(())) => Outcome::Returned,
            Ok(Err(error)) if store.data().limits.refused => Outcome::OutOfMemory(error),
            Ok(Err(error)) => Outcome::Trapped(error),
            Err(_) => Outcome::TimedOut,
        };
        drop(store); // before the permit: the instance's pool slot is free when the next request takes it
        drop(permit);
        outcome
    });
    match receiver.await {
        Ok(Ok(response)) => {
            // The head is out; a failure while the body streams can only cut the body short, so say it here.
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(outcome) = task.await {
                    outcome.log_after_response(id, &target, deadline);
                }
            });
            Ok(response)
        }
        Ok(Err(code)) => Ok(failed(
            id,
            &target,
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("the component answered with error-code {code:?}"),
        )),
        Err(_) => {
            // The outparam was dropped unset: the instance is gone; its outcome says why.
            let outcome = task.await.unwrap_or(Outcome::Returned);
            if over_cap.load(Ordering::Relaxed) {
                return Ok(failed(
                    id,
                    &target,
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {cap} bytes"),
                ));
            }
            let (status, why) = outcome.describe(deadline);
            Ok(failed(id, &target, status, why))
        }
    }
}

/// How a request's instance ended.
enum Outcome {
    Returned,
    Trapped(wasmtime::Error),
    OutOfMemory(wasmtime::Error),
    TimedOut,
}

impl Outcome {
    fn describe(self, deadline: Duration) -> (StatusCode, String) {
        match self {
            Outcome::Returned => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the component returned without a response".into(),
            ),
            Outcome::Trapped(error) => (StatusCode::INTERNAL_SERVER_ERROR, failure(&error).1),
            Outcome::OutOfMemory(error) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!(
                    "memory limit reached (a memory or table growth was refused): {}",
                    failure(&error).1
                ),
            ),
            Outcome::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("no response within {} ms", deadline.as_millis()),
            ),
        }
    }

    fn log_after_response(self, id: u64, target: &str, deadline: Duration) {
        if !matches!(self, Outcome::Returned) {
            let (_, why) = self.describe(deadline);
            eprintln!(
                "wasm-shim http: request {id} ({target}) failed after its response began: {why}"
            );
        }
    }
}

/// An error answer, logged on stderr (the container's log) with the request it ended.
fn failed(id: u64, target: &str, status: StatusCode, why: String) -> Response<HyperOutgoingBody> {
    eprintln!("wasm-shim http: request {id} ({target}): {status}: {why}");
    error_response(status, why)
}

fn error_response(status: StatusCode, why: String) -> Response<HyperOutgoingBody> {
    let body = Full::new(Bytes::from(format!("{status}: {why}\n")))
        .map_err(|never: Infallible| -> wasmtime_wasi_http::Error { match never {} })
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request
        .headers()
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The request body as the guest reads it: an error (and `over` set) once more than `cap` bytes arrived.
struct CappedBody {
    inner: Incoming,
    seen: u64,
    cap: u64,
    over: Arc<AtomicBool>,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.over.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                Some(this.seen),
            ))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.seen += data.len() as u64;
                    if this.seen > this.cap {
                        this.over.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.seen)),
                        )));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request's store data: its WASI and wasi:http contexts, resources, memory limit and outgoing grant.
struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    limits: StoreLimiter,
    outbound: Outbound,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

fn new_store(server: &Server) -> Result<Store<RequestState>, String> {
    let plan = server.plan;
    let state = RequestState {
        wasi: guest_wasi(plan)?.build(),
        http: WasiHttpCtx::new(),
        table: ResourceTable::new(),
        limits: server.memory.limiter(),
        outbound: Outbound {
            grant: &plan.network,
        },
    };
    let mut store = Store::new(&server.engine, state);
    store.limiter(|state| &mut state.limits);
    store.set_epoch_deadline(1);
    let mut meter = plan.cpu_limit.filter(|cpus| *cpus > 0.0).map(CpuMeter::new);
    // At every tick the guest yields to tokio (so a request past its deadline is dropped even while it spins)
    // and, with a CPU limit, sleeps off any CPU debt without holding a tokio worker.
    store.epoch_deadline_callback(move |_| {
        Ok(match meter.as_mut().and_then(CpuMeter::settle) {
            Some(pause) => UpdateDeadline::YieldCustom(1, pause),
            None => UpdateDeadline::Yield(1),
        })
    });
    Ok(store)
}

/// The CPU limit per request: the same token bucket as a run's (`CpuBucket`, base.py's "CPU limits"), measured
/// on the thread's CPU clock between epoch ticks. A request's instance may move between tokio threads only where it
/// yields; a tick that spans such a move is not counted, and the pause after a debt records where it resumes.
struct CpuMeter {
    bucket: CpuBucket,
    last: Arc<Mutex<Option<(libc::pid_t, u64)>>>, // (thread, its CPU clock in ns) where the guest last ran
}

impl CpuMeter {
    fn new(cpus: f64) -> Self {
        CpuMeter {
            bucket: CpuBucket::new(cpus, monotonic_ns(), 0),
            last: Arc::new(Mutex::new(None)),
        }
    }

    /// Account the CPU used since the last tick; a pause to await when the bucket is in debt.
    fn settle(&mut self) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        let here = (unsafe { libc::gettid() }, thread_cpu_ns());
        let mut last = self.last.lock().unwrap();
        let used = match *last {
            Some((thread, cpu)) if thread == here.0 => here.1.saturating_sub(cpu),
            _ => 0,
        };
        *last = Some(here);
        drop(last);
        let debt = self.bucket.charge(monotonic_ns(), used);
        if debt <= 0.0 {
            return None;
        }
        // The sleep is wall time the bucket earns in; it is accounted at the next tick (`charge` is given the
        // wall clock then), which also finds the thread the guest resumed on.
        let last = self.last.clone();
        Some(Box::pin(async move {
            tokio::time::sleep(Duration::from_secs_f64(debt)).await;
            // The guest resumes on the thread that polls this to completion.
            *last.lock().unwrap() = Some((unsafe { libc::gettid() }, thread_cpu_ns()));
        }))
    }
}

/// `wasi:http/outgoing-handler` as far as the network grant goes: a TCP connect to the request's address must be
/// allowed, and that address must be an IP literal.
struct Outbound {
    grant: &'static Grant,
}

impl Outbound {
    fn permits(&self, uri: &hyper::Uri) -> bool {
        let Some(host) = uri.host() else { return false };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let Ok(ip) = host.parse::<IpAddr>() else {
            return false;
        };
        let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let addr = SocketAddr::new(ip, port);
        match self.grant {
            Grant::None => false,
            Grant::Pod => true,
            Grant::Rules { rules } => allowed(rules, &addr, SocketAddrUse::TcpConnect),
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                Response<WasiBody>,
                Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for Outbound {
    fn send_request(
        &mut self,
        request: Request<WasiBody>,
        options: Option<RequestOptions>,
        _response_errors: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send>,
    ) -> SendFuture {
        if !self.permits(request.uri()) {
            eprintln!(
                "wasm-shim http: outgoing request to {} denied (wasm.shim.io/network)",
                request.uri()
            );
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            let io: Box<dyn Future<Output = wasmtime_wasi_http::Result<()>> + Send> = Box::new(io);
            Ok((response.map(BodyExt::boxed_unsync), io))
        })
    }
}

/// The connection tasks still alive, and a way to wait until there are none.
struct TaskCount {
    live: Arc<watch::Sender<usize>>,
}

/// One live task; dropping it counts the task out.
struct TaskGuard(Arc<watch::Sender<usize>>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

impl Default for TaskCount {
    fn default() -> Self {
        TaskCount {
            live: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl TaskCount {
    fn enter(&self) -> TaskGuard {
        self.live.send_modify(|n| *n += 1);
        TaskGuard(self.live.clone())
    }

    fn count(&self) -> usize {
        *self.live.borrow()
    }

    async fn idle(&self) {
        let mut live = self.live.subscribe();
        let _ = live.wait_for(|n| *n == 0).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Rule, Verb};

    fn outbound(grant: Grant) -> Outbound {
        Outbound {
            grant: Box::leak(Box::new(grant)),
        }
    }

    #[test]
    fn outgoing_requests_follow_the_grant() {
        let uri = |s: &str| s.parse::<hyper::Uri>().unwrap();
        assert!(!outbound(Grant::None).permits(&uri("http://10.0.0.1/")));
        assert!(outbound(Grant::Pod).permits(&uri("http://10.0.0.1/")));
        assert!(!outbound(Grant::Pod).permits(&uri("http://example.com/")));
        let rules = Grant::Rules {
            rules: vec![Rule {
                verb: Verb::TcpConnect,
                ip: Some("10.0.0.0".parse().unwrap()),
                prefix: 8,
                ports: (80, 80),
            }],
        };
        let rules = outbound(rules);
        assert!(rules.permits(&uri("http://10.1.2.3/x")));
        assert!(!rules.permits(&uri("http://10.1.2.3:8080/x")));
        assert!(!rules.permits(&uri("https://10.1.2.3/x")));
        assert!(!rules.permits(&uri("http://192.168.0.1/")));
        assert!(!rules.permits(&uri("http://[::1]/")));
    }
}
