//! What a `Store` holds for one guest instance, and how its imports link.

use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasData, Linker, ResourceTable};
use wasmtime::{ResourceLimiter, StoreContextMut, UpdateDeadline};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{Party, RoomApi};
use super::error::{CpuBudgetSpent, MemoryLimitReached};
use super::limits::Limits;
use super::meter::CpuMeter;
use crate::budget::{CapReached, Lease, Resource};

/// Most linear memories, tables and core instances one instance may create.
/// A Rust guest has one memory, a few tables and a handful of core
/// instances; these stop a component that declares thousands, each
/// reserving its own address space (4 GiB plus guards by default: with the
/// host's 10,000 instances, two memories each stay within the 128 TiB a
/// process can map).
pub(super) const MAX_MEMORIES: usize = 2;
pub(super) const MAX_TABLES: usize = 32;
pub(super) const MAX_CORE_INSTANCES: usize = 64;

/// Bytes a table element is counted as against the memory limit.
const TABLE_ELEMENT_BYTES: usize = 8;

/// Largest `wasi:random` request (the default is 64 MiB, a host allocation
/// per call).
const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// Most WASI resources (pollables, streams) an instance may hold at once;
/// they live in host memory (the default allows a million).
const MAX_WASI_RESOURCES: usize = 4096;

/// Per-instance data: the room's own state plus what the sandbox needs to
/// enforce limits and serve WASI.
pub struct StoreData<R> {
    /// The room state the imports act on. Taken back out when the instance
    /// is dropped, so the room keeps its connections and storage.
    pub(super) room: R,
    /// Time the current call has run, and what it may run.
    pub(super) meter: Arc<CpuMeter>,
    pub(super) cpu_budget: Duration,
    memory: MemoryLimiter,
    /// This instance's place among the project's and host's live ones.
    _instance: Lease,
    /// WASI granting clocks, random, and stdout and stderr, which go to the
    /// host's log: no preopened folders (every file call fails), no network
    /// (sockets and name lookups are denied), no environment, no arguments,
    /// empty stdin.
    wasi: WasiCtx,
    table: ResourceTable,
}

impl<R: RoomApi> StoreData<R> {
    /// # Errors
    /// When the project or the host is at its cap of live instances.
    pub(super) fn new(room: R, limits: &Limits) -> Result<Self, (R, CapReached)> {
        let totals = room.totals();
        let instance = match totals.lease(Resource::Instances, 1) {
            Ok(lease) => lease,
            Err(e) => return Err((room, e)),
        };
        let memory = match totals.lease(Resource::Memory, 0) {
            Ok(lease) => MemoryLimiter::new(limits.memory_bytes, lease),
            Err(e) => return Err((room, e)),
        };
        let output = room.output();
        Ok(Self {
            wasi: WasiCtxBuilder::new()
                .stdout(output.clone())
                .stderr(output)
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .max_random_size(MAX_RANDOM_BYTES)
                .build(),
            room,
            meter: Arc::default(),
            cpu_budget: Duration::ZERO,
            memory,
            _instance: instance,
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(MAX_WASI_RESOURCES);
                table
            },
        })
    }

    pub(super) fn limiter(&mut self) -> &mut dyn ResourceLimiter {
        &mut self.memory
    }

    /// The total that refused this instance memory, if one did.
    pub(super) fn memory_refused_by(&mut self) -> Option<CapReached> {
        self.memory.refused_by.take()
    }
}

impl<R: Send> WasiView for StoreData<R> {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// Called by wasmtime at each epoch tick while the guest runs: yield to
/// tokio so other rooms run, and trap once the call's budget is spent. The
/// meter counts host work done inside imports too, so a loop of costly
/// imports stops here at the next tick, like a loop of wasm.
pub(super) fn on_epoch_tick<R>(store: StoreContextMut<'_, StoreData<R>>) -> wasmtime::Result<UpdateDeadline> {
    let data = store.data();
    if data.meter.spent_at_tick() > data.cpu_budget {
        return Err(CpuBudgetSpent.into());
    }
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

/// One limit for all of an instance's memories and tables together, taken
/// from the project's and the host's memory totals as it grows; growing
/// past either traps with a typed error. What the instance took is given
/// back when its store is dropped (the lease).
struct MemoryLimiter {
    limit: usize,
    used: usize,
    lease: Lease,
    /// The last grant, taken back if wasmtime then fails the growth (past
    /// the memory's declared maximum, say).
    last_grant: usize,
    /// The project's or host's total that last refused a growth: an
    /// instance that cannot start for it is refused as at a cap, not as a
    /// failing party.
    refused_by: Option<CapReached>,
}

impl MemoryLimiter {
    fn new(limit: usize, lease: Lease) -> Self {
        Self { limit, used: 0, lease, last_grant: 0, refused_by: None }
    }

    fn grow_failed(&mut self) {
        self.used -= self.last_grant;
        self.lease.shrink(self.last_grant as u64);
        self.last_grant = 0;
    }

    /// Grants `more` bytes, or says which limit refused.
    fn grow(&mut self, more: usize) -> wasmtime::Result<bool> {
        let after = self.used.saturating_add(more);
        if after > self.limit {
            return Err(MemoryLimitReached { limit: self.limit, total: None }.into());
        }
        if let Err(cap) = self.lease.grow(more as u64) {
            self.refused_by = Some(cap.clone());
            return Err(MemoryLimitReached { limit: self.limit, total: Some(cap) }.into());
        }
        self.used = after;
        self.last_grant = more;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current))
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(desired.saturating_sub(current).saturating_mul(TABLE_ELEMENT_BYTES))
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn table_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.grow_failed();
        Ok(())
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}
