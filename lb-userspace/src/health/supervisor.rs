//! The I/O shell: one tokio task per checked backend, attempts bounded by a semaphore,
//! results folded into a [`HealthMap`] published through a `watch` channel.

use std::{
    collections::HashMap,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use futures::FutureExt;
use tokio::{
    runtime::Handle,
    sync::{watch, Semaphore},
    task::JoinHandle,
};

use crate::config::{HealthCheck, InitialState, Service};

use super::{
    check::{Checker, Shared},
    schedule::{Machine, Rules, Transition},
    BackendHealth, BackendKey, HealthMap, Outcome,
};

/// Most attempts in flight at once, whatever the file-descriptor limit allows.
const MAX_IN_FLIGHT: usize = 4096;
/// File descriptors kept for everything else the process does.
const RESERVED_FDS: u64 = 256;

/// Runs the health checks of a configuration's services.
///
/// - [`HealthSupervisor::subscribe`]: a `watch` receiver that is marked changed whenever
///   what the datapath should do changes (a backend up or down, a dynamic weight), and
///   only then; its value is the whole map, counters included, as of its last change.
/// - [`HealthSupervisor::snapshot`]: the map with every counter as of now (for `status`
///   and metrics).
/// - [`HealthSupervisor::update`]: after a reload; unchanged backends keep their state and
///   schedule, changed checks keep the backend's state.
///
/// Dropping it stops every check.
pub struct HealthSupervisor {
    runtime: Handle,
    ctx: Arc<Ctx>,
    tasks: Mutex<HashMap<BackendKey, Running>>,
}

struct Running {
    /// Shared by the backends of one service (one copy per service and reload).
    check: Arc<HealthCheck>,
    task: JoinHandle<()>,
}

/// What every backend's task shares.
struct Ctx {
    shared: Shared,
    limiter: Semaphore,
    health: watch::Sender<HealthMap>,
    /// Per service: how many checked backends are up, for the "no backend is up" lines.
    services: Mutex<HashMap<String, ServiceCount>>,
}

#[derive(Clone, Debug, Default)]
struct ServiceCount {
    up: usize,
    total: usize,
    sorry_server: Option<SocketAddr>,
}

impl HealthSupervisor {
    /// Starts checking every backend of `services` that has a `health_check`, on
    /// `runtime`. First checks are spread over each service's interval.
    pub fn start(runtime: Handle, services: &[Service]) -> HealthSupervisor {
        let fds = raise_fd_limit();
        let in_flight = (fds.saturating_sub(RESERVED_FDS) / 2).clamp(16, MAX_IN_FLIGHT as u64);
        HealthSupervisor::start_with_limit(runtime, services, in_flight as usize)
    }

    /// Like [`HealthSupervisor::start`], with at most `max_in_flight` attempts at once.
    pub fn start_with_limit(
        runtime: Handle,
        services: &[Service],
        max_in_flight: usize,
    ) -> HealthSupervisor {
        let (health, _) = watch::channel(HealthMap::new());
        let supervisor = HealthSupervisor {
            runtime,
            ctx: Arc::new(Ctx {
                shared: Shared {
                    pinger: Default::default(),
                },
                limiter: Semaphore::new(max_in_flight.max(1)),
                health,
                services: Mutex::new(HashMap::new()),
            }),
            tasks: Mutex::new(HashMap::new()),
        };
        supervisor.update(services);
        supervisor
    }

    pub fn subscribe(&self) -> watch::Receiver<HealthMap> {
        self.ctx.health.subscribe()
    }

    pub fn snapshot(&self) -> HealthMap {
        self.ctx.health.borrow().clone()
    }

    /// Applies a new configuration: starts checks of new backends, stops those of removed
    /// ones, restarts changed checks (keeping the backend's up/down state).
    pub fn update(&self, services: &[Service]) {
        let desired = desired_checks(services);
        let now = Instant::now();
        let wall = SystemTime::now();
        let mut tasks = lock(&self.tasks);
        // A task that ended (it should not: panics are caught) is started again.
        tasks.retain(|key, running| {
            let keep = desired.get(key) == Some(&running.check) && !running.task.is_finished();
            if !keep {
                running.task.abort();
            }
            keep
        });
        let mut counts: HashMap<String, ServiceCount> = services
            .iter()
            .filter(|s| s.health_check.is_some())
            .map(|s| {
                let count = ServiceCount {
                    sorry_server: s.sorry_server,
                    ..Default::default()
                };
                (s.name.clone(), count)
            })
            .collect();
        // New and changed checks, first attempts spread over the interval per service.
        let mut starting: Vec<(&BackendKey, &Arc<HealthCheck>)> = desired
            .iter()
            .filter(|(key, _)| !tasks.contains_key(*key))
            .collect();
        starting.sort_by(|a, b| a.0.cmp(b.0));
        let mut per_service: HashMap<&str, (usize, usize)> = HashMap::new();
        for (key, _) in &starting {
            per_service.entry(key.service.as_str()).or_default().1 += 1;
        }
        // Receivers are told only when entries come or go.
        self.ctx.health.send_if_modified(|map| {
            let before = map.len();
            map.retain(|key, _| desired.contains_key(key));
            let mut modified = map.len() != before;
            for (key, check) in &starting {
                let known_up = map.get(*key).map(|h| h.up);
                let up = known_up.unwrap_or(check.initial_state == InitialState::Up);
                if !map.contains_key(*key) {
                    map.insert((*key).clone(), BackendHealth::new(up, wall));
                    modified = true;
                }
                let slot = per_service.get_mut(key.service.as_str()).expect("counted");
                let offset = check.interval.mul_f64(slot.0 as f64 / slot.1 as f64);
                slot.0 += 1;
                let initial = if up {
                    InitialState::Up
                } else {
                    InitialState::Down
                };
                let task = self.runtime.spawn(run_backend(
                    (*key).clone(),
                    HealthCheck::clone(check),
                    Checker::new(check, key),
                    Machine::new(Rules::of(check), initial, now + offset),
                    self.ctx.clone(),
                ));
                tasks.insert(
                    (*key).clone(),
                    Running {
                        check: (*check).clone(),
                        task,
                    },
                );
            }
            for (key, health) in map.iter() {
                if let Some(c) = counts.get_mut(&key.service) {
                    c.total += 1;
                    c.up += usize::from(health.up);
                }
            }
            modified
        });
        *lock(&self.ctx.services) = counts;
    }

    /// How many backends are being checked.
    pub fn checked(&self) -> usize {
        lock(&self.tasks).len()
    }
}

impl Drop for HealthSupervisor {
    fn drop(&mut self) {
        for (_, running) in lock(&self.tasks).drain() {
            running.task.abort();
        }
    }
}

/// Every checked backend of `services` with its check.
fn desired_checks(services: &[Service]) -> HashMap<BackendKey, Arc<HealthCheck>> {
    let mut out = HashMap::new();
    for svc in services {
        let Some(check) = &svc.health_check else {
            continue;
        };
        let check = Arc::new(check.clone());
        for b in &svc.backends {
            let key = BackendKey::new(&svc.name, b.address, b.port.unwrap_or(svc.port));
            out.insert(key, check.clone());
        }
    }
    out
}

/// One backend's checks, forever (until aborted). A panic does not end them: in an
/// attempt it is that attempt's failure ("checker panicked: ..."), in the bookkeeping
/// after it the attempt is forgotten; either way the next check runs an interval later.
async fn run_backend(
    key: BackendKey,
    check: HealthCheck,
    checker: Result<Checker, String>,
    mut machine: Machine,
    ctx: Arc<Ctx>,
) {
    let mut next = machine.first_attempt();
    let mut panics = 0u64;
    loop {
        tokio::time::sleep_until(next.into()).await;
        let Ok(permit) = ctx.limiter.acquire().await else {
            return;
        };
        let started = Instant::now();
        let attempt = async {
            match &checker {
                // Boxed: an attempt's state (TLS, buffers) is large and exists only while
                // it runs, so a waiting backend costs a few hundred bytes, not kilobytes.
                Ok(c) => Box::pin(c.attempt(&ctx.shared, check.timeout)).await,
                Err(why) => Outcome::Down(why.clone()),
            }
        };
        let outcome = match AssertUnwindSafe(attempt).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                panics += 1;
                let why = format!("checker panicked: {}", panic_message(panic.as_ref()));
                if panics == 1 || panics.is_multiple_of(100) {
                    tracing::error!("{key}: {why} ({panics} times so far)");
                }
                Outcome::Down(why)
            }
        };
        drop(permit);
        let ended = Instant::now();
        let bookkeeping = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let step = machine.record(ended, &outcome);
            ctx.record(&key, &check, &outcome, ended - started, step.transition);
            step.next_attempt
        }));
        next = bookkeeping.unwrap_or_else(|panic| {
            let why = panic_message(panic.as_ref());
            tracing::error!("{key}: recording a check panicked: {why}");
            ended + check.interval
        });
    }
}

