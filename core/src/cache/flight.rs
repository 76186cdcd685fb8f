//! Single-flight: one origin fetch per cache key per isolate.
//!
//! The first request to need a key becomes the leader and starts the fetch
//! (under `wait_until` in the Worker, so a disconnecting client cannot cancel
//! it); every concurrent request for the same key becomes a follower and
//! waits for the leader's outcome.
//!
//! What crosses between requests is only plain data: the outcome is written
//! into a shared cell. A waiting request registers a [`Wake`] created by
//! its *own* request (in the Worker: the resolver of its own promise, which
//! it races with its own timer; see [`crate::ports::Signals`]); publishing
//! the outcome calls every registered wake. Nothing here holds a Rust waker,
//! a channel or a future that one request completes for another, because
//! workerd ties every promise to the request that created it: a follower
//! woken by the leader's future would resume inside the leader's request
//! (`docs/design.md` §2).
//!
//! The leader's [`LeaderGuard`] removes the map entry when the load ends,
//! success or failure, and also when it is dropped without an outcome, so a
//! failed or cancelled load never poisons later requests.
//!
//! A flight joined with [`Flights::join_for`] has a maximum lifetime. Past
//! it the flight is dead even if its leader never finished (a fetch that
//! ignored its timeout): the next request to join becomes the leader of a
//! new flight, and waiters stop waiting ([`FlightHandle::expires_at`]).
//! Every flight is identified by its own cell, not by its key, so the old
//! leader's late outcome lands in the old cell only, and its guard never
//! removes the newer flight.

use std::cell::{Cell as StdCell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use crate::ports::Wake;

struct Cell<T> {
    key: String,
    started_at: u64,
    expires_at: u64,
    nothing_stored: StdCell<bool>,
    outcome: RefCell<Option<Rc<T>>>,
    waiters: RefCell<Vec<(u64, Wake)>>,
    next_waiter: StdCell<u64>,
}

impl<T> Cell<T> {
    /// Calls every registered wake (outside any borrow: a wake may re-enter).
    fn wake_all(&self) {
        let waiters = std::mem::take(&mut *self.waiters.borrow_mut());
        for (_, wake) in waiters {
            wake();
        }
    }
}

/// A follower's view of a flight: poll [`FlightHandle::outcome`].
pub struct FlightHandle<T> {
    cell: Rc<Cell<T>>,
}

impl<T> Clone for FlightHandle<T> {
    fn clone(&self) -> Self {
        FlightHandle {
            cell: Rc::clone(&self.cell),
        }
    }
}

impl<T> FlightHandle<T> {
    /// The leader's outcome, once it has one.
    pub fn outcome(&self) -> Option<Rc<T>> {
        self.cell.outcome.borrow().clone()
    }

    /// When the leader started (ms).
    pub fn started_at(&self) -> u64 {
        self.cell.started_at
    }

    /// When the flight is considered dead if it has no outcome yet (ms;
    /// `u64::MAX` for a flight without a lifetime).
    pub fn expires_at(&self) -> u64 {
        self.cell.expires_at
    }

    /// Whether the leader found no usable stored copy before it started
    /// (see [`LeaderGuard::set_nothing_stored`]).
    pub fn nothing_stored(&self) -> bool {
        self.cell.nothing_stored.get()
    }

    /// Registers `wake` to be called when the outcome is published or the
    /// flight is abandoned. Returns an id for [`FlightHandle::remove_waiter`].
    pub fn add_waiter(&self, wake: Wake) -> u64 {
        let id = self.cell.next_waiter.get();
        self.cell.next_waiter.set(id + 1);
        self.cell.waiters.borrow_mut().push((id, wake));
        id
    }

    /// Forgets a waiter that stopped waiting (it timed out).
    pub fn remove_waiter(&self, id: u64) {
        self.cell.waiters.borrow_mut().retain(|(i, _)| *i != id);
    }

    /// Number of registered waiters.
    pub fn waiters(&self) -> usize {
        self.cell.waiters.borrow().len()
    }
}

/// The in-flight loads of one isolate.
pub struct Flights<T> {
    map: RefCell<HashMap<String, Rc<Cell<T>>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights {
            map: RefCell::new(HashMap::new()),
        }
    }
}

/// The result of [`Flights::join`].
pub enum Join<T> {
    /// This request must perform the load and complete the guard.
    Leader(LeaderGuard<T>),
    /// Another request is loading; poll the handle.
    Follower(FlightHandle<T>),
}

impl<T> Flights<T> {
    /// An empty map.
    pub fn new() -> Rc<Self> {
        Rc::new(Self::default())
    }

