//! Totals: what all rooms of one project, and of the whole host, may hold at
//! once. Per-call and per-room limits (`sandbox::Limits`) stop one handler or
//! one room; these stop a tenant that spreads itself over many rooms (a
//! request that fans out into thousands of rooms, each well within its own
//! limits) and keep room for every other tenant.
//!
//! Each [`Resource`] has a counter per project and one for the host. Taking
//! from [`Totals`] takes from both or from neither, and a refusal names the
//! cap that refused ([`CapReached`]). What is taken for as long as something
//! lives (a room, an instance, a fetch) is held in a [`Lease`], given back
//! when dropped, so no exit path can leak it. This module knows nothing of
//! rooms or wasmtime.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::manifest::TotalsSpec;

/// What the totals count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// Running room actors.
    Rooms,
    /// Live guest instances (wasm stores).
    Instances,
    /// Guest linear memory and tables, in bytes.
    Memory,
    /// Room-to-room fetches in flight.
    Fetches,
    /// Stored keys plus values, in bytes.
    Storage,
    /// Rooms with an alarm set.
    Alarms,
    /// Rooms started per second (in bursts of a fifth of that): a rate,
    /// not a total; kept by each scope's bucket, outside the counters.
    RoomStarts,
}

impl Resource {
    const ALL: [Self; 6] =
        [Self::Rooms, Self::Instances, Self::Memory, Self::Fetches, Self::Storage, Self::Alarms];

    /// The name used in `[totals]` and in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rooms => "rooms",
            Self::Instances => "instances",
            Self::Memory => "memory",
            Self::Fetches => "fetches_in_flight",
            Self::Storage => "storage",
            Self::Alarms => "alarms",
            Self::RoomStarts => "room_starts_per_second",
        }
    }

    /// Its field in `[totals]`.
    fn field(self) -> &'static str {
        match self {
            Self::Memory => "memory_mib",
            Self::Storage => "storage_mib",
            other => other.as_str(),
        }
    }

    /// `amount` of this resource, in words.
    fn describe(self, amount: u64) -> String {
        match self {
            Self::Rooms => format!("{amount} running rooms"),
            Self::Instances => format!("{amount} live instances"),
            Self::Memory => format!("{} MiB of guest memory", amount >> 20),
            Self::Fetches => format!("{amount} fetches in flight"),
            Self::Storage => format!("{} MiB of storage", amount >> 20),
            Self::Alarms => format!("{amount} rooms with an alarm"),
            Self::RoomStarts => format!("{amount} room starts per second"),
        }
    }
}

/// One scope's counters (a project, or the host), with their caps.
#[derive(Debug)]
pub struct Scope {
    /// `project \`alice\`` or `this host`, for messages.
    name: String,
    used: [AtomicU64; Resource::ALL.len()],
    caps: [u64; Resource::ALL.len()],
    /// Room starts: a bucket of a fifth of `start_rate` tokens (see
    /// [`START_BURST_DIVISOR`]), refilled at `start_rate` per second.
    start_rate: u64,
    starts: Mutex<Bucket>,
}

/// A burst of room starts is at most a fifth of a second's worth. A burst
/// is work the host does at once, at the expense of every room's latency:
/// 100 rooms started together delayed a neighbour's round trip by up to
/// 21 ms at p99 on a loaded 2-core machine, 20 stay within its noise.
pub const START_BURST_DIVISOR: u64 = 5;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    filled_at: Instant,
}

impl Scope {
    /// A scope called `name` with the caps of `spec` (unset fields take
    /// `defaults`' values: a missing cap is never "unlimited").
    pub fn new(name: impl Into<String>, spec: &TotalsSpec, defaults: &TotalsSpec) -> Arc<Self> {
        let spec = defaults.overlay(spec);
        let caps = Resource::ALL.map(|r| spec.cap(r).unwrap_or(u64::MAX));
        let start_rate = spec.cap(Resource::RoomStarts).unwrap_or(u64::MAX);
        let starts = Mutex::new(Bucket { tokens: Self::burst(start_rate), filled_at: Instant::now() });
        Arc::new(Self { name: name.into(), used: Default::default(), caps, start_rate, starts })
    }

