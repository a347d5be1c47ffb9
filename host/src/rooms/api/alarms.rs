use super::{RoomState, host};

impl host::Alarms for RoomState {
    fn get(&mut self) -> Option<u64> {
        self.storage.alarm()
    }

    fn set(&mut self, time_ms: u64) {
        self.storage.set_alarm(Some(time_ms));
    }

    fn delete(&mut self) {
        self.storage.set_alarm(None);
    }
}
