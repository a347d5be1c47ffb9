use super::{RoomState, host};
use crate::rooms::Limit;
use crate::rooms::state::FetchStart;
use crate::sandbox::{Refusal, Request};

impl host::Outbound for RoomState {
    fn fetch(&mut self, party: String, room: String, request: Request) -> Result<u64, Refusal> {
        let limit = self.limits.fetches_in_flight;
        if self.fetches_in_flight + self.fetches.len() >= limit {
            self.hits.count(Limit::Fetches);
            return Err(Refusal::QuotaExceeded(format!("{limit} fetches already in flight from this room")));
        }
        if self.call.fetches_left == 0 {
            self.hits.count(Limit::Fetches);
            let limit = self.limits.fetches_per_event;
            return Err(Refusal::QuotaExceeded(format!("a handler call may start at most {limit} fetches")));
        }
        self.call.fetches_left -= 1;
        let id = self.next_fetch_id();
        self.fetches.push(FetchStart { id, party, room, request });
        Ok(id)
    }
}