    fn burst(rate: u64) -> f64 {
        (rate / START_BURST_DIVISOR).max(1) as f64
    }

    /// Takes a room start from the bucket.
    fn admit_start(&self) -> Result<(), CapReached> {
        let rate = self.start_rate as f64;
        let mut bucket = self.starts.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(bucket.filled_at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(Self::burst(self.start_rate));
        bucket.filled_at = now;
        if bucket.tokens < 1.0 {
            return Err(CapReached {
                scope: self.name.clone(),
                resource: Resource::RoomStarts,
                cap: self.start_rate,
            });
        }
        bucket.tokens -= 1.0;
        Ok(())
    }

    /// What is in use now, and the cap.
    pub fn usage(&self, resource: Resource) -> (u64, u64) {
        (self.used[resource as usize].load(Ordering::Relaxed), self.caps[resource as usize])
    }

    /// Every resource's use and cap, by name.
    pub fn snapshot(&self) -> Vec<(&'static str, u64, u64)> {
        Resource::ALL
            .iter()
            .map(|&r| {
                let (used, cap) = self.usage(r);
                (r.as_str(), used, cap)
            })
            .collect()
    }

    fn try_take(&self, resource: Resource, amount: u64) -> Result<(), CapReached> {
        let cap = self.caps[resource as usize];
        self.used[resource as usize]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(amount).filter(|&after| after <= cap)
            })
            .map(drop)
            .map_err(|_| CapReached { scope: self.name.clone(), resource, cap })
    }

    fn give_back(&self, resource: Resource, amount: u64) {
        let _ = self.used[resource as usize]
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| Some(used.saturating_sub(amount)));
    }
}

/// A project's scope and the host's, taken from together.
#[derive(Debug, Clone)]
pub struct Totals {
    pub project: Arc<Scope>,
    pub host: Arc<Scope>,
}

impl Totals {
    /// Takes `amount` from the project and the host, or from neither.
    ///
    /// # Errors
    /// [`CapReached`] naming the first cap that would be passed.
    pub fn try_take(&self, resource: Resource, amount: u64) -> Result<(), CapReached> {
        self.project.try_take(resource, amount)?;
        self.host.try_take(resource, amount).inspect_err(|_| self.project.give_back(resource, amount))
    }

    /// Admits one room start, by the project's rate and the host's.
    ///
    /// # Errors
    /// [`CapReached`] naming the rate that refused.
    pub fn admit_start(&self) -> Result<(), CapReached> {
        self.project.admit_start()?;
        self.host.admit_start()
    }

    /// Counts `amount` even past the caps: for what exists already (storage
    /// found on disk, an alarm read back after a reset).
    pub fn charge(&self, resource: Resource, amount: u64) {
        for scope in [&self.project, &self.host] {
            scope.used[resource as usize].fetch_add(amount, Ordering::Relaxed);
        }
    }

    /// Moves the count from `before` to `after`: gives back what shrank,
    /// charges what grew even past the caps (for what exists already:
    /// storage read back from disk after a reset, say).
    pub fn settle(&self, resource: Resource, before: u64, after: u64) {
        if after >= before {
            self.charge(resource, after - before);
        } else {
            self.give_back(resource, before - after);
        }
    }

    /// Gives back what [`Totals::try_take`] took.
    pub fn give_back(&self, resource: Resource, amount: u64) {
        self.project.give_back(resource, amount);
        self.host.give_back(resource, amount);
    }

    /// Takes `amount` until the returned lease is dropped.
    ///
    /// # Errors
    /// As [`Totals::try_take`].
    pub fn lease(&self, resource: Resource, amount: u64) -> Result<Lease, CapReached> {
        self.try_take(resource, amount)?;
        Ok(Lease { totals: self.clone(), resource, amount })
    }