/// What a panic said (its `&str` or `String` payload).
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    match (
        payload.downcast_ref::<&str>(),
        payload.downcast_ref::<String>(),
    ) {
        (Some(s), _) => s.to_string(),
        (_, Some(s)) => s.clone(),
        _ => "(no message)".to_string(),
    }
}

impl Ctx {
    /// Folds one attempt into the map; notifies subscribers on a transition.
    fn record(
        &self,
        key: &BackendKey,
        check: &HealthCheck,
        outcome: &Outcome,
        took: Duration,
        transition: Option<Transition>,
    ) {
        let now = SystemTime::now();
        let mut service_change = None;
        self.health.send_if_modified(|map| {
            let Some(h) = map.get_mut(key) else {
                return false; // removed by a reload meanwhile
            };
            h.attempts += 1;
            h.last_duration = Some(took);
            h.last_check = Some(now);
            h.durations.observe(took);
            if let Outcome::Down(reason) = outcome {
                h.failed_attempts += 1;
                h.last_failure = Some(reason.clone());
            }
            let Some(transition) = transition else {
                return false;
            };
            let addr = key.socket_addr();
            let svc = &key.service;
            match transition {
                Transition::Up { weight } => {
                    h.up = true;
                    h.weight_override = weight;
                    h.since = now;
                    let weight = weight.map(|w| format!(", weight {w}")).unwrap_or_default();
                    tracing::info!(
                        "{svc}: backend {addr} is up ({} successful checks{weight})",
                        check.rise
                    );
                    service_change = Some(true);
                }
                Transition::Down { reason } => {
                    h.up = false;
                    h.since = now;
                    let how = if check.inhibit_on_failure {
                        "weight 0 (inhibit_on_failure)"
                    } else {
                        "down"
                    };
                    tracing::warn!(
                        "{svc}: backend {addr} is {how} ({} failed checks): {reason}",
                        check.fall
                    );
                    service_change = Some(false);
                }
                Transition::Weight { from, to } => {
                    h.weight_override = Some(to);
                    let from = from.map_or("the configured one".to_string(), |w| w.to_string());
                    tracing::info!(
                        "{svc}: backend {addr} weight {to} (set by the check; was {from})"
                    );
                }
            }
            true
        });
        if let Some(up) = service_change {
            self.count_service(&key.service, up);
        }
    }

