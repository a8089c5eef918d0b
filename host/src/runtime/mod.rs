//! The chain runtime: policy components compiled once, instantiated fresh
//! for every request (a policy's `on-response` may reuse its `on-request`
//! instance of the same request, [`Kept`]), under a deadline and a memory cap.
//!
//! ```text
//! load:    bytes ─► cache (sha256 + engine) ─► Component ─► InstancePre
//! request: Store::new ─► instantiate_async ─► call hook ─► drop   (per policy)
//! ```
//!
//! Why fresh instances: patient data must not survive in a policy's memory
//! from one caller to the next. What makes them cheap: the pooling allocator
//! (slots reused, pages reset by memset of the few resident pages), guests
//! that never grow their memory (see `components/sdk`), and a small stack.

#[allow(missing_docs)]
pub mod bindings;
mod cache;
pub mod mocks;
pub mod packed;
pub mod services;
pub mod settings;
mod state;

pub use cache::ComponentCache;
pub use services::Services;
pub use settings::Settings;
pub use state::PolicyState;

use bindings::types;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use wasmtime::component::{Component, ComponentExportIndex, ComponentNamedList, HasSelf, InstancePre, Lift, Linker, Lower, TypedFunc};
use wasmtime::{Config, Engine, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};

/// Epoch ticks are this long; deadlines are counted in them.
const EPOCH_TICK: Duration = Duration::from_millis(1);
/// The ticker parks after this many ticks in which no policy call started.
const IDLE_AFTER_TICKS: u32 = 100;

/// Why a policy call failed. Each class is a distinct status and audit value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailureClass {
    /// The guest trapped (unreachable, out-of-bounds, a panic, an alloc failure).
    #[error("trap")]
    Trap,
    /// The call overran its deadline.
    #[error("deadline")]
    Deadline,
    /// The guest tried to grow its memory past the cap.
    #[error("memory-limit")]
    MemoryLimit,
    /// No instance slot was free (too many requests in policies at once).
    #[error("capacity")]
    Capacity,
    /// The guest answered something the contract forbids (a fact outside its namespace, a bad status ...).
    #[error("contract")]
    Contract,
}

/// A failed policy call: which policy, what class, and detail for the log
/// (never sent to the client).
#[derive(Debug, Clone, thiserror::Error)]
#[error("policy {policy:?} failed ({class}): {detail}")]
pub struct PolicyFailure {
    /// Configured policy name.
    pub policy: String,
    /// Class of failure.
    pub class: FailureClass,
    /// Internal detail, for the gateway's own log.
    pub detail: String,
}

/// Errors while loading a component.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Compilation or linking failed (not a component, wrong contract version, WASI imports...).
    #[error("component {what} does not load: {reason}")]
    Invalid {
        /// The component (its path or `builtin:` name).
        what: String,
        /// Why, on one line.
        reason: String,
    },
}

/// The wasmtime engine and linker every policy shares.
pub struct Runtime {
    engine: Engine,
    linker: Linker<PolicyState>,
    cache: ComponentCache,
    deadline_ticks: u64,
    deadline: Duration,
    memory_cap: usize,
    /// Instances kept for a later hook of the same request ([`Kept`]).
    kept: Arc<AtomicU32>,
    /// At most this many kept at once: the rest of the pool stays for calls.
    max_kept: u32,
    clock: Arc<EpochClock>,
}

/// The epoch ticker's state. Deadlines count epoch ticks, so they need the
/// ticker only while a policy call runs: an idle gateway does not wake a
/// thousand times a second for nothing (it measured 0.7 % of a core and
/// ~1,000 context switches a second at rest).
struct EpochClock {
    /// Policy calls running now (including those waiting on `io`).
    in_flight: AtomicU32,
    /// Policy calls started so far: under load the ticker never parks
    /// (parking between two calls would cost each call a wake-up).
    started: AtomicU64,
    /// The ticker is (about to be) parked.
    idle: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// One running policy call: it keeps the ticker ticking until dropped.
struct Running<'a>(&'a EpochClock);

