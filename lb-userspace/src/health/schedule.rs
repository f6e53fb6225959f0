//! When a backend is checked and when it changes state: pure, with time as a parameter.
//!
//! A *check* runs every `interval` (measured from one check's start to the next; a check
//! that overruns is followed at once by the next). A check is up to `1 + retries`
//! *attempts*, `delay_before_retry` apart: it succeeds at its first successful attempt and
//! fails when every attempt failed. `rise` successful checks in a row take a down backend
//! up, `fall` failed checks in a row take an up backend down.
//!
//! So with `retries: 0` and `timeout <= interval`, a backend that dies at time T is down by
//! T + `interval` x `fall` + `timeout` at the latest: the next check starts within one
//! interval, the `fall`-th failed one starts `fall - 1` intervals later and ends within
//! `timeout`.

use std::time::{Duration, Instant};

use crate::config::{HealthCheck, InitialState};

use super::Outcome;

/// The parts of `health_check` that drive the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rules {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
    pub retries: u32,
    pub delay_before_retry: Duration,
}

impl Rules {
    pub fn of(hc: &HealthCheck) -> Rules {
        Rules {
            interval: hc.interval,
            rise: hc.rise.max(1),
            fall: hc.fall.max(1),
            retries: hc.retries,
            delay_before_retry: hc.delay_before_retry,
        }
    }
}

/// The latest time after a backend's death by which it is down, when each of its attempts
/// ends within `timeout`: a check lasts at most C = `timeout` x (1 + `retries`) +
/// `delay_before_retry` x `retries`, checks start at most max(`interval`, C) apart, the
/// first failing one within that time of the death, and the `fall`-th ends C after it
/// starts. With `retries: 0` and `timeout <= interval`: `interval` x `fall` + `timeout`.
pub fn detection_bound(rules: &Rules, timeout: Duration) -> Duration {
    let check = timeout * (rules.retries + 1) + rules.delay_before_retry * rules.retries;
    rules.interval.max(check) * rules.fall + check
}

/// A change of what the datapath should do with a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// `rise` checks in a row succeeded; `weight` is the check's own weight, if any.
    Up { weight: Option<u32> },
    /// `fall` checks in a row failed; `reason` is the last failure.
    Down { reason: String },
    /// A `misc` dynamic check changed the weight of an up backend.
    Weight { from: Option<u32>, to: u32 },
}

/// What to do after an attempt: when the next one starts, and what changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub next_attempt: Instant,
    pub transition: Option<Transition>,
}

/// One backend's check schedule and up/down state.
#[derive(Clone, Debug)]
pub struct Machine {
    rules: Rules,
    up: bool,
    weight: Option<u32>,
    /// Checks in a row that succeeded / failed.
    successes: u32,
    failures: u32,
    /// Failed attempts so far in the current check.
    failed_attempts: u32,
    /// When the current check started (its first attempt's scheduled time).
    check_start: Instant,
}

