use super::{RoomState, host};
use crate::sandbox::{Response, Verdict};

impl host::Tasks for RoomState {
    fn complete_request(&mut self, task: u64, response: Response) {
        let response = self.bounded(response);
        self.completed.push((task, response));
    }

    fn complete_gate(&mut self, task: u64, verdict: Verdict) {
        // Only a gate's instance waits for verdicts; a room's drops them.
        if self.stateless {
            self.verdicts.push((task, verdict));
        }
    }
}