impl<'a> Running<'a> {
    fn start(clock: &'a EpochClock) -> Running<'a> {
        // SeqCst on both sides: either the ticker sees this call before it
        // parks, or this sees it idle and unparks it (park then returns).
        clock.started.fetch_add(1, Ordering::Relaxed);
        clock.in_flight.fetch_add(1, Ordering::SeqCst);
        if clock.idle.load(Ordering::SeqCst)
            && let Some(t) = clock.thread.get()
        {
            t.unpark();
        }
        Running(clock)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A policy's instance kept after its `on-request` for its `on-response`
/// in the same request, which then needs no instantiation of its own. Never
/// handed to another request: it lives in that request's chain run and is
/// dropped after `on-response` (or with the request). Holding one ties up a
/// pool slot across the upstream round trip, so at most half the pool is
/// kept at a time; past that, `on-response` gets a fresh instance as before.
pub struct Kept {
    store: Store<PolicyState>,
    instance: wasmtime::component::Instance,
    _place: KeptPlace,
}

/// A place in the kept budget, given back when dropped.
struct KeptPlace(Arc<AtomicU32>);

impl Drop for KeptPlace {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Sizing of the runtime, from the `[runtime]` config section.
#[derive(Debug, Clone)]
pub struct RuntimeLimits {
    /// Wall-clock budget of one hook call.
    pub deadline: Duration,
    /// Largest linear memory of one instance, bytes.
    pub memory_cap: usize,
    /// Instances alive at once.
    pub max_instances: u32,
}

/// How much of an instance's linear memory is reset by memset (kept
/// resident) rather than given back with madvise. It covers the std guests'
/// initial memory (jwt-auth: a 256 KiB stack, data and dlmalloc's heap, 384
/// KiB): given back, each page it touches faulted in again on every request,
/// ~19 µs of a proxied request (perf, full chain under wrk). With it, the full
/// chain's CPU per request fell 17 % (bench/run's config, A/B of two builds);
/// the SDK guests, one 64 KiB page, are unaffected.
const KEEP_RESIDENT: usize = 512 * 1024;

impl Runtime {
    /// Build the engine (pooling allocator, epoch interruption) and start the epoch ticker.
    pub fn new(limits: &RuntimeLimits, cache: ComponentCache) -> anyhow::Result<Arc<Runtime>> {
        let n = limits.max_instances.max(1);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(n)
            // wit-bindgen components hold a few core instances (main module, shims).
            .total_core_instances(n * 4)
            .total_memories(n)
            .total_tables(n * 2)
            .total_stacks(n)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(limits.memory_cap)
            // Reset by memset instead of madvise, up to KEEP_RESIDENT of each
            // memory (never more than the memory's size: an SDK guest's one
            // 64 KiB page is all it costs). Not with the PAGEMAP_SCAN ioctl
            // (reset only dirty pages): on these VMs the syscall costs more
            // than the memset (~3.8 µs per instance in the real proxy).
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(4 * 1024)
            .async_stack_keep_resident(16 * 1024)
            .pagemap_scan(Enabled::No);
        let mut config = Config::new();
        config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .max_wasm_stack(256 * 1024)
            .async_stack_size(512 * 1024)
            .wasm_backtrace_max_frames(None);
        let engine = Engine::new(&config).map_err(anyhow::Error::from)?;
        let mut linker = Linker::new(&engine);
        bindings::PolicyComponent::add_to_linker::<_, HasSelf<_>>(&mut linker, |s| s).map_err(anyhow::Error::from)?;

        let clock = Arc::new(EpochClock { in_flight: AtomicU32::new(0), started: AtomicU64::new(0), idle: AtomicBool::new(false), thread: OnceLock::new() });
        let ticker = engine.weak();
        let ticking = clock.clone();
        let thread = std::thread::Builder::new().name("epoch-ticker".into()).spawn(move || {
            let (mut seen, mut quiet) = (0u64, 0u32);
            loop {
                let started = ticking.started.load(Ordering::SeqCst);
                quiet = if started == seen { quiet.saturating_add(1) } else { 0 };
                seen = started;
                if quiet >= IDLE_AFTER_TICKS && ticking.in_flight.load(Ordering::SeqCst) == 0 {
                    // Nothing started for a while and nothing runs: sleep
                    // until a call starts (it unparks this thread), waking
                    // once a second to notice a dropped engine. A call's
                    // first tick comes a full EPOCH_TICK after it started,
                    // as when always ticking.
                    ticking.idle.store(true, Ordering::SeqCst);
                    if ticking.in_flight.load(Ordering::SeqCst) == 0 {
                        std::thread::park_timeout(Duration::from_secs(1));
                    }
                    ticking.idle.store(false, Ordering::SeqCst);
                    if ticker.upgrade().is_none() {
                        break;
                    }
                    quiet = 0;
                    continue;
                }
                std::thread::sleep(EPOCH_TICK);
                let Some(engine) = ticker.upgrade() else { break };
                engine.increment_epoch();
            }
        })?;
        let _ = clock.thread.set(thread.thread().clone());

        let deadline_ticks = (limits.deadline.as_millis() as u64 / EPOCH_TICK.as_millis() as u64).max(1);
        Ok(Arc::new(Runtime {
            engine,
            linker,
            cache,
            deadline_ticks,
            deadline: limits.deadline,
            memory_cap: limits.memory_cap,
            kept: Arc::new(AtomicU32::new(0)),
            max_kept: n / 2,
            clock,
        }))
    }

    /// Compile (or load from the cache) a component and prepare it for instantiation.
    pub fn load(&self, what: &str, bytes: &[u8]) -> Result<PolicyModule, LoadError> {
        // One line per error: wasmparser's messages can span several.
        let invalid = |reason: String| LoadError::Invalid { what: what.to_string(), reason: reason.split_whitespace().collect::<Vec<_>>().join(" ") };
        let (component, digest) = self.cache.load(&self.engine, bytes).map_err(|e| invalid(format!("{e:#}")))?;
        // A policy built for contract 0.1.0 would fail the linker on its
        // imports; say why instead.
        if Exports::find(&component).is_none() && component.get_export_index(None, "portcullis:gateway/policy@0.1.0").is_some() {
            return Err(invalid("exports portcullis:gateway/policy@0.1.0; this gateway speaks contract 0.2.0 (packed head and settings): rebuild the policy with the current SDK".into()));
        }
        let mut imports_wasi = false;
        for (name, _) in component.component_type().imports(&self.engine) {
            if name.starts_with("wasi:") {
                imports_wasi = true;
            } else if !name.starts_with("portcullis:gateway/") {
                return Err(invalid(format!("imports {name:?}; a policy may import only portcullis:gateway/host and portcullis:gateway/io")));
            }
        }
        let imports_io = component.component_type().imports(&self.engine).any(|(name, _)| name.starts_with("portcullis:gateway/io"));
        // A std guest carries WASI imports it may never call; they are linked
        // as traps, so a policy gets no filesystem, clock, network or
        // environment even if it tries (no_std guests import none at all).
        let instance_pre = if imports_wasi {
            let mut linker = self.linker.clone();
            linker.define_unknown_imports_as_traps(&component).map_err(|e| invalid(format!("{e:#}")))?;
            linker.instantiate_pre(&component)
        } else {
            self.linker.instantiate_pre(&component)
        }
        .map_err(|e| invalid(format!("{e:#}")))?;
        // The generated bindings check every export's signature against the
        // contract, once, here; calls then use unchecked typed functions.
        if imports_io {
            bindings::PolicyComponentPre::new(instance_pre.clone()).map_err(|e| invalid(format!("{e:#}")))?;
        } else {
            bindings::sync::PolicyComponentPre::new(instance_pre.clone()).map_err(|e| invalid(format!("{e:#}")))?;
        }
        let exports = Exports::find(&component).ok_or_else(|| invalid("does not export portcullis:gateway/policy@0.2.0".into()))?;
        let fingerprint = hex::decode(&digest).ok().and_then(|d| d.try_into().ok()).unwrap_or([0; 32]);
        Ok(PolicyModule { digest, fingerprint, pre: instance_pre, exports, is_async: imports_io })
    }

    /// The deadline of a call with `state`: the policy's own, else the runtime's.
    fn deadline_of(&self, state: &PolicyState) -> (Duration, u64) {
        match state.deadline {
            Some(d) => (d, (d.as_millis() as u64 / EPOCH_TICK.as_millis() as u64).max(1)),
            None => (self.deadline, self.deadline_ticks),
        }
    }

    fn store(&self, state: PolicyState) -> Store<PolicyState> {
        let (_, ticks) = self.deadline_of(&state);
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        store
    }

    /// Run one hook in a fresh instance: instantiate, call, drop. The deadline
    /// covers instantiation, the guest's work and any `io` waits. Policies
    /// that import no `io` run synchronously (no fiber: nothing can wait);
    /// the others run on a fiber so an `io` wait parks only this request.
    pub async fn call<P, R>(&self, module: &PolicyModule, state: PolicyState, export: Export, params: P) -> (Result<R, PolicyFailure>, Vec<(String, String)>)
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        self.call_in(module, state, export, params, None, None).await
    }

    /// [`Runtime::call`] for a request that keeps instances ([`Kept`]):
    /// `reuse`, the instance of the same request's earlier hook, is called
    /// instead of a fresh one (its state stands; `state` is dropped); with
    /// `keep`, the instance is left there after a call that succeeded, when
    /// the kept budget allows. A failed instance is never kept.
    pub async fn call_in<P, R>(&self, module: &PolicyModule, state: PolicyState, export: Export, params: P, reuse: Option<Kept>, keep: Option<&mut Option<Kept>>) -> (Result<R, PolicyFailure>, Vec<(String, String)>)
    where
        P: ComponentNamedList + Lower + Send + Sync,
        R: ComponentNamedList + Lift + Send + Sync + 'static,
    {
        let _running = Running::start(&self.clock);
        let policy = state.policy.to_string();
        let mut state = state;
        state.component = module.fingerprint;
        let (deadline, ticks) = self.deadline_of(&state);
        let memory_cap = state.memory.cap;
        let (mut store, mut instance, place) = match reuse {
            Some(Kept { mut store, instance, _place }) => {
                store.set_epoch_deadline(ticks);
                (store, Some(instance), Some(_place))
            }
            None => (self.store(state), None, None),
        };
        let index = module.exports.get(export);
        let result = if module.is_async {
            let run = async {
                let inst = match instance {
                    Some(i) => i,
                    None => module.pre.instantiate_async(&mut store).await?,
                };
                instance = Some(inst);
                let func = inst.get_func(&mut store, index).ok_or_else(|| wasmtime::format_err!("export {export:?} missing"))?;
                // SAFETY: the signature was checked against the contract at load (`PolicyComponentPre::new`).
                let typed = unsafe { TypedFunc::<P, R>::new_unchecked(func) };
                typed.call_async(&mut store, params).await
            };
            tokio::time::timeout(deadline, run).await
        } else {
            let run = || {
                let inst = match instance {
                    Some(i) => i,
                    None => module.pre.instantiate(&mut store)?,
                };
                instance = Some(inst);
                let func = inst.get_func(&mut store, index).ok_or_else(|| wasmtime::format_err!("export {export:?} missing"))?;
                // SAFETY: the signature was checked against the contract at load (`PolicyComponentPre::new`).
                let typed = unsafe { TypedFunc::<P, R>::new_unchecked(func) };
                typed.call(&mut store, params)
            };
            Ok(run())
        };
        let failure = |class: FailureClass, detail: String| PolicyFailure { policy: policy.clone(), class, detail };
        let result = match result {
            Err(_) => Err(failure(FailureClass::Deadline, format!("no answer within {deadline:?}"))),
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                // The limit a policy broke is named in the detail (audited), never its data.
                let (class, detail) = if store.data().memory.refused {
                    (FailureClass::MemoryLimit, format!("memory limit of {memory_cap} bytes: {e:#}"))
                } else if e.downcast_ref::<Trap>() == Some(&Trap::Interrupt) {
                    (FailureClass::Deadline, format!("deadline of {deadline:?}: {e:#}"))
                } else if is_capacity(&e) {
                    (FailureClass::Capacity, format!("{e:#}"))
                } else {
                    (FailureClass::Trap, format!("{e:#}"))
                };
                Err(failure(class, detail))
            }
        };
        let audit = std::mem::take(&mut store.data_mut().audit);
        // Kept only after a call that succeeded: a trapped instance is never entered again.
        if let (Some(keep), true, Some(instance)) = (keep, result.is_ok(), instance)
            && let Some(place) = place.or_else(|| self.kept_place())
        {
            *keep = Some(Kept { store, instance, _place: place });
        }
        (result, audit)
    }

    /// Instances kept for a later hook right now.
    pub fn kept_now(&self) -> u32 {
        self.kept.load(Ordering::Relaxed)
    }

    /// A place in the kept budget, or `None` when it is spent.
    fn kept_place(&self) -> Option<KeptPlace> {
        let place = KeptPlace(self.kept.clone());
        (self.kept.fetch_add(1, Ordering::Relaxed) < self.max_kept).then_some(place)
    }

    /// Instantiate and drop without calling anything: the floor under every
    /// hook call, for the chain benchmark.
    #[doc(hidden)]
    pub fn instantiate_only(&self, module: &PolicyModule, state: PolicyState) -> wasmtime::Result<()> {
        let mut store = self.store(state);
        module.pre.instantiate(&mut store)?;
        Ok(())
    }

    /// Compile a component that need not be a policy (no exports looked
    /// up, no imports allowed), for the benchmark's floor rows.
    #[doc(hidden)]
    pub fn bare(&self, bytes: &[u8]) -> wasmtime::Result<InstancePre<PolicyState>> {
        self.linker.instantiate_pre(&Component::new(&self.engine, bytes)?)
    }

    /// Instantiate and drop a [`Runtime::bare`] component.
    #[doc(hidden)]
    pub fn instantiate_bare(&self, pre: &InstancePre<PolicyState>, state: PolicyState) -> wasmtime::Result<()> {
        let mut store = self.store(state);
        pre.instantiate(&mut store)?;
        Ok(())
    }

    /// Store::new and drop alone.
    #[doc(hidden)]
    pub fn store_only(&self, state: PolicyState) {
        drop(self.store(state));
    }

    /// The memory cap of each instance.
    pub fn memory_cap(&self) -> usize {
        self.memory_cap
    }
}

fn is_capacity(e: &wasmtime::Error) -> bool {
    e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>().is_some()
}

/// A compiled policy component, ready to instantiate.
pub struct PolicyModule {
    /// Hex SHA-256 of the component bytes.
    pub digest: String,
    /// The same, as bytes (given to each instance's state).
    fingerprint: [u8; 32],
    pre: InstancePre<PolicyState>,
    exports: Exports,
    is_async: bool,
}

impl PolicyModule {
    /// SHA-256 of the component bytes.
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// Whether calls run on a fiber (the policy imports `io`, which may wait).
    pub fn is_async(&self) -> bool {
        self.is_async
    }
}

/// The policy's exports.
#[derive(Debug, Clone, Copy)]
pub enum Export {
    /// `hooks`
    Hooks,
    /// `check-config`
    CheckConfig,
    /// `on-request`
    OnRequest,
    /// `on-response`
    OnResponse,
    /// `on-complete`
    OnComplete,
}

/// Export indices resolved once per component (no string lookups per call).
struct Exports([ComponentExportIndex; 5]);

impl Exports {
    fn find(component: &Component) -> Option<Exports> {
        let iface = component.get_export_index(None, "portcullis:gateway/policy@0.2.0")?;
        let get = |name: &str| component.get_export_index(Some(&iface), name);
        Some(Exports([get("hooks")?, get("check-config")?, get("on-request")?, get("on-response")?, get("on-complete")?]))
    }

    fn get(&self, e: Export) -> &ComponentExportIndex {
        &self.0[e as usize]
    }
}

/// Shorthand for the calls the request path makes. Each packs the call's
/// settings (and the request head) as the contract's encodings.
pub mod hooks {
    use super::*;

    fn settings_of(st: &PolicyState) -> Vec<u8> {
        packed::settings(&st.settings, st.overrides.as_ref())
    }

    /// `hooks()`.
    pub async fn hooks(rt: &Runtime, m: &PolicyModule, st: PolicyState) -> Result<types::HookSet, PolicyFailure> {
        let settings = settings_of(&st);
        rt.call::<(&[u8],), (types::HookSet,)>(m, st, Export::Hooks, (&settings,)).await.0.map(|r| r.0)
    }

    /// `check-config()`; the outer error is a failure, the inner the policy's answer.
    pub async fn check_config(rt: &Runtime, m: &PolicyModule, st: PolicyState) -> Result<Result<(), String>, PolicyFailure> {
        let settings = settings_of(&st);
        rt.call::<(&[u8],), (Result<(), String>,)>(m, st, Export::CheckConfig, (&settings,)).await.0.map(|r| r.0)
    }

    /// `on-request(head)`.
    pub async fn on_request(rt: &Runtime, m: &PolicyModule, st: PolicyState, head: &types::RequestHead) -> (Result<types::Verdict, PolicyFailure>, Vec<(String, String)>) {
        on_request_in(rt, m, st, head, None).await
    }

    /// `on-request(head)`, leaving the instance in `slot` for the request's
    /// `on-response` when the kept budget allows ([`Runtime::call_in`]).
    pub async fn on_request_in(rt: &Runtime, m: &PolicyModule, st: PolicyState, head: &types::RequestHead, keep: Option<&mut Option<Kept>>) -> (Result<types::Verdict, PolicyFailure>, Vec<(String, String)>) {
        let (settings, head) = (settings_of(&st), packed::head(head));
        let (r, audit) = rt.call_in::<(&[u8], &[u8]), (types::Verdict,)>(m, st, Export::OnRequest, (&settings, &head), None, keep).await;
        (r.map(|r| r.0), audit)
    }

    /// `on-response(head, response)` in the instance `kept` from the same
    /// request's `on-request`, if any (else a fresh one); it is not kept again.
    pub async fn on_response_in(
        rt: &Runtime,
        m: &PolicyModule,
        st: PolicyState,
        head: &types::RequestHead,
        resp: &types::ResponseHead,
        kept: Option<Kept>,
    ) -> (Result<types::ResponseEdits, PolicyFailure>, Vec<(String, String)>) {
        let (settings, head) = (settings_of(&st), packed::head(head));
        let (r, audit) = rt.call_in::<(&[u8], &[u8], &types::ResponseHead), (types::ResponseEdits,)>(m, st, Export::OnResponse, (&settings, &head, resp), kept, None).await;
        (r.map(|r| r.0), audit)
    }

    /// `on-complete(head, completion)`.
    pub async fn on_complete(
        rt: &Runtime,
        m: &PolicyModule,
        st: PolicyState,
        head: &types::RequestHead,
        done: &types::Completion,
    ) -> (Result<(), PolicyFailure>, Vec<(String, String)>) {
        let (settings, head) = (settings_of(&st), packed::head(head));
        rt.call::<(&[u8], &[u8], &types::Completion), ()>(m, st, Export::OnComplete, (&settings, &head, done)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Arc<Runtime> {
        let limits = RuntimeLimits { deadline: Duration::from_millis(100), memory_cap: 1 << 20, max_instances: 2 };
        Runtime::new(&limits, ComponentCache::new(None)).unwrap()
    }

    fn test_policy(rt: &Runtime, mode: &str) -> (PolicyModule, impl Fn() -> PolicyState) {
        let module = rt.load("test-policy", &std::fs::read(env!("PORTCULLIS_TEST_POLICY_WASM")).unwrap()).unwrap();
        let settings: Settings = Arc::new([("mode".to_string(), mode.to_string()), ("response-header".to_string(), "x-r".to_string())].into());
        let services = Arc::new(Services::new(None));
        (module, move || PolicyState::new("p".into(), "req".into(), settings.clone(), None, 1 << 20, services.clone()))
    }

    fn head(path: &str) -> types::RequestHead {
        types::RequestHead {
            id: "req".into(),
            method: "GET".into(),
            scheme: "http".into(),
            authority: "a".into(),
            path: path.into(),
            query: None,
            headers: vec![],
            client_ip: "127.0.0.1".into(),
            listener: "l".into(),
            route: None,
            facts: vec![],
        }
    }

    /// An instance is kept only within the budget (half the pool), is given
    /// back to the budget when dropped, and is never kept after a failure.
    #[tokio::test]
    async fn kept_instances_stay_within_the_budget_and_failures_are_never_kept() {
        let rt = Runtime::new(&RuntimeLimits { deadline: Duration::from_millis(100), memory_cap: 1 << 20, max_instances: 4 }, ComponentCache::new(None)).unwrap();
        let (remember, state) = test_policy(&rt, "remember");
        let (mut a, mut b, mut c) = (None, None, None);
        assert!(hooks::on_request_in(&rt, &remember, state(), &head("/a"), Some(&mut a)).await.0.is_ok());
        assert!(hooks::on_request_in(&rt, &remember, state(), &head("/b"), Some(&mut b)).await.0.is_ok());
        assert!(hooks::on_request_in(&rt, &remember, state(), &head("/c"), Some(&mut c)).await.0.is_ok());
        assert!(a.is_some() && b.is_some(), "two of four instances may be kept");
        assert!(c.is_none(), "the third is over the budget and dropped");
        // The kept instance answers on-response with its own request's path.
        let resp = types::ResponseHead { status: 200, headers: vec![], source: "upstream".into() };
        let edits = hooks::on_response_in(&rt, &remember, state(), &head("/a"), &resp, a.take()).await.0.unwrap();
        assert!(edits.set_headers.iter().any(|h| h.name == "x-remembered-on-response" && h.value == b"/a"), "{:?}", edits.set_headers);
        // Its place is back: a new one can be kept.
        assert!(hooks::on_request_in(&rt, &remember, state(), &head("/d"), Some(&mut c)).await.0.is_ok());
        assert!(c.is_some());
        drop((b, c));

        let (trapper, state) = test_policy(&rt, "trap");
        let mut t = None;
        assert!(hooks::on_request_in(&rt, &trapper, state(), &head("/t"), Some(&mut t)).await.0.is_err());
        assert!(t.is_none(), "a trapped instance is never kept");
        assert_eq!(rt.kept_now(), 0);
    }

    /// The ticker parks when no call has started for a while; a call that
    /// starts then wakes it, so a policy that never returns still meets its
    /// deadline (fail closed), and the ticker parks again afterwards.
    #[tokio::test]
    async fn a_deadline_fires_after_the_epoch_ticker_went_idle() {
        let rt = runtime();
        let (looper, state) = test_policy(&rt, "loop");
        let parked = |rt: &Runtime| rt.clock.idle.load(Ordering::SeqCst);
        let wait_for_park = async |rt: &Runtime| {
            for _ in 0..300 {
                if parked(rt) {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            false
        };
        assert!(wait_for_park(&rt).await, "the ticker did not park within 3 s of the last call");
        let started = std::time::Instant::now();
        let (result, _) = hooks::on_request_in(&rt, &looper, state(), &head("/loop"), None).await;
        assert_eq!(result.unwrap_err().class, FailureClass::Deadline);
        // The 100 ms deadline, not the parked ticker's once-a-second wake-up.
        assert!(started.elapsed() < Duration::from_millis(900), "the call ran {:?}: the ticker was not woken", started.elapsed());
        assert!(wait_for_park(&rt).await, "the ticker did not park again");
    }

    /// A component built for contract 0.1.0 is refused with the reason, not
    /// with a missing-import error from the linker.
    #[test]
    fn a_policy_for_contract_0_1_0_is_refused_naming_the_contract() {
        let old = wat::parse_str(
            r#"(component
                (core module $m (func (export "hooks")))
                (core instance $i (instantiate $m))
                (type $t (func))
                (func $hooks (type $t) (canon lift (core func $i "hooks")))
                (instance $policy (export "hooks" (func $hooks)))
                (export "portcullis:gateway/policy@0.1.0" (instance $policy)))"#,
        )
        .unwrap();
        let Err(e) = runtime().load("old.wasm", &old) else { panic!("a 0.1.0 policy loaded") };
        let e = e.to_string();
        assert!(e.contains("exports portcullis:gateway/policy@0.1.0") && e.contains("contract 0.2.0") && e.contains("rebuild"), "{e}");
    }
}
