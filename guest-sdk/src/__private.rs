//! What `export_party!` expands to. Not part of the public API.

use std::any::Any;
use std::cell::OnceCell;

pub use crate::bindings;
pub use crate::bindings::exports::partyhost::party::handlers::{
    GateOutcome, Guest as Handlers, PartyTraits, RequestOutcome,
};
pub use crate::bindings::partyhost::party::types::{
    Message as WitMessage, Request as WitRequest, Response as WitResponse, Verdict as WitVerdict,
};

use crate::executor::{Done, spawn};
use crate::{
    AlarmInfo, Close, Connection, ConnectionContext, Lobby, Message, Party, Request, Response, Room,
};

thread_local! {
    static INSTANCE: OnceCell<&'static dyn Any> = const { OnceCell::new() };
}

/// The party of this instance, created on first use. It lives as long as
/// the instance, so handler futures may borrow it across awaits.
fn party<P: Party>() -> &'static P {
    let any = INSTANCE.with(|cell| {
        *cell.get_or_init(|| {
            std::panic::set_hook(Box::new(|info| crate::log::error(&format!("panic: {info}"))));
            let party: &'static P = Box::leak(Box::new(P::new(Room::new())));
            party
        })
    });
    match any.downcast_ref::<P>() {
        Some(party) => party,
        None => unreachable!("export_party! names one type per component"),
    }
}

fn run(task: u64, future: impl Future<Output = ()> + 'static) {
    spawn(
        task,
        Box::pin(async move {
            future.await;
            Done::Nothing
        }),
    );
}

pub fn on_start<P: Party>(task: u64) {
    run(task, party::<P>().on_start());
}

pub fn on_connect<P: Party>(task: u64, conn: String, request: WitRequest) {
    let ctx = ConnectionContext { request: Request::from_wit(request) };
    run(task, party::<P>().on_connect(Connection::new(conn), ctx));
}

pub fn on_message<P: Party>(task: u64, conn: String, msg: WitMessage) {
    run(task, party::<P>().on_message(Message::from_wit(msg), Connection::new(conn)));
}

pub fn on_close<P: Party>(task: u64, conn: String, code: u16, reason: String, was_clean: bool) {
    run(task, party::<P>().on_close(Connection::new(conn), Close { code, reason, was_clean }));
}

pub fn on_error<P: Party>(task: u64, conn: String, error: String) {
    run(task, party::<P>().on_error(Connection::new(conn), error));
}

pub fn on_alarm<P: Party>(task: u64, retry_count: u32) {
    run(task, party::<P>().on_alarm(AlarmInfo { retry_count }));
}

pub fn on_request<P: Party>(task: u64, request: WitRequest) -> RequestOutcome {
    let future = party::<P>().on_request(Request::from_wit(request));
    match spawn(task, Box::pin(async move { Done::Response(future.await) })) {
        Some(Done::Response(response)) => RequestOutcome::Ready(response.to_wit()),
        Some(_) => RequestOutcome::Ready(Response::text(500, "handler returned no response").to_wit()),
        None => RequestOutcome::Pending,
    }
}

/// Runs a gate (a static method: the party is never created for it).
fn gate(task: u64, future: impl Future<Output = Result<Request, Response>> + 'static) -> GateOutcome {
    match spawn(task, Box::pin(async move { Done::Verdict(future.await) })) {
        Some(Done::Verdict(verdict)) => GateOutcome::Ready(verdict_to_wit(verdict)),
        Some(_) => {
            GateOutcome::Ready(WitVerdict::Refuse(Response::text(500, "gate returned no verdict").to_wit()))
        }
        None => GateOutcome::Pending,
    }
}

pub fn on_before_connect<P: Party>(task: u64, request: WitRequest) -> GateOutcome {
    gate(task, P::on_before_connect(Request::from_wit(request), Lobby::new()))
}

pub fn on_before_request<P: Party>(task: u64, request: WitRequest) -> GateOutcome {
    gate(task, P::on_before_request(Request::from_wit(request), Lobby::new()))
}

pub(crate) fn verdict_to_wit(verdict: Result<Request, Response>) -> WitVerdict {
    match verdict {
        Ok(request) => WitVerdict::Pass(request.to_wit()),
        Err(response) => WitVerdict::Refuse(response.to_wit()),
    }
}

pub fn get_connection_tags<P: Party>(conn: String, request: WitRequest) -> Vec<String> {
    let ctx = ConnectionContext { request: Request::from_wit(request) };
    party::<P>().get_connection_tags(&Connection::new(conn), &ctx)
}

pub fn resume(fetch: u64, result: Result<WitResponse, String>) {
    crate::executor::resume(fetch, result);
}