impl Machine {
    /// A backend whose first check starts at `first_check`.
    pub fn new(rules: Rules, initial: InitialState, first_check: Instant) -> Machine {
        Machine {
            rules,
            up: initial == InitialState::Up,
            weight: None,
            successes: 0,
            failures: 0,
            failed_attempts: 0,
            check_start: first_check,
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    pub fn weight(&self) -> Option<u32> {
        self.weight
    }

    /// When the next attempt is due (before any `record`: the first check's start).
    pub fn first_attempt(&self) -> Instant {
        self.check_start
    }

    /// Records the outcome of the attempt that ended at `now`.
    pub fn record(&mut self, now: Instant, outcome: &Outcome) -> Step {
        match outcome {
            Outcome::Down(reason) => {
                self.failed_attempts += 1;
                if self.failed_attempts <= self.rules.retries {
                    return Step {
                        next_attempt: now + self.rules.delay_before_retry,
                        transition: None,
                    };
                }
                let transition = self.check_failed(reason);
                Step {
                    next_attempt: self.next_check(now),
                    transition,
                }
            }
            Outcome::Up | Outcome::UpWithWeight(_) => {
                let weight = match outcome {
                    Outcome::UpWithWeight(w) => Some(*w),
                    _ => self.weight,
                };
                let transition = self.check_succeeded(weight);
                Step {
                    next_attempt: self.next_check(now),
                    transition,
                }
            }
        }
    }

    fn next_check(&mut self, now: Instant) -> Instant {
        self.failed_attempts = 0;
        self.check_start = (self.check_start + self.rules.interval).max(now);
        self.check_start
    }

    fn check_failed(&mut self, reason: &str) -> Option<Transition> {
        self.successes = 0;
        self.failures = self.failures.saturating_add(1);
        if self.up && self.failures >= self.rules.fall {
            self.up = false;
            return Some(Transition::Down {
                reason: reason.to_string(),
            });
        }
        None
    }

    fn check_succeeded(&mut self, weight: Option<u32>) -> Option<Transition> {
        self.failures = 0;
        self.successes = self.successes.saturating_add(1);
        let previous = std::mem::replace(&mut self.weight, weight);
        if !self.up {
            if self.successes >= self.rules.rise {
                self.up = true;
                return Some(Transition::Up { weight });
            }
            return None;
        }
        match weight {
            Some(to) if previous != weight => Some(Transition::Weight { from: previous, to }),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn rules(rise: u32, fall: u32, retries: u32) -> Rules {
        Rules {
            interval: S,
            rise,
            fall,
            retries,
            delay_before_retry: Duration::from_millis(200),
        }
    }

    fn down(why: &str) -> Outcome {
        Outcome::Down(why.to_string())
    }

    /// Drives a machine through a backend whose state at time t is `alive(t)`, each
    /// attempt taking `took` (a dead backend's attempts time out after `timeout`).
    /// Returns the transitions with the time they happened, until `until`.
    fn simulate(
        m: &mut Machine,
        start: Instant,
        until: Duration,
        took: Duration,
        timeout: Duration,
        alive: impl Fn(Duration) -> bool,
    ) -> Vec<(Duration, Transition)> {
        let mut out = Vec::new();
        let mut at = m.first_attempt();
        for _ in 0..100_000 {
            if at - start > until {
                return out;
            }
            let begun = at - start;
            let (end, outcome) = if alive(begun) {
                (at + took, Outcome::Up)
            } else {
                (at + timeout, down("timeout"))
            };
            let step = m.record(end, &outcome);
            if let Some(t) = step.transition {
                out.push((end - start, t));
            }
            assert!(
                step.next_attempt >= end,
                "an attempt starts before the previous ended"
            );
            at = step.next_attempt;
        }
        panic!("simulation did not reach {until:?}");
    }

    #[test]
    fn starts_down_and_rises_after_rise_successes() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(3, 2, 0), InitialState::Down, t0);
        assert!(!m.is_up());
        let ms = Duration::from_millis(5);
        let log = simulate(&mut m, t0, 10 * S, ms, S, |_| true);
        // Checks at 0 s, 1 s and 2 s: up when the third ends.
        assert_eq!(log, vec![(2 * S + ms, Transition::Up { weight: None })]);
        assert!(m.is_up());
    }

    #[test]
    fn initial_state_up_needs_fall_failures_to_go_down() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(2, 3, 0), InitialState::Up, t0);
        assert!(m.is_up());
        let log = simulate(
            &mut m,
            t0,
            Duration::from_millis(2500),
            S / 10,
            S / 2,
            |_| false,
        );
        assert_eq!(
            log,
            vec![(
                2 * S + S / 2,
                Transition::Down {
                    reason: "timeout".into()
                }
            )]
        );
    }

    /// The bound the issue states: a backend that dies at any time T is down by
    /// T + interval x fall + timeout, and not before `fall` failed checks.
    #[test]
    fn death_is_detected_within_interval_times_fall_plus_timeout() {
        let r = rules(2, 3, 0);
        let timeout = Duration::from_millis(800);
        for death_ms in (0..3000).step_by(37) {
            let t0 = Instant::now();
            let mut m = Machine::new(r, InitialState::Up, t0);
            let death = Duration::from_millis(5_000 + death_ms);
            let log = simulate(&mut m, t0, 20 * S, Duration::from_millis(3), timeout, |t| {
                t < death
            });
            let [(at, Transition::Down { .. })] = log.as_slice() else {
                panic!("death at {death:?}: expected one down transition, got {log:?}");
            };
            assert!(
                *at <= death + r.interval * r.fall + timeout,
                "death at {death:?} detected at {at:?}"
            );
            assert!(
                *at >= death + r.interval * (r.fall - 1),
                "death at {death:?} detected too early, at {at:?}"
            );
            assert!(*at <= death + detection_bound(&r, timeout));
        }
    }

