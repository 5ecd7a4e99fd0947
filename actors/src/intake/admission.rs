//! A trigger's `max_in_flight`: jobs count from admission to settlement, and an event is admitted
//! only when all of its jobs fit.
//!
//! A pushed request takes one slot when it is admitted and grows its [`Reservation`] to its
//! number of jobs once the preprocessor has run; both steps are compare-and-swap, so a burst of
//! simultaneous requests can never hold more than `max_in_flight` slots between them. Pulled
//! sources wait for a free slot before they pull, then take what their batch needs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The in-flight counter of one trigger, shared by all its reservations and job handles.
#[derive(Debug, Clone)]
pub struct InFlight {
    count: Arc<AtomicUsize>,
    max: usize,
}

impl InFlight {
    pub fn new(max: usize) -> Self {
        Self {
            count: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// The shared counter (what the API and metrics read).
    pub fn counter(&self) -> Arc<AtomicUsize> {
        self.count.clone()
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn current(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub fn has_room(&self) -> bool {
        self.current() < self.max
    }

    /// Takes `n` slots if they all fit under `max`.
    pub fn try_reserve(&self, n: usize) -> Option<Reservation> {
        self.try_add(n).then(|| Reservation {
            count: self.count.clone(),
            held: n,
        })
    }

    /// Takes `n` slots whether or not they fit (a pulled batch already read from its source).
    pub fn reserve(&self, n: usize) -> Reservation {
        self.count.fetch_add(n, Ordering::AcqRel);
        Reservation {
            count: self.count.clone(),
            held: n,
        }
    }

    fn try_add(&self, n: usize) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                (c.saturating_add(n) <= self.max).then_some(c + n)
            })
            .is_ok()
    }
}

/// Slots held for one event until its jobs take them over; what is left is released on drop.
#[derive(Debug)]
pub struct Reservation {
    count: Arc<AtomicUsize>,
    held: usize,
}

impl Reservation {
    pub fn held(&self) -> usize {
        self.held
    }

    /// Holds `n` slots in all: more are taken if they fit under `max` (`false` when they do
    /// not), or taken regardless when `force`; extra ones are released.
    pub fn resize(&mut self, n: usize, max: usize, force: bool) -> bool {
        if n <= self.held {
            self.count.fetch_sub(self.held - n, Ordering::AcqRel);
            self.held = n;
            return true;
        }
        let extra = n - self.held;
        let ok = force
            || self
                .count
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
                    (c.saturating_add(extra) <= max).then_some(c + extra)
                })
                .is_ok();
        if force {
            self.count.fetch_add(extra, Ordering::AcqRel);
        }
        if ok {
            self.held = n;
        }
        ok
    }

    /// Hands one slot over to a job: the counter it returns is decremented by whoever holds the
    /// job's acknowledgement when it lets go of it.
    pub fn take_one(&mut self) -> Arc<AtomicUsize> {
        if self.held == 0 {
            // More jobs than reserved (should not happen): count it rather than underflow later.
            self.count.fetch_add(1, Ordering::AcqRel);
        } else {
            self.held -= 1;
        }
        self.count.clone()
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held > 0 {
            self.count.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_never_exceed_max_and_release_on_drop() {
        let f = InFlight::new(5);
        let mut a = f.try_reserve(1).unwrap();
        assert!(a.resize(4, f.max(), false));
        assert_eq!(f.current(), 4);
        let b = f.try_reserve(1).unwrap();
        assert!(f.try_reserve(1).is_none());
        let mut c = f.reserve(2);
        assert_eq!(f.current(), 7);
        drop(b);
        assert!(!a.resize(6, f.max(), false), "only 5 - 6 left");
        let slot = c.take_one();
        drop(c);
        assert_eq!(f.current(), 5);
        slot.fetch_sub(1, Ordering::AcqRel);
        drop(a);
        assert_eq!(f.current(), 0);
    }

    #[test]
    fn a_burst_of_reservations_from_many_threads_stays_within_max() {
        let f = InFlight::new(5);
        let held: Vec<_> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..100).map(|_| s.spawn(|| f.try_reserve(1))).collect();
            handles
                .into_iter()
                .filter_map(|h| h.join().unwrap())
                .collect()
        });
        assert_eq!(held.len(), 5);
        assert_eq!(f.current(), 5);
    }
}
