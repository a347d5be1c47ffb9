use super::{RoomState, host};
use crate::sandbox::Response;

impl host::Tasks for RoomState {
    fn complete_request(&mut self, task: u64, response: Response) {
        let response = self.bounded(response);
        self.completed.push((task, response));
    }
}
