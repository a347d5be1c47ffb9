//! Awaiting several futures at once, like `Promise.all`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Runs every future concurrently and returns their outputs in order. Use it
/// to send several [`Room::fetch`](crate::Room::fetch)es at once.
pub async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    JoinAll { slots: futures.into_iter().map(|f| Slot::Running(Box::pin(f))).collect() }.await
}

enum Slot<F: Future> {
    Running(Pin<Box<F>>),
    Done(Option<F::Output>),
}

struct JoinAll<F: Future> {
    slots: Vec<Slot<F>>,
}

// Each future is boxed, so moving the `JoinAll` never moves one.
impl<F: Future> Unpin for JoinAll<F> {}

impl<F: Future> Future for JoinAll<F> {
    type Output = Vec<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut pending = false;
        for slot in &mut self.slots {
            if let Slot::Running(future) = slot {
                match future.as_mut().poll(cx) {
                    Poll::Ready(output) => *slot = Slot::Done(Some(output)),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            return Poll::Pending;
        }
        let outputs = self.slots.iter_mut().filter_map(|slot| match slot {
            Slot::Done(output) => output.take(),
            Slot::Running(_) => None,
        });
        Poll::Ready(outputs.collect())
    }
}