    /// Becomes the leader for `key`, or a follower of the current leader.
    /// The flight lives until its leader ends it.
    pub fn join(self: &Rc<Self>, key: &str, now: u64) -> Join<T> {
        self.join_for(key, now, u64::MAX)
    }

    /// Like [`Flights::join`], but a new flight is dead `lifetime_ms` after
    /// it started, and a dead flight is replaced: this request then leads a
    /// new one (the old one's waiters are woken and see it gone).
    pub fn join_for(self: &Rc<Self>, key: &str, now: u64, lifetime_ms: u64) -> Join<T> {
        let mut map = self.map.borrow_mut();
        if let Some(cell) = map.get(key) {
            if now < cell.expires_at {
                return Join::Follower(FlightHandle {
                    cell: Rc::clone(cell),
                });
            }
            let dead = Rc::clone(cell);
            map.remove(key);
            drop(map);
            dead.wake_all();
            map = self.map.borrow_mut();
        }
        let cell = Rc::new(Cell {
            key: key.to_owned(),
            started_at: now,
            expires_at: now.saturating_add(lifetime_ms),
            nothing_stored: StdCell::new(false),
            outcome: RefCell::new(None),
            waiters: RefCell::new(Vec::new()),
            next_waiter: StdCell::new(0),
        });
        map.insert(key.to_owned(), Rc::clone(&cell));
        Join::Leader(LeaderGuard {
            flights: Rc::clone(self),
            key: key.to_owned(),
            cell,
            done: false,
        })
    }

    /// Whether a load of `key` is in flight (possibly past its lifetime).
    pub fn in_flight(&self, key: &str) -> bool {
        self.map.borrow().contains_key(key)
    }

    /// The flight of `key`, if one is in flight and not past its lifetime.
    pub fn current(&self, key: &str, now: u64) -> Option<FlightHandle<T>> {
        self.map
            .borrow()
            .get(key)
            .filter(|c| now < c.expires_at)
            .map(|c| FlightHandle { cell: Rc::clone(c) })
    }

    /// Whether the flight behind `handle` is still running. A handle with no
    /// outcome whose flight is gone was abandoned by its leader.
    pub fn is_live(&self, handle: &FlightHandle<T>) -> bool {
        self.map
            .borrow()
            .get(&handle.cell.key)
            .is_some_and(|c| Rc::ptr_eq(c, &handle.cell))
    }

    /// Number of loads in flight.
    pub fn len(&self) -> usize {
        self.map.borrow().len()
    }

    /// Whether no load is in flight.
    pub fn is_empty(&self) -> bool {
        self.map.borrow().is_empty()
    }

    fn remove(&self, key: &str, cell: &Rc<Cell<T>>) {
        let mut map = self.map.borrow_mut();
        // Only remove our own cell: never a newer flight for the same key.
        if map.get(key).is_some_and(|c| Rc::ptr_eq(c, cell)) {
            map.remove(key);
        }
    }
}

/// The leader's obligation to publish an outcome. Dropping it without
/// calling [`LeaderGuard::complete`] removes the entry and wakes every
/// waiter: they see no outcome and a dead flight, and stop waiting.
pub struct LeaderGuard<T> {
    flights: Rc<Flights<T>>,
    key: String,
    cell: Rc<Cell<T>>,
    done: bool,
}

impl<T> LeaderGuard<T> {
    /// The key being loaded.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Records that the store held no usable copy when this load started,
    /// so that requests joining the flight need not look there again.
    pub fn set_nothing_stored(&self) {
        self.cell.nothing_stored.set(true);
    }

    /// A handle the leader itself can poll like a follower.
    pub fn handle(&self) -> FlightHandle<T> {
        FlightHandle {
            cell: Rc::clone(&self.cell),
        }
    }

    /// Publishes the outcome to followers without ending the flight: requests
    /// that arrive meanwhile still join it (and see the outcome at once)
    /// instead of starting another fetch. Used while the write-back runs.
    pub fn publish(&self, outcome: T) -> Rc<T> {
        let outcome = Rc::new(outcome);
        *self.cell.outcome.borrow_mut() = Some(Rc::clone(&outcome));
        self.cell.wake_all();
        outcome
    }

    /// Publishes the outcome to followers and ends the flight.
    pub fn complete(mut self, outcome: T) -> Rc<T> {
        let outcome = Rc::new(outcome);
        *self.cell.outcome.borrow_mut() = Some(Rc::clone(&outcome));
        self.flights.remove(&self.key, &self.cell);
        self.done = true;
        self.cell.wake_all();
        outcome
    }
}

