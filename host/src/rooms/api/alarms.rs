use super::{RoomState, host};
use crate::rooms::Limit;

impl host::Alarms for RoomState {
    fn get(&mut self) -> Option<u64> {
        self.storage.alarm()
    }

    fn set(&mut self, time_ms: u64) {
        if self.stateless {
            tracing::warn!(room = %self.key, "on-before-connect/on-before-request set an alarm; a gate has none");
            return;
        }
        self.alarm_retry = 0;
        // `set` cannot return a refusal, so a cap fails the call, as a
        // broadcast past its fan-out budget does.
        // (Counted and logged when the room fails the call.)
        if let Err(cap) = self.set_alarm(Some(time_ms)) {
            self.call.exceeded.get_or_insert((Limit::Totals, cap.to_string()));
        }
    }

    fn delete(&mut self) {
        // Clearing an alarm only gives back; it cannot be refused.
        self.alarm_retry = 0;
        let _ = self.set_alarm(None);
    }
}
