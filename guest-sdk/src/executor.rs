//! A tiny single-threaded executor: how a handler awaits a fetch without
//! blocking the room.
//!
//! Each handler call becomes a task, polled once at once. If it completes,
//! the call returns its result. If it awaits a fetch, the task is parked
//! here under the host's task id and the call returns; the host goes on
//! with other events. When the fetch's response arrives, the host calls
//! `resume`, which wakes exactly the task waiting on that fetch. A parked
//! `on_request` reports its response with `tasks::complete-request`, a
//! parked gate its verdict with `tasks::complete-gate`.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::bindings::partyhost::party::{tasks, types::Response as WitResponse};
use crate::{Request, Response};

/// What a finished task hands back to the host.
pub(crate) enum Done {
    /// An event handler: nothing.
    Nothing,
    /// `on_request`'s response.
    Response(Response),
    /// A gate's verdict: the request to pass on, or the response instead.
    Verdict(Result<Request, Response>),
}

type TaskFuture = Pin<Box<dyn Future<Output = Done>>>;

#[derive(Default)]
struct Executor {
    /// Parked tasks by host task id.
    parked: HashMap<u64, TaskFuture>,
    /// Which task awaits which fetch.
    waiting: HashMap<u64, u64>,
    /// Responses that arrived before their future was polled again.
    arrived: HashMap<u64, Result<WitResponse, String>>,
    /// The task being polled right now.
    current: Option<u64>,
}

thread_local! {
    static EXECUTOR: RefCell<Executor> = RefCell::new(Executor::default());
}

/// Runs a new task. Returns its output if it finished without parking.
pub(crate) fn spawn(task: u64, future: TaskFuture) -> Option<Done> {
    poll_task(task, future)
}

/// Delivers a fetch's result and runs the task waiting for it.
pub(crate) fn resume(fetch: u64, result: Result<WitResponse, String>) {
    let parked = EXECUTOR.with_borrow_mut(|e| {
        // No waiter: the future that started the fetch was dropped.
        let task = e.waiting.remove(&fetch)?;
        e.arrived.insert(fetch, result);
        Some((task, e.parked.remove(&task)?))
    });
    let Some((task, future)) = parked else { return };
    match poll_task(task, future) {
        Some(Done::Response(response)) => tasks::complete_request(task, &response.to_wit()),
        Some(Done::Verdict(verdict)) => {
            tasks::complete_gate(task, &crate::__private::verdict_to_wit(verdict))
        }
        Some(Done::Nothing) | None => {}
    }
}

/// Polls once; parks the task if it is not done.
fn poll_task(task: u64, mut future: TaskFuture) -> Option<Done> {
    EXECUTOR.with_borrow_mut(|e| e.current = Some(task));
    // Nothing wakes tasks but `resume`, so the waker does nothing.
    let poll = future.as_mut().poll(&mut Context::from_waker(Waker::noop()));
    EXECUTOR.with_borrow_mut(|e| {
        e.current = None;
        match poll {
            Poll::Ready(output) => Some(output),
            Poll::Pending => {
                e.parked.insert(task, future);
                None
            }
        }
    })
}

/// Resolves when the host resumes fetch `id`.
pub(crate) struct FetchFuture {
    id: u64,
}

impl FetchFuture {
    pub(crate) fn new(id: u64) -> Self {
        Self { id }
    }
}

impl Future for FetchFuture {
    type Output = Result<WitResponse, String>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        EXECUTOR.with_borrow_mut(|e| {
            if let Some(result) = e.arrived.remove(&self.id) {
                return Poll::Ready(result);
            }
            match e.current {
                Some(task) => {
                    e.waiting.insert(self.id, task);
                    Poll::Pending
                }
                None => Poll::Ready(Err("a fetch was awaited outside a party handler".into())),
            }
        })
    }
}
