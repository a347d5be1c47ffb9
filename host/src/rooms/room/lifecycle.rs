//! A room's instance comes and goes: started on demand (running
//! `on-start`), evicted when idle, dropped and restarted from storage after
//! a failure. The room itself retires when it has nothing left to keep.

use std::sync::Arc;
use tracing::{debug, info, warn};

use super::{Room, Slot};
use crate::rooms::state::{Outgoing, RoomState};
use crate::rooms::{CLOSE_SERVICE_RESTART, Limit, RoomMsg};
use crate::sandbox::{Guest, GuestError, TrapKind};

/// What an idle room does when its idle time is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum IdleAction {
    /// Drop the instance; sockets stay open, kept by the host.
    Evict,
    /// Stop the room: no sockets, nothing pending.
    Retire,
}

impl Room {
    /// The running instance, creating it (and running `on-start`) if none
    /// runs. `None` when the instance could not start; that is logged. An
    /// `on-start` runs at the depth of the event that caused it, which the
    /// event's call keeps.
    pub(super) async fn live_guest(&mut self) -> Option<&mut Guest<RoomState>> {
        if let Slot::Idle(_) = self.slot {
            let Slot::Idle(state) = std::mem::replace(&mut self.slot, Slot::Empty) else {
                return None;
            };
            let hops = state.hops;
            match self.party.code.instantiate(state).await {
                Ok(mut guest) => {
                    let task = self.next_task();
                    // The party's traits, asked of its first instance.
                    let started = match self.party.traits.get() {
                        Some(_) => guest.on_start(task).await,
                        None => match guest.traits().await {
                            Ok(traits) => {
                                let _ = self.party.traits.set(traits);
                                guest.on_start(task).await
                            }
                            Err(e) => Err(e),
                        },
                    };
                    self.slot = Slot::Live(guest);
                    self.rooms.instance_started(&self.key, &self.last_active);
                    debug!(room = %self.key, "instance started");
                    if !self.finish(started).await {
                        return None;
                    }
                    self.state_mut().hops = hops;
                }
                Err((state, e)) => {
                    if e.kind == TrapKind::HostLimit(Limit::Totals.as_str()) {
                        self.start_refusal = Some(e.detail.clone());
                    }
                    self.rooms.guest_failed(&self.key, "start", &e);
                    warn!(room = %self.key, error.type = e.kind.as_str(), cause = %e.detail, "instance failed to start");
                    self.slot = Slot::Idle(state);
                    return None;
                }
            }
        }
        match &mut self.slot {
            Slot::Live(guest) => Some(guest),
            _ => None,
        }
    }

    /// Switches to the registry's current code for the party, if it changed
    /// and no handler is parked in the old instance (its future lives
    /// there). Returns false when the party is no longer served.
    pub(super) fn follow_party(&mut self) -> bool {
        let Some(current) = self.rooms.party(&self.key.party) else {
            info!(room = %self.key, "party removed; closing the room");
            return false;
        };
        if Arc::ptr_eq(&current, &self.party) || !self.fetches.is_empty() || !self.pending_requests.is_empty()
        {
            return true;
        }
        self.drop_instance();
        let vars = self.rooms.vars_of(&current);
        let state = self.state_mut();
        state.vars = vars;
        state.limits = current.code.limits().clone();
        self.party = current;
        info!(room = %self.key, "party updated; the next event runs the new code");
        true
    }

    /// What to do once the idle time is up, if anything. Nothing while a
    /// handler is parked (its future lives in the instance), a request
    /// waits, or a failed alarm is to be retried (the count lives here).
    pub(super) fn idle_action(&self) -> Option<IdleAction> {
        if self.state().alarm_retry > 0
            || !self.fetches.is_empty()
            || !self.pending_requests.is_empty()
            || !self.gate.is_empty()
            || !self.rx.is_empty()
        {
            return None;
        }
        let no_sockets = self.state().connections.is_empty();
        match self.slot {
            _ if no_sockets => Some(IdleAction::Retire),
            Slot::Live(_) if self.party.hibernates() => Some(IdleAction::Evict),
            _ => None,
        }
    }

    /// Evicts the instance or reports that the room should retire.
    pub(super) fn on_idle(&mut self) -> bool {
        match self.idle_action() {
            Some(IdleAction::Evict) => {
                self.drop_instance();
                debug!(room = %self.key, sockets = self.state().connections.len(), "instance evicted (hibernating)");
                false
            }
            Some(IdleAction::Retire) => true,
            None => false,
        }
    }

    /// The registry asks for the instance (too many are alive).
    pub(super) fn evict_if_idle(&mut self) {
        if self.fetches.is_empty() && self.pending_requests.is_empty() && matches!(self.slot, Slot::Live(_)) {
            self.drop_instance();
            debug!(room = %self.key, "instance evicted (live instance cap)");
        } else {
            self.rooms.eviction_declined(&self.key);
        }
    }