    /// A flapping backend (up 1.5 s, down 1.5 s) never reaches rise 3 nor fall 3.
    #[test]
    fn flapping_shorter_than_rise_and_fall_changes_nothing() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(3, 3, 0), InitialState::Up, t0);
        let flap = |t: Duration| (t.as_millis() / 1500).is_multiple_of(2);
        let log = simulate(&mut m, t0, 60 * S, Duration::from_millis(2), S / 2, flap);
        assert_eq!(log, vec![], "flapping changed the state");
        // With rise 1 and fall 1 the same flapping shows every flap.
        let mut m = Machine::new(rules(1, 1, 0), InitialState::Up, t0);
        let log = simulate(&mut m, t0, 60 * S, Duration::from_millis(2), S / 2, flap);
        assert!(log.len() >= 30, "{log:?}");
        for pair in log.windows(2) {
            assert_ne!(
                matches!(pair[0].1, Transition::Up { .. }),
                matches!(pair[1].1, Transition::Up { .. }),
                "two transitions the same way in a row: {pair:?}"
            );
        }
    }

    #[test]
    fn retries_make_one_check_of_several_attempts() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(1, 1, 2), InitialState::Up, t0);
        let ms = Duration::from_millis;
        // Two failed attempts are retried 200 ms after they end; a success ends the check.
        let s = m.record(t0 + ms(10), &down("refused"));
        assert_eq!((s.next_attempt, s.transition), (t0 + ms(210), None));
        let s = m.record(t0 + ms(220), &down("refused"));
        assert_eq!((s.next_attempt, s.transition), (t0 + ms(420), None));
        let s = m.record(t0 + ms(430), &Outcome::Up);
        assert_eq!((s.next_attempt, s.transition), (t0 + S, None));
        // Three failures in one check (1 + retries) fail it; fall 1 takes it down.
        m.record(t0 + S + ms(5), &down("a"));
        m.record(t0 + S + ms(210), &down("b"));
        let s = m.record(t0 + S + ms(415), &down("HTTP 503"));
        assert_eq!(
            s,
            Step {
                next_attempt: t0 + 2 * S,
                transition: Some(Transition::Down {
                    reason: "HTTP 503".into()
                })
            }
        );
    }

    #[test]
    fn dynamic_weights_follow_an_up_backend() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(2, 1, 0), InitialState::Down, t0);
        let at = |n: u32| t0 + S * n;
        assert_eq!(m.record(at(0), &Outcome::UpWithWeight(5)).transition, None);
        assert_eq!(
            m.record(at(1), &Outcome::UpWithWeight(7)).transition,
            Some(Transition::Up { weight: Some(7) })
        );
        // Exit 0 keeps the weight (keepalived's misc_dynamic).
        assert_eq!(m.record(at(2), &Outcome::Up).transition, None);
        assert_eq!(m.weight(), Some(7));
        assert_eq!(
            m.record(at(3), &Outcome::UpWithWeight(0)).transition,
            Some(Transition::Weight {
                from: Some(7),
                to: 0
            })
        );
        assert_eq!(
            m.record(at(4), &down("exit 1")).transition,
            Some(Transition::Down {
                reason: "exit 1".into()
            })
        );
    }

    #[test]
    fn an_overrunning_check_is_followed_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::new(rules(1, 1, 0), InitialState::Up, t0);
        let s = m.record(t0 + 3 * S, &Outcome::Up);
        assert_eq!(s.next_attempt, t0 + 3 * S);
        let s = m.record(t0 + 3 * S + Duration::from_millis(1), &Outcome::Up);
        assert_eq!(s.next_attempt, t0 + 4 * S);
    }
}