    /// Logs when a service loses its last backend, or gets one back.
    fn count_service(&self, service: &str, went_up: bool) {
        let mut services = lock(&self.services);
        let Some(c) = services.get_mut(service) else {
            return;
        };
        if went_up {
            c.up = (c.up + 1).min(c.total);
            if c.up == 1 {
                tracing::info!(
                    "{service}: a backend is up again; new connections go to the backends"
                );
            }
        } else {
            c.up = c.up.saturating_sub(1);
            if c.up == 0 {
                match c.sorry_server {
                    Some(sorry) => tracing::warn!(
                        "{service}: no backend is up; new connections go to the sorry server {sorry}"
                    ),
                    None => tracing::warn!(
                        "{service}: no backend is up; its packets are passed to the kernel (counted as no_backend)"
                    ),
                }
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Raises the soft limit on open files to the hard limit (each attempt in flight holds a
/// socket); returns the soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 1024;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
    }
    lim.rlim_cur
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::CheckType;

    fn test_ctx() -> Arc<Ctx> {
        let (health, _) = watch::channel(HealthMap::new());
        Arc::new(Ctx {
            shared: Shared {
                pinger: Default::default(),
            },
            limiter: Semaphore::new(1),
            health,
            services: Default::default(),
        })
    }

    /// Waits (at most 5 s) until the backend's health satisfies `done`.
    async fn wait_for(
        ctx: &Ctx,
        key: &BackendKey,
        what: &str,
        done: impl Fn(&BackendHealth) -> bool,
    ) -> BackendHealth {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let h = ctx.health.borrow()[key].clone();
            if done(&h) {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {what} within 5 s: {h:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn a_checker_that_panics_takes_its_backend_down_and_checks_go_on() {
        let key = BackendKey::new("web", "127.0.0.1".parse().unwrap(), 80);
        let check = HealthCheck {
            interval: Duration::from_millis(10),
            rise: 1,
            fall: 1,
            ..HealthCheck::new(CheckType::Tcp)
        };
        let ctx = test_ctx();
        ctx.health.send_modify(|map| {
            map.insert(key.clone(), BackendHealth::new(true, SystemTime::now()));
        });
        // Attempts 2 and 3 panic, the others succeed.
        let attempts = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counted = attempts.clone();
        let checker = Checker::Scripted(Box::new(move || {
            let n = counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
            if n == 2 || n == 3 {
                panic!("attempt {n} went wrong");
            }
            Outcome::Up
        }));
        let machine = Machine::new(Rules::of(&check), InitialState::Up, Instant::now());
        let task = tokio::spawn(run_backend(
            key.clone(),
            check,
            Ok(checker),
            machine,
            ctx.clone(),
        ));
        let h = wait_for(&ctx, &key, "down", |h| !h.up).await;
        assert_eq!(
            h.last_failure.as_deref(),
            Some("checker panicked: attempt 2 went wrong")
        );
        let h = wait_for(&ctx, &key, "up again", |h| h.up && h.attempts >= 5).await;
        assert_eq!(h.failed_attempts, 2, "{h:?}");
        assert!(!task.is_finished(), "the backend's task ended");
        task.abort();
    }

    /// Each checked backend is a task whose future lives as long as the check: it must
    /// stay small (the attempt's state is boxed while it runs). 10,000 backends x 2 KiB.
    #[test]
    fn a_waiting_backend_costs_little_memory() {
        let key = BackendKey::new("web", "127.0.0.1".parse().unwrap(), 80);
        let check = HealthCheck::new(CheckType::SslGet);
        let machine = Machine::new(Rules::of(&check), InitialState::Down, Instant::now());
        let (health, _) = watch::channel(HealthMap::new());
        let ctx = Arc::new(Ctx {
            shared: Shared {
                pinger: Default::default(),
            },
            limiter: Semaphore::new(1),
            health,
            services: Default::default(),
        });
        let checker = Checker::new(&check, &key);
        let task = run_backend(key, check, checker, machine, ctx);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2048, "a backend's task takes {size} bytes");
    }
}