impl<T> Drop for LeaderGuard<T> {
    fn drop(&mut self) {
        if !self.done {
            self.flights.remove(&self.key, &self.cell);
            // Waiters see no outcome and a dead flight: they stop waiting.
            self.cell.wake_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_leader_many_followers_then_cleared() {
        let f: Rc<Flights<u32>> = Flights::new();
        let Join::Leader(lead) = f.join("k", 1) else {
            panic!("first joiner leads")
        };
        let followers: Vec<_> = (0..5)
            .map(|_| match f.join("k", 2) {
                Join::Follower(h) => h,
                Join::Leader(_) => panic!("second joiner must follow"),
            })
            .collect();
        assert!(followers.iter().all(|h| h.outcome().is_none()));
        assert!(f.in_flight("k"));
        lead.publish(7);
        assert!(f.in_flight("k"), "published but still open");
        let Join::Follower(late) = f.join("k", 3) else {
            panic!("a late joiner follows the open flight")
        };
        assert_eq!(late.outcome().as_deref(), Some(&7));
        drop(lead);
        assert!(!f.in_flight("k"));
        assert!(followers.iter().all(|h| h.outcome().as_deref() == Some(&7)));
        assert_eq!(followers[0].started_at(), 1);
        // The next load of the key starts a fresh flight.
        assert!(matches!(f.join("k", 4), Join::Leader(_)));
    }

    #[test]
    fn waiters_are_woken_once_and_removable() {
        let f: Rc<Flights<u32>> = Flights::new();
        let Join::Leader(lead) = f.join("k", 0) else {
            unreachable!()
        };
        let Join::Follower(h) = f.join("k", 0) else {
            unreachable!()
        };
        let woken = Rc::new(StdCell::new(0));
        for _ in 0..3 {
            let w = Rc::clone(&woken);
            h.add_waiter(Box::new(move || w.set(w.get() + 1)));
        }
        let gone = h.add_waiter(Box::new(|| panic!("removed waiters are never called")));
        h.remove_waiter(gone);
        lead.publish(1);
        assert_eq!(woken.get(), 3);
        assert_eq!(h.waiters(), 0);
        drop(lead);
        assert_eq!(woken.get(), 3, "woken once");
    }

    #[test]
    fn dropped_leader_does_not_poison() {
        let f: Rc<Flights<u32>> = Flights::new();
        let lead = match f.join("k", 0) {
            Join::Leader(l) => l,
            Join::Follower(_) => unreachable!(),
        };
        let Join::Follower(h) = f.join("k", 0) else {
            unreachable!()
        };
        assert!(f.is_live(&h));
        drop(lead);
        assert!(!f.is_live(&h));
        assert!(f.is_empty());
        assert!(h.outcome().is_none());
        assert!(matches!(f.join("k", 1), Join::Leader(_)));
    }

    #[test]
    fn a_flight_past_its_lifetime_is_replaced_and_its_late_outcome_stays_put() {
        let f: Rc<Flights<u32>> = Flights::new();
        let Join::Leader(old) = f.join_for("k", 0, 100) else {
            unreachable!()
        };
        let Join::Follower(h) = f.join_for("k", 99, 100) else {
            panic!("alive until its lifetime ends")
        };
        assert_eq!(h.expires_at(), 100);
        assert!(f.current("k", 99).is_some() && f.current("k", 100).is_none());
        let woken = Rc::new(StdCell::new(false));
        let w = Rc::clone(&woken);
        h.add_waiter(Box::new(move || w.set(true)));
        let Join::Leader(new) = f.join_for("k", 100, 100) else {
            panic!("a dead flight is replaced")
        };
        assert!(woken.get(), "the dead flight's waiters are woken");
        assert!(!f.is_live(&h));
        // The old leader finishes late: its outcome goes to its own cell.
        old.complete(1);
        assert!(f.in_flight("k"), "the new flight is untouched");
        let Join::Follower(h2) = f.join_for("k", 150, 100) else {
            panic!("the new flight leads")
        };
        assert!(h2.outcome().is_none());
        new.publish(2);
        assert_eq!(h2.outcome().as_deref(), Some(&2));
        assert_eq!(h.outcome().as_deref(), Some(&1));
    }

    #[test]
    fn stale_guard_never_removes_a_newer_flight() {
        let f: Rc<Flights<u32>> = Flights::new();
        let Join::Leader(old) = f.join("k", 0) else {
            unreachable!()
        };
        // Simulate the old flight's entry having been replaced.
        f.map.borrow_mut().remove("k");
        let Join::Leader(new) = f.join("k", 1) else {
            unreachable!()
        };
        drop(old);
        assert!(f.in_flight("k"));
        new.complete(1);
        assert!(!f.in_flight("k"));
    }
}
