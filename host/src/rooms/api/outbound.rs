use super::{RoomState, host};
use crate::budget::Resource;
use crate::rooms::Limit;
use crate::rooms::state::{FetchStart, MAX_HOPS};
use crate::sandbox::{Refusal, Request};

impl host::Outbound for RoomState {
    fn fetch(&mut self, party: String, room: String, request: Request) -> Result<u64, Refusal> {
        let limit = self.limits.body_bytes;
        if request.body.len() > limit {
            return Err(self.refuse(
                Limit::Body,
                Refusal::TooLarge,
                format!("fetch body is over {limit} bytes"),
            ));
        }
        let limit = self.limits.fetches_in_flight;
        if self.fetches_in_flight + self.fetches.len() >= limit {
            let why = format!("{limit} fetches already in flight from this room");
            return Err(self.refuse(Limit::Fetches, Refusal::QuotaExceeded, why));
        }
        if self.call.fetches_left == 0 {
            let why = format!("a handler call may start at most {} fetches", self.limits.fetches_per_event);
            return Err(self.refuse(Limit::Fetches, Refusal::QuotaExceeded, why));
        }
        if self.hops >= MAX_HOPS {
            let why = format!(
                "this call is {} room-to-room requests deep; a chain may be at most {MAX_HOPS} deep",
                self.hops
            );
            return Err(self.refuse(Limit::Fetches, Refusal::QuotaExceeded, why));
        }
        let lease = self.totals.lease(Resource::Fetches, 1).map_err(|cap| {
            self.cap_reached(&cap);
            Refusal::QuotaExceeded(cap.to_string())
        })?;
        self.call.fetches_left -= 1;
        let id = self.next_fetch_id();
        self.fetches.push(FetchStart { id, party, room, request, hops: self.hops + 1, lease });
        Ok(id)
    }
}
