//! The sandbox: the only module that uses wasmtime.
//!
//! One [`Sandbox`] per host holds the `Engine` and its epoch ticker. Each
//! party's component is compiled (or loaded from the on-disk cache) and
//! pre-linked once into a [`PartyCode`]; each live room gets its own
//! [`Guest`], a `Store` plus instance, created from it in microseconds.
//!
//! The sandbox does not know what a room is. The room's state is a type
//! parameter `R` that implements the imported WIT interfaces ([`RoomApi`]);
//! it lives inside the `Store` while the guest runs and comes back out when
//! the instance is dropped, so connections and storage outlive instances.

mod bindings;
mod cache;
mod error;
mod guest;
mod limits;
mod meter;
mod output;
mod priority;
mod store;

pub use bindings::{
    ConnectionInfo, GateOutcome, Header, ListOptions, LogLevel, Message, Refusal, Request, RequestOutcome,
    Response, RoomApi, Traits, Verdict, host,
};
pub use error::{GuestError, TrapKind};
pub use guest::Guest;
pub use limits::{EPOCH_TICK, Limits};
pub use output::{GuestOutput, LogBudget, LogSink};

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine};

use bindings::PartyPre;
use store::StoreData;

/// The wasmtime engine shared by every party, plus its epoch ticker.
pub struct Sandbox {
    engine: Engine,
    cache_dir: PathBuf,
    ticker: Arc<Ticker>,
    /// One background compile at a time (see [`Sandbox::load_in_background`]).
    compiling: Arc<tokio::sync::Semaphore>,
    /// Where compile times go.
    metrics: Arc<crate::metrics::Metrics>,
}

/// Keeps the epoch ticker thread running while held: by the sandbox and by
/// every party's code, so a room still running a guest (during shutdown,
/// say) keeps its clock after the sandbox is gone. A guest whose clock has
/// stopped is never interrupted, and would spin on its thread for ever.
#[derive(Debug, Default)]
struct Ticker;

impl Sandbox {
    /// Builds the engine. Compiled components are cached in `cache_dir`.
    /// `fast_compile` (for `partyhost dev`) skips Cranelift's optimisations:
    /// code compiles in less time and runs slower.
    ///
    /// # Errors
    /// When the engine configuration is rejected by this CPU.
    pub fn new(
        cache_dir: &Path,
        fast_compile: bool,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> anyhow::Result<Self> {
        let mut config = Config::new();
        if fast_compile {
            config.cranelift_opt_level(wasmtime::OptLevel::None);
        }
        // Epoch interruption bounds each handler's CPU time; its cost per
        // call is not measurable (see ../shared/TOOLCHAIN.md).
        config.epoch_interruption(true);
        config.max_wasm_stack(Limits::default().stack_bytes);
        let engine =
            Engine::new(&config).map_err(anyhow::Error::from).context("configuring the wasmtime engine")?;
        let ticker = Arc::new(Ticker);
        spawn_epoch_ticker(engine.clone(), Arc::downgrade(&ticker))
            .context("starting the epoch ticker thread")?;
        priority::lower_compile_workers();
        let compiling = Arc::new(tokio::sync::Semaphore::new(1));
        Ok(Self { engine, cache_dir: cache_dir.to_path_buf(), ticker, compiling, metrics })
    }

    /// Compiles (or loads from cache) the component at `wasm` and links it
    /// against the room API, so that instantiating it later cannot fail on
    /// a missing import.
    ///
    /// # Errors
    /// When the file is missing, is not a component, or does not target the
    /// `partyhost:party` world; the message names the party and the file.
    pub fn load<R: RoomApi>(&self, party: &str, wasm: &Path, limits: Limits) -> anyhow::Result<PartyCode<R>> {
        let context = || format!("loading party `{party}` from {}", wasm.display());
        let started = std::time::Instant::now();
        let bytes = std::fs::read(wasm).with_context(context)?;
        if !wasmparser_is_component(&bytes) {
            bail!(
                "{}: not a WebAssembly component (a core module or another file?); build guests \
                 with `scripts/build-guests.sh`, which targets wasm32-wasip2",
                wasm.display()
            );
        }
        let (component, uncached) =
            cache::compile(&self.engine, &self.cache_dir, &bytes).with_context(context)?;
        let mut linker = Linker::<StoreData<R>>::new(&self.engine);
        store::add_to_linker(&mut linker).with_context(context)?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: it imports something partyhost does not provide", context()))?;
        let pre = PartyPre::new(pre)
            .map_err(anyhow::Error::from)
            .with_context(|| format!("{}: it does not export the partyhost:party world", context()))?;
        // Only a component that fits our world is worth keeping.
        if let Some(uncached) = uncached {
            uncached.store(&component);
        }
        self.metrics.compiled(started.elapsed());
        Ok(PartyCode { pre, limits, engine: self.engine.clone(), _ticker: self.ticker.clone() })
    }

    /// [`Sandbox::load`] for a host that is serving: on a thread of its own
    /// at a lower priority (as are Cranelift's worker threads), one compile
    /// at a time host-wide, so a deploy or a reload takes what the serving
    /// threads leave. docs/benchmarks.md measures what it still costs them.
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub async fn load_in_background<R: RoomApi + Send + 'static>(
        self: &Arc<Self>,
        party: &str,
        wasm: &Path,
        limits: Limits,
    ) -> anyhow::Result<PartyCode<R>> {
        // Held by the compile thread itself: a caller that stops waiting
        // does not free the slot while Cranelift is still at work.
        let turn = self.compiling.clone().acquire_owned().await.context("the compile worker has stopped")?;
        let (sandbox, party, wasm) = (self.clone(), party.to_owned(), wasm.to_owned());
        let (done, result) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("compile".into())
            .spawn(move || {
                let _turn = turn;
                priority::lower_this_thread();
                let _ = done.send(sandbox.load(&party, &wasm, limits));
            })
            .context("starting a compile thread")?;
        result.await.context("the compile thread panicked")?
    }
}

/// A party's compiled and linked code: instantiate it once per live room.
pub struct PartyCode<R: RoomApi> {
    pre: PartyPre<StoreData<R>>,
    limits: Limits,
    engine: Engine,
    _ticker: Arc<Ticker>,
}

impl<R: RoomApi> PartyCode<R> {
    /// The limits every instance of this party runs under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A fresh instance holding `room`. It has not run `on-start` yet.
    ///
    /// # Errors
    /// When the component's start code traps; the room state is handed back
    /// so nothing the host keeps for the room is lost.
    pub async fn instantiate(&self, room: R) -> Result<Guest<R>, (R, GuestError)> {
        Guest::instantiate(&self.engine, &self.pre, &self.limits, room).await
    }
}

/// Whether `bytes` is a component rather than a core module.
fn wasmparser_is_component(bytes: &[u8]) -> bool {
    // The preamble: magic, then a version/layer word whose layer is 1 for
    // components and 0 for core modules.
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

/// Advances the engine epoch every [`EPOCH_TICK`] until the last holder of
/// the ticker lets go. A std thread, not a tokio task: a guest spinning on a
/// worker must not be able to stop its own clock.
fn spawn_epoch_ticker(engine: Engine, ticker: std::sync::Weak<Ticker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while ticker.strong_count() > 0 {
                std::thread::sleep(EPOCH_TICK);
                engine.increment_epoch();
            }
        })
        .map(drop)
}
