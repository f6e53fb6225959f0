//! The controller's inbox: two queues, so that observers cannot starve what changes the
//! datapath.
//!
//! - **Changes** (health, reload, weight, stop) are few (one health forwarder, signals,
//!   operators) and are always taken first.
//! - **Observers** (snapshots for `/metrics` and the API, simulations) come from anyone
//!   who can reach the API: their queue holds at most [`OBSERVER_QUEUE`] requests, and a
//!   request beyond that is refused at once ([`SendError::Busy`], HTTP 503) instead of
//!   waiting behind thousands of others.
//!
//! A health change waits at most for the request being handled when it arrives.

use std::{
    collections::VecDeque,
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Condvar, Mutex, MutexGuard,
    },
    time::{Duration, Instant},
};

use super::requests::Request;

/// Observer requests queued at most; more are refused (`Busy`).
pub const OBSERVER_QUEUE: usize = 256;

/// Why a request was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The observers' queue is full: try again later.
    Busy,
    /// The controller has stopped.
    Stopped,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::Busy => "the controller is busy (too many status requests queued)",
            SendError::Stopped => "the controller is stopping",
        })
    }
}

/// Why nothing was received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecvError {
    Timeout,
    /// Every [`Handle`] is gone.
    Disconnected,
}

#[derive(Default)]
struct Queues {
    changes: VecDeque<Request>,
    observers: VecDeque<Request>,
    handles: usize,
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queues: Mutex<Queues>,
    arrived: Condvar,
    /// Observer requests refused because their queue was full.
    refused: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queues> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The sending side, cloned into the API, the signal handler and the health forwarder.
pub struct Handle {
    shared: Arc<Shared>,
}

/// The controller's receiving side.
pub struct Inbox {
    shared: Arc<Shared>,
}

/// A new inbox and its first handle.
pub fn channel() -> (Handle, Inbox) {
    let shared = Arc::new(Shared::default());
    shared.lock().handles = 1;
    (
        Handle {
            shared: shared.clone(),
        },
        Inbox { shared },
    )
}

fn is_observer(r: &Request) -> bool {
    matches!(r, Request::Snapshot(_) | Request::Simulate { .. })
}

impl Handle {
    /// Queues `request`: a change always (unless the controller has stopped), an observer
    /// only while its queue has room.
    pub fn send(&self, request: Request) -> Result<(), SendError> {
        let mut q = self.shared.lock();
        if q.closed {
            return Err(SendError::Stopped);
        }
        if is_observer(&request) {
            if q.observers.len() >= OBSERVER_QUEUE {
                self.shared.refused.fetch_add(1, Ordering::Relaxed);
                return Err(SendError::Busy);
            }
            q.observers.push_back(request);
        } else {
            q.changes.push_back(request);
        }
        drop(q);
        self.shared.arrived.notify_one();
        Ok(())
    }
}

impl Clone for Handle {
    fn clone(&self) -> Handle {
        self.shared.lock().handles += 1;
        Handle {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.handles -= 1;
        if q.handles == 0 {
            drop(q);
            self.shared.arrived.notify_all();
        }
    }
}

impl Inbox {
    /// The next request, changes first; waits at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<Request, RecvError> {
        let until = Instant::now() + timeout;
        let mut q = self.shared.lock();
        loop {
            if let Some(r) = q.changes.pop_front().or_else(|| q.observers.pop_front()) {
                return Ok(r);
            }
            if q.handles == 0 {
                return Err(RecvError::Disconnected);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecvError::Timeout);
            }
            q = self
                .shared
                .arrived
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Observer requests refused so far because their queue was full.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let mut q = self.shared.lock();
        q.closed = true;
        // Their reply channels close: the waiting callers learn that it stopped.
        q.changes.clear();
        q.observers.clear();
    }
}

/// What serves the inbox: the controller, or a stand-in in tests.
pub(super) trait Serves {
    /// Answers one request (never `Stop`).
    fn handle(&mut self, request: Request);
    /// Runs the timers that are due; returns when the next one is.
    fn timers(&mut self) -> Instant;
    fn stop(&mut self, keep_datapath: bool);
}

/// Serves requests until `Stop` (or until every handle is gone: a plain stop). A request
/// that panics (a bug) is logged and the loop goes on: the daemon keeps forwarding with
/// what the maps hold.
pub(super) fn serve(s: &mut impl Serves, inbox: &Inbox) {
    let mut wake = s.timers();
    loop {
        match inbox.recv_timeout(wake.saturating_duration_since(Instant::now())) {
            Ok(Request::Stop {
                keep_datapath,
                reply,
            }) => {
                s.stop(keep_datapath);
                let _ = reply.send(());
                return;
            }
            Ok(request) => {
                if let Err(panic) = crate::util::panic::contain(|| s.handle(request)) {
                    tracing::error!("a request to the controller failed on a bug ({panic}); the controller goes on, please report it");
                }
            }
            Err(RecvError::Timeout) => {}
            Err(RecvError::Disconnected) => {
                s.stop(false);
                return;
            }
        }
        wake = s.timers();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::mpsc, thread};

    use tokio::sync::oneshot;

    use super::*;
    use crate::health::HealthMap;

    /// A controller whose snapshots take `cost` each (a daemon with many services), and
    /// which says when it applies a health change.
    struct Slow {
        cost: Duration,
        applied: mpsc::Sender<Instant>,
        snapshots: usize,
    }

    impl Serves for Slow {
        fn handle(&mut self, request: Request) {
            match request {
                Request::Snapshot(reply) => {
                    thread::sleep(self.cost);
                    self.snapshots += 1;
                    drop(reply);
                }
                Request::Health(_) => self.applied.send(Instant::now()).unwrap(),
                _ => unreachable!(),
            }
        }
        fn timers(&mut self) -> Instant {
            Instant::now() + Duration::from_secs(3600)
        }
        fn stop(&mut self, _: bool) {}
    }

    fn snapshot_request() -> Request {
        Request::Snapshot(oneshot::channel().0)
    }

    /// 2,000 snapshot requests at once (as many concurrent `/metrics`), each costing the
    /// controller 1 ms, then a health change: it is applied within 200 ms (with one FIFO
    /// queue it waited for the whole flood, about 2 s), and the requests beyond the
    /// observers' queue are refused at once.
    #[test]
    fn a_health_change_overtakes_a_flood_of_snapshots() {
        let (handle, inbox) = channel();
        let (applied_tx, applied) = mpsc::channel();
        let controller = thread::spawn(move || {
            let mut slow = Slow {
                cost: Duration::from_millis(1),
                applied: applied_tx,
                snapshots: 0,
            };
            serve(&mut slow, &inbox);
            (slow.snapshots, inbox.refused())
        });
        let flooders: Vec<_> = (0..8)
            .map(|_| {
                let h = handle.clone();
                thread::spawn(move || {
                    let mut busy = 0;
                    for _ in 0..250 {
                        if h.send(snapshot_request()) == Err(SendError::Busy) {
                            busy += 1;
                        }
                    }
                    busy
                })
            })
            .collect();
        let busy: usize = flooders.into_iter().map(|f| f.join().unwrap()).sum();
        let sent = Instant::now();
        handle.send(Request::Health(HealthMap::new())).unwrap();
        let took = applied.recv().unwrap() - sent;
        assert!(took < Duration::from_millis(200), "applied after {took:?}");
        let (reply, stopped) = oneshot::channel();
        handle
            .send(Request::Stop {
                keep_datapath: false,
                reply,
            })
            .unwrap();
        let (snapshots, refused) = controller.join().unwrap();
        stopped.blocking_recv().unwrap();
        assert!(busy >= 2000 - 2 * OBSERVER_QUEUE, "{busy} refused");
        assert_eq!(refused, busy as u64);
        assert!(snapshots <= OBSERVER_QUEUE + 1, "{snapshots} served");
    }

    /// A request that panics does not end the loop: the next ones are served.
    #[test]
    fn a_panicking_request_leaves_the_controller_serving() {
        struct Fragile(mpsc::Sender<&'static str>);
        impl Serves for Fragile {
            fn handle(&mut self, request: Request) {
                match request {
                    Request::Reload(_) => panic!("a bug in a reload"),
                    _ => self.0.send("served").unwrap(),
                }
            }
            fn timers(&mut self) -> Instant {
                Instant::now() + Duration::from_secs(3600)
            }
            fn stop(&mut self, _: bool) {
                self.0.send("stopped").unwrap();
            }
        }
        let (handle, inbox) = channel();
        let (tx, rx) = mpsc::channel();
        let controller = thread::spawn(move || serve(&mut Fragile(tx), &inbox));
        handle.send(Request::Reload(oneshot::channel().0)).unwrap();
        handle.send(snapshot_request()).unwrap();
        assert_eq!(rx.recv().unwrap(), "served");
        drop(handle);
        assert_eq!(rx.recv().unwrap(), "stopped");
        controller.join().unwrap();
    }
}