    /// Totals for tests and tools that need no caps.
    pub fn unlimited() -> Self {
        let none = TotalsSpec::unlimited();
        Self { project: Scope::new("project", &none, &none), host: Scope::new("this host", &none, &none) }
    }
}

/// Holds part of a total; gives it back when dropped.
#[derive(Debug)]
pub struct Lease {
    totals: Totals,
    resource: Resource,
    amount: u64,
}

impl Lease {
    /// Holds `more` as well.
    ///
    /// # Errors
    /// As [`Totals::try_take`]; the lease keeps what it held.
    pub fn grow(&mut self, more: u64) -> Result<(), CapReached> {
        self.totals.try_take(self.resource, more)?;
        self.amount += more;
        Ok(())
    }
}

impl Lease {
    /// Gives back `less` of what it holds.
    pub fn shrink(&mut self, less: u64) {
        let less = less.min(self.amount);
        self.totals.give_back(self.resource, less);
        self.amount -= less;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.totals.give_back(self.resource, self.amount);
    }
}

/// A total's cap stopped something.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapReached {
    pub scope: String,
    pub resource: Resource,
    pub cap: u64,
}

impl fmt::Display for CapReached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is at its cap of {} ([totals] {})",
            self.scope,
            self.resource.describe(self.cap),
            self.resource.field()
        )
    }
}

impl std::error::Error for CapReached {}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rooms: u64) -> TotalsSpec {
        TotalsSpec { rooms: Some(rooms), ..TotalsSpec::unlimited() }
    }

    #[test]
    fn takes_from_both_or_neither_and_leases_give_back() -> anyhow::Result<()> {
        let host = Scope::new("this host", &spec(3), &TotalsSpec::unlimited());
        let alice = Totals {
            project: Scope::new("project `alice`", &spec(2), &TotalsSpec::unlimited()),
            host: host.clone(),
        };
        let bob = Totals { project: Scope::new("project `bob`", &spec(2), &TotalsSpec::unlimited()), host };
        let a1 = alice.lease(Resource::Rooms, 1)?;
        let _a2 = alice.lease(Resource::Rooms, 1)?;
        let Err(refused) = alice.lease(Resource::Rooms, 1) else {
            anyhow::bail!("a third room past alice's cap")
        };
        assert_eq!(refused.to_string(), "project `alice` is at its cap of 2 running rooms ([totals] rooms)");
        let _b1 = bob.lease(Resource::Rooms, 1)?;
        let Err(refused) = bob.lease(Resource::Rooms, 1) else { anyhow::bail!("a room past the host's cap") };
        assert_eq!(refused.scope, "this host");
        assert_eq!(
            bob.project.usage(Resource::Rooms).0,
            1,
            "a refusal by the host takes nothing from the project"
        );
        drop(a1);
        assert!(bob.lease(Resource::Rooms, 1).is_ok());
        Ok(())
    }

    #[test]
    fn room_starts_come_in_bursts_of_a_fifth_of_the_rate() -> anyhow::Result<()> {
        let spec = TotalsSpec { room_starts_per_second: Some(15), ..TotalsSpec::unlimited() };
        let totals = Totals {
            project: Scope::new("p", &spec, &spec),
            host: Scope::new("h", &TotalsSpec::unlimited(), &TotalsSpec::unlimited()),
        };
        for _ in 0..3 {
            totals.admit_start()?;
        }
        let Err(refused) = totals.admit_start() else { anyhow::bail!("a fourth start in the burst") };
        assert_eq!(
            refused.to_string(),
            "p is at its cap of 15 room starts per second ([totals] room_starts_per_second)"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
        totals.admit_start()?;
        Ok(())
    }

    #[test]
    fn a_missing_cap_is_the_default_not_unlimited() {
        let scope = Scope::new("p", &TotalsSpec::default(), &TotalsSpec::project_defaults());
        assert_eq!(Some(scope.usage(Resource::Rooms).1), TotalsSpec::project_defaults().rooms);
    }
}
