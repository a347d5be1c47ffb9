use super::{RoomState, host};

impl host::Room for RoomState {
    fn party(&mut self) -> String {
        self.key.party.to_string()
    }

    fn id(&mut self) -> String {
        self.key.room.to_string()
    }

    fn vars(&mut self) -> Vec<(String, String)> {
        self.vars.to_vec()
    }
}
