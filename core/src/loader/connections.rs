//! The platform's limit on simultaneous outgoing connections per request.
//!
//! A Worker request may hold only six outgoing connections at once; further
//! `fetch` calls wait inside the runtime, in no order we choose. A page with
//! more includes than that would let a late fragment take a connection
//! before an early one and delay the first bytes. [`GatedOrigin`] wraps the
//! origin port for one client request (background refreshes it starts
//! included, since they belong to the same request) and queues fetches past
//! the limit in the order they were asked for, which is document order:
//! the page's lookups start in document order.
//!
//! Everything here lives inside one request, so a plain Rust waker is the
//! right tool (the cross-request rules of `docs/design.md` §2 do not apply).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use crate::ports::{LocalFuture, Origin, OriginError, OriginRequest, OriginResponse};

/// Outgoing connections a Worker request may hold at once.
pub const MAX_CONNECTIONS: usize = 6;

/// A first-come, first-served counting gate.
struct Gate {
    limit: usize,
    in_use: Cell<usize>,
    /// Waiting fetches, oldest first; `None` once granted.
    queue: RefCell<VecDeque<Rc<RefCell<Slot>>>>,
}

#[derive(Default)]
struct Slot {
    granted: bool,
    waker: Option<Waker>,
}

impl Gate {
    fn release(&self) {
        let next = self.queue.borrow_mut().pop_front();
        match next {
            // The connection passes straight to the next in line.
            Some(slot) => {
                let mut s = slot.borrow_mut();
                s.granted = true;
                if let Some(w) = s.waker.take() {
                    w.wake();
                }
            }
            None => self.in_use.set(self.in_use.get().saturating_sub(1)),
        }
    }
}

/// Holds one connection until dropped.
struct Permit(Rc<Gate>);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// Waits for a connection.
struct Acquire {
    gate: Rc<Gate>,
    slot: Option<Rc<RefCell<Slot>>>,
}

impl Future for Acquire {
    type Output = Permit;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Permit> {
        let gate = Rc::clone(&self.gate);
        match &self.slot {
            None => {
                if gate.in_use.get() < gate.limit && gate.queue.borrow().is_empty() {
                    gate.in_use.set(gate.in_use.get() + 1);
                    return Poll::Ready(Permit(gate));
                }
                let slot = Rc::new(RefCell::new(Slot {
                    granted: false,
                    waker: Some(cx.waker().clone()),
                }));
                gate.queue.borrow_mut().push_back(Rc::clone(&slot));
                self.slot = Some(slot);
                Poll::Pending
            }
            Some(slot) => {
                let mut s = slot.borrow_mut();
                if s.granted {
                    drop(s);
                    self.slot = None;
                    return Poll::Ready(Permit(gate));
                }
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        // A waiter that gives up (its page was abandoned) leaves the queue;
        // one that was granted a connection but never took it hands it on.
        if let Some(slot) = self.slot.take() {
            let granted = slot.borrow().granted;
            if granted {
                self.gate.release();
            } else {
                self.gate
                    .queue
                    .borrow_mut()
                    .retain(|s| !Rc::ptr_eq(s, &slot));
            }
        }
    }
}

/// The origin port for one client request, at most `limit` fetches at once.
pub struct GatedOrigin {
    inner: Rc<dyn Origin>,
    gate: Rc<Gate>,
}

impl GatedOrigin {
    /// Wraps `inner` for one request.
    pub fn wrap(inner: Rc<dyn Origin>, limit: usize) -> Rc<dyn Origin> {
        Rc::new(GatedOrigin {
            inner,
            gate: Rc::new(Gate {
                limit: limit.max(1),
                in_use: Cell::new(0),
                queue: RefCell::new(VecDeque::new()),
            }),
        })
    }
}

impl Origin for GatedOrigin {
    fn fetch(&self, req: OriginRequest) -> LocalFuture<Result<OriginResponse, OriginError>> {
        let acquire = Acquire {
            gate: Rc::clone(&self.gate),
            slot: None,
        };
        let inner = Rc::clone(&self.inner);
        Box::pin(async move {
            let _permit = acquire.await;
            inner.fetch(req).await
        })
    }
}
