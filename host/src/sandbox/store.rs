//! What a `Store` holds for one guest instance, and how its imports link.

use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{Party, RoomApi};
use super::error::{CpuBudgetSpent, MemoryLimitReached};
use super::limits::Limits;

/// Per-instance data: the room's own state plus what the sandbox needs to
/// enforce limits and serve WASI.
pub struct StoreData<R> {
    /// The room state the imports act on. Taken back out when the instance
    /// is dropped, so the room keeps its connections and storage.
    pub(super) room: R,
    /// Epoch ticks the current call may still use (see `on_epoch_tick`).
    pub(super) ticks_left: u64,
    memory: MemoryLimiter,
    /// WASI granting clocks, random, and stdout and stderr, which go to the
    /// host's log: no preopened folders (every file call fails), no network
    /// (sockets and name lookups are denied), no environment, no arguments,
    /// empty stdin.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl<R: RoomApi> StoreData<R> {
    pub(super) fn new(room: R, limits: &Limits) -> Self {
        let output = room.output();
        Self {
            wasi: WasiCtxBuilder::new()
                .stdout(output.clone())
                .stderr(output)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .build(),
            room,
            ticks_left: 0,
            memory: MemoryLimiter { limit: limits.memory_bytes },
            table: ResourceTable::new(),
        }
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.memory
    }
}

impl<R: Send> WasiView for StoreData<R> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Called by wasmtime at each epoch tick while the guest runs: yield to
/// tokio so other rooms run, and trap once the call's budget is spent.
pub(super) fn on_epoch_tick<R>(
    mut store: StoreContextMut<'_, StoreData<R>>,
) -> wasmtime::Result<UpdateDeadline> {
    let data = store.data_mut();
    if data.ticks_left == 0 {
        return Err(CpuBudgetSpent.into());
    }
    data.ticks_left -= 1;
    Ok(UpdateDeadline::Yield(1))
}

/// Links WASI and the room API into `linker`. All of WASI p2 is linked
/// because Rust's std imports more of it than it uses (a component that
/// imports an unlinked interface cannot be instantiated), but the context
/// grants nothing beyond clocks, random and logged stdout/stderr (see
/// [`StoreData::new`]).
pub(super) fn add_to_linker<R: RoomApi>(linker: &mut Linker<StoreData<R>>) -> anyhow::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    Party::add_to_linker::<_, RoomData<R>>(linker, |data| &mut data.room)?;
    Ok(())
}

/// Tells bindgen's linker that imports see only `&mut R`, not the whole
/// store data.
struct RoomData<R>(std::marker::PhantomData<R>);

impl<R: 'static> HasData for RoomData<R> {
    type Data<'a> = &'a mut R;
}

/// Caps linear memory; growing past the cap traps with a typed error.
struct MemoryLimiter {
    limit: usize,
}

/// Tables are small in practice; this only stops a guest from using table
/// growth to eat host memory.
const MAX_TABLE_ELEMENTS: usize = 100_000;

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            return Err(MemoryLimitReached { limit: self.limit }.into());
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
