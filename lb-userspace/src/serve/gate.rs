//! How many API connections are open at once, and which one goes when there are too many.
//!
//! The API shares the daemon's file descriptors with the health checks: a client that
//! opens connections and sends nothing (or one byte a second) must not be able to hold
//! them all. At most [`Limits::connections`] are open; a new one beyond that takes the
//! place of the oldest connection that is waiting for a request head (a slow or idle
//! client: a real one sends its head at once and reconnects if idle), or, when every open
//! connection is in a request, is closed at once. Both are counted.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::sync::oneshot;

/// The API server's bounds.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most.
    pub connections: usize,
    /// From the first byte of a request head (or a connection's start) to its end.
    pub header_timeout: Duration,
    /// From a request's head to its whole response.
    pub request_timeout: Duration,
    /// A connection's whole life (keep-alive included).
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            connections: 256,
            header_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            connection_lifetime: Duration::from_secs(300),
        }
    }
}

/// The open connections.
pub struct Gate {
    max: usize,
    state: Mutex<State>,
    /// Connections closed at once or closed to make room.
    turned_away: AtomicU64,
}

#[derive(Default)]
struct State {
    open: usize,
    next: u64,
    /// Open connections waiting for a request head, oldest first.
    waiting: VecDeque<Waiter>,
}

/// A connection waiting for a request head, and how to close it.
struct Waiter {
    id: u64,
    counted: Arc<AtomicBool>,
    close: oneshot::Sender<()>,
}

/// One open connection's place; gives it back when dropped.
pub struct Slot {
    gate: Arc<Gate>,
    id: u64,
    /// Still counted in `open` (false once evicted: the eviction gave the place back).
    counted: Arc<AtomicBool>,
}

/// A connection admitted: its place, and what says it must close to make room.
pub struct Admitted {
    pub slot: Slot,
    pub evicted: oneshot::Receiver<()>,
}

impl Gate {
    pub fn new(max: usize) -> Arc<Gate> {
        Arc::new(Gate {
            max: max.max(1),
            state: Mutex::default(),
            turned_away: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection (waiting for its first head), or `None`: close it.
    pub fn admit(self: &Arc<Gate>) -> Option<Admitted> {
        let mut s = self.lock();
        if s.open >= self.max {
            self.turned_away.fetch_add(1, Ordering::Relaxed);
            let oldest = loop {
                let w = s.waiting.pop_front()?;
                if w.counted.load(Ordering::Relaxed) {
                    break w;
                }
            };
            // Its place is ours from now; its task ends when it sees the signal.
            oldest.counted.store(false, Ordering::Relaxed);
            let _ = oldest.close.send(());
            s.open -= 1;
        }
        s.open += 1;
        s.next += 1;
        let id = s.next;
        let (close, evicted) = oneshot::channel();
        let counted = Arc::new(AtomicBool::new(true));
        s.waiting.push_back(Waiter {
            id,
            counted: counted.clone(),
            close,
        });
        drop(s);
        Some(Admitted {
            slot: Slot {
                gate: self.clone(),
                id,
                counted,
            },
            evicted,
        })
    }

    /// Connections closed at once or to make room, since the start.
    pub fn turned_away(&self) -> u64 {
        self.turned_away.load(Ordering::Relaxed)
    }

    pub fn open(&self) -> usize {
        self.lock().open
    }
}

impl Slot {
    /// The connection is in a request: not to be closed for room until `Busy` drops
    /// (then it waits for its next head again, as the newest).
    pub fn busy(&self) -> Busy {
        let mut s = self.gate.lock();
        let waiter = s
            .waiting
            .iter()
            .position(|w| w.id == self.id)
            .and_then(|i| s.waiting.remove(i));
        Busy {
            gate: self.gate.clone(),
            waiter,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut s = self.gate.lock();
        s.waiting.retain(|w| w.id != self.id);
        if self.counted.swap(false, Ordering::Relaxed) {
            s.open -= 1;
        }
    }
}

/// A connection in a request.
pub struct Busy {
    gate: Arc<Gate>,
    waiter: Option<Waiter>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(w) = self.waiter.take() {
            let mut s = self.gate.lock();
            // Unless the connection has ended meanwhile.
            if w.counted.load(Ordering::Relaxed) {
                s.waiting.push_back(w);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oldest_waiting_connection_makes_room() {
        let gate = Gate::new(2);
        let mut a = gate.admit().unwrap();
        let b = gate.admit().unwrap();
        let busy_b = b.slot.busy();
        let c = gate.admit().expect("a's place");
        assert!(a.evicted.try_recv().is_ok(), "a was told to close");
        assert_eq!((gate.open(), gate.turned_away()), (2, 1));
        drop(a);
        assert_eq!(gate.open(), 2, "a's place was given to c already");
        let _busy_c = c.slot.busy();
        assert!(gate.admit().is_none(), "both are in a request");
        assert_eq!(gate.turned_away(), 2);
        drop(busy_b);
        let mut b_evicted = b.evicted;
        let _d = gate.admit().expect("b waits again");
        assert!(b_evicted.try_recv().is_ok());
        drop(b.slot);
        assert_eq!(gate.open(), 2);
    }
}
