//! The live-instance cap's bookkeeping: which rooms hold an instance, when
//! each was last active, and which were already asked to give it up.
//!
//! Starting an instance must stay cheap however many are alive, so the
//! count of instances not yet asked to evict is kept as a number, and once
//! past the cap the least recently used are picked in batches: one pass
//! over every instance then serves many starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::ids::RoomKey;

/// Past the cap, at least this share of it is asked to evict at once
/// (1/64: 15 rooms of the default 1,000), so the pass that picks them runs
/// once per that many starts instead of once per start.
const BATCH_DIVISOR: usize = 64;

/// A room with a live instance.
struct LiveInstance {
    /// Time of the room's last event, kept up to date by the room.
    last_active: Arc<AtomicU64>,
    /// Asked to evict and not yet done.
    asked_to_evict: bool,
}

/// Rooms with a live instance.
#[derive(Default)]
pub(super) struct LiveInstances {
    rooms: HashMap<RoomKey, LiveInstance>,
    /// Instances not asked to evict: the number the cap applies to.
    unasked: usize,
}

impl LiveInstances {
    pub(super) fn contains(&self, key: &RoomKey) -> bool {
        self.rooms.contains_key(key)
    }

    pub(super) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Records `key`'s new instance. When more than `cap` instances are
    /// unasked, returns the least recently used other rooms to ask to
    /// evict: enough to get back to the cap, and at least a batch.
    pub(super) fn started(
        &mut self,
        key: &RoomKey,
        last_active: &Arc<AtomicU64>,
        cap: usize,
    ) -> Vec<RoomKey> {
        let entry = LiveInstance { last_active: last_active.clone(), asked_to_evict: false };
        match self.rooms.insert(key.clone(), entry) {
            Some(old) if !old.asked_to_evict => {}
            _ => self.unasked += 1,
        }
        if self.unasked <= cap {
            return Vec::new();
        }
        let wanted = (self.unasked - cap).max(cap / BATCH_DIVISOR);
        let mut candidates: Vec<(u64, &RoomKey)> = self
            .rooms
            .iter()
            .filter(|(k, i)| *k != key && !i.asked_to_evict)
            .map(|(k, i)| (i.last_active.load(Ordering::Relaxed), k))
            .collect();
        if wanted < candidates.len() {
            candidates.select_nth_unstable(wanted);
            candidates.truncate(wanted);
        }
        let victims: Vec<RoomKey> = candidates.into_iter().map(|(_, k)| k.clone()).collect();
        for victim in &victims {
            if let Some(instance) = self.rooms.get_mut(victim) {
                instance.asked_to_evict = true;
                self.unasked -= 1;
            }
        }
        victims
    }

    /// A room asked to evict kept its instance (it was busy); it counts
    /// again and may be asked again.
    pub(super) fn declined(&mut self, key: &RoomKey) {
        if let Some(instance) = self.rooms.get_mut(key)
            && instance.asked_to_evict
        {
            instance.asked_to_evict = false;
            self.unasked += 1;
        }
    }

    pub(super) fn stopped(&mut self, key: &RoomKey) {
        if let Some(instance) = self.rooms.remove(key)
            && !instance.asked_to_evict
        {
            self.unasked -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{PartyName, RoomId};

    fn key(room: &str) -> RoomKey {
        RoomKey {
            party: PartyName::try_from("main").expect("valid party"),
            room: RoomId::try_from(room).expect("valid room"),
        }
    }

    /// Starts `n` rooms named r0.. with last-active times 0..n.
    fn start(instances: &mut LiveInstances, n: u64, cap: usize) -> Vec<Vec<RoomKey>> {
        (0..n).map(|t| instances.started(&key(&format!("r{t}")), &Arc::new(AtomicU64::new(t)), cap)).collect()
    }

    #[test]
    fn past_the_cap_the_least_recently_used_are_asked_in_a_batch() {
        let mut instances = LiveInstances::default();
        let asked = start(&mut instances, 128, 128);
        assert!(asked.iter().all(Vec::is_empty), "nothing is asked up to the cap");
        // One over a cap of 128: a batch of 128 / 64 = 2, the two oldest.
        let mut victims = instances.started(&key("new"), &Arc::new(AtomicU64::new(1000)), 128);
        victims.sort_by_key(|k| k.room.as_str().to_owned());
        assert_eq!(victims, vec![key("r0"), key("r1")]);
        // The batch left one slot: the next start asks nobody.
        assert!(instances.started(&key("next"), &Arc::new(AtomicU64::new(1001)), 128).is_empty());
        assert_eq!(instances.len(), 130);
    }

    #[test]
    fn a_declined_eviction_counts_again_and_a_stop_frees_a_slot() {
        let mut instances = LiveInstances::default();
        start(&mut instances, 2, 2);
        let victims = instances.started(&key("c"), &Arc::new(AtomicU64::new(5)), 2);
        assert_eq!(victims, vec![key("r0")]);
        instances.declined(&key("r0"));
        instances.declined(&key("r0")); // twice changes nothing
        // r0 counts again: 3 unasked over a cap of 2, and it is still oldest.
        assert_eq!(instances.started(&key("d"), &Arc::new(AtomicU64::new(6)), 3), vec![key("r0")]);
        instances.stopped(&key("r0"));
        instances.stopped(&key("r1"));
        assert!(instances.started(&key("e"), &Arc::new(AtomicU64::new(7)), 3).is_empty());
        assert_eq!(instances.len(), 3);
    }
}