    /// Drops the instance, keeping the room's state.
    pub(super) fn drop_instance(&mut self) {
        if let Slot::Live(_) = self.slot
            && let Slot::Live(guest) = std::mem::replace(&mut self.slot, Slot::Empty)
        {
            self.slot = Slot::Idle(guest.into_room());
            self.rooms.instance_stopped(&self.key);
        }
    }

    /// Logs a failed call and resets the room.
    pub(super) async fn reset(&mut self, e: &GuestError) {
        self.rooms.guest_failed(&self.key, "call", e);
        warn!(room = %self.key, error.type = e.kind.as_str(), cause = %e.detail, "guest call failed; restarting the instance");
        self.reset_state().await;
    }

    /// Drops the instance and every effect not yet released, and reloads
    /// storage from disk so uncommitted writes vanish.
    pub(super) async fn reset_state(&mut self) {
        self.drop_instance();
        // Handlers parked in the dropped instance will never finish; those
        // whose response waits in the gate did finish. A new set, not
        // `abort_all`: a fetch that had already finished could still be
        // joined from the old one and resume a handler that is gone.
        self.fetches = tokio::task::JoinSet::new();
        // Writes of calls that succeeded land before the reload, so it sees
        // them, and their output leaves; or, if one fails, none of it does.
        self.settle_commits().await;
        if self.moved {
            return;
        }
        let held = self.held_tasks();
        for (_, reply) in self.pending_requests.extract_if(|task, _| !held.contains(task)) {
            let _ = reply.send(super::error_response(500, "the room restarted after an error"));
        }
        let reloaded = self.rooms.storage().load(&self.key).await;
        let state = self.state_mut();
        state.discard_effects();
        state.fetches_in_flight = 0;
        match reloaded {
            Ok(storage) => {
                let (old_bytes, old_alarm) = (state.storage.total_bytes(), state.storage.alarm().is_some());
                state.storage = storage;
                state.settle_storage(old_bytes, old_alarm);
                // A retry whose alarm did not reach the disk is no retry.
                if state.storage.alarm().is_none() {
                    state.alarm_retry = 0;
                }
            }
            Err(e) if e.downcast_ref::<crate::storage::OwnedElsewhere>().is_some() => self.moved = true,
            Err(e) => {
                tracing::error!(room = %self.key, cause = %format!("{e:#}"), "reloading storage failed")
            }
        }
    }

    /// The room lost its ownership (another node claimed it, or this node's
    /// lease lapsed): nothing it holds may reach anyone. Its sockets are
    /// closed with 1012, so clients reconnect and find the owner; whatever
    /// waits in its mailbox is refused the same way.
    pub(super) async fn moved_away(mut self) {
        self.rooms.forget(&self.key, self.generation);
        self.rx.close();
        self.gate.clear();
        self.drop_instance();
        self.running = None;
        let reason = "the room moved to another node; reconnect";
        let close = || Outgoing::Close { code: CLOSE_SERVICE_RESTART, reason: reason.into() };
        for entry in self.state().connections.values() {
            let _ = entry.sender.try_send(close());
        }
        for (_, reply) in self.pending_requests.drain() {
            let _ = reply.send(super::error_response(503, reason));
        }
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                RoomMsg::Connect(connect) => drop(connect.sender.try_send(close())),
                RoomMsg::Request { reply, .. } => drop(reply.send(super::error_response(503, reason))),
                _ => {}
            }
        }
        warn!(room = %self.key, "room stopped: it moved to another node");
    }

    /// After the registry let the room go: forward anything that reached the
    /// mailbox meanwhile to the room's next run, and make sure a pending
    /// alarm still wakes the room.
    pub(super) async fn retired(mut self) {
        self.rx.close();
        self.drop_instance();
        self.running = None;
        if let Some(time_ms) = self.state().storage.alarm() {
            self.rooms.wake_at(self.key.clone(), time_ms);
        }
        while let Ok(msg) = self.rx.try_recv() {
            if let Err(e) = self.rooms.send(&self.key, msg).await {
                warn!(room = %self.key, cause = %format!("{e:#}"), "could not forward a message after retiring");
            }
        }
        debug!(room = %self.key, "room retired");
    }
}

/// The limit a failed call counts against.
pub(in crate::rooms) fn limit_of(kind: TrapKind) -> Limit {
    match kind {
        TrapKind::CpuLimit => Limit::Cpu,
        TrapKind::WallClock => Limit::Wall,
        TrapKind::MemoryLimit => Limit::Memory,
        TrapKind::StackOverflow | TrapKind::OutOfBounds => Limit::Stack,
        TrapKind::HostLimit(name) if name == Limit::Fanout.as_str() => Limit::Fanout,
        TrapKind::HostLimit(name) if name == Limit::Totals.as_str() => Limit::Totals,
        _ => Limit::Trap,
    }
}
