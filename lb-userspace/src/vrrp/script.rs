//! Track scripts (keepalived's `vrrp_script`): each script runs on a task of its own every
//! `interval`, once for all the instances that track it; its results go through rise and
//! fall ([`Tracker`], pure) and the states of all scripts are published on one `watch`
//! channel ([`ScriptStates`]). An instance turns the states of the scripts it tracks into
//! its effective priority and its fault ([`tracked`], pure).
//!
//! A run is `/bin/sh -c SCRIPT` in a process group of its own, killed with the whole group
//! when it outlives `timeout` (a failure). The daemon has no helper that sheds its
//! capabilities, so scripts run with the daemon's user and capabilities, as keepalived's
//! do when no `script_user` is set.

use std::{collections::BTreeMap, process::Stdio, time::Instant};

use serde::Serialize;
use tokio::{process::Command, sync::watch, task::JoinHandle};

use super::notify::ProcessGroup;
use crate::config::{format_duration, VrrpScript};

/// A script's state as its trackers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptState {
    /// No run has finished yet.
    Unknown,
    Up,
    Down,
}

impl ScriptState {
    pub fn label(self) -> &'static str {
        match self {
            ScriptState::Unknown => "unknown",
            ScriptState::Up => "up",
            ScriptState::Down => "down",
        }
    }
}

/// Rise and fall, as keepalived counts them: the first result counts at once; then `rise`
/// successes in a row bring a failing script up, `fall` failures in a row take it down.
#[derive(Clone, Debug)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    state: ScriptState,
    /// Results in a row against the current state.
    against: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            state: ScriptState::Unknown,
            against: 0,
        }
    }

    pub fn state(&self) -> ScriptState {
        self.state
    }

    /// Counts one run's result; returns the state after it.
    pub fn record(&mut self, success: bool) -> ScriptState {
        let (wanted, needed) = if success {
            (ScriptState::Up, self.rise)
        } else {
            (ScriptState::Down, self.fall)
        };
        if self.state == wanted {
            self.against = 0;
        } else if self.state == ScriptState::Unknown {
            self.state = wanted;
        } else {
            self.against += 1;
            if self.against >= needed {
                self.state = wanted;
                self.against = 0;
            }
        }
        self.state
    }
}

/// A tracked script as one instance sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TrackedScript {
    pub name: String,
    pub weight: i16,
    pub state: ScriptState,
}

/// What an instance's tracked scripts make of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tracking {
    /// The configured priority moved by the weights that apply (a negative weight while
    /// its script fails, a positive one while it succeeds), within 1..=254; an address
    /// owner's 255 never moves.
    pub priority: u8,
    /// Whether every script of weight 0 succeeds; `None` while one has no result yet.
    pub scripts_up: Option<bool>,
}

/// The effect of `scripts` on an instance of priority `base`.
pub fn tracked(base: u8, scripts: &[TrackedScript]) -> Tracking {
    let mut total = i32::from(base);
    let mut scripts_up = Some(true);
    for s in scripts {
        match (s.weight, s.state) {
            (0, ScriptState::Down) => scripts_up = Some(false),
            (0, ScriptState::Unknown) if scripts_up == Some(true) => scripts_up = None,
            (w, ScriptState::Up) if w > 0 => total += i32::from(w),
            (w, ScriptState::Down) if w < 0 => total += i32::from(w),
            _ => {}
        }
    }
    let priority = if base == 255 {
        255
    } else {
        total.clamp(1, 254) as u8
    };
    Tracking {
        priority,
        scripts_up,
    }
}

/// The state of every running script, by name.
pub type ScriptStates = watch::Receiver<BTreeMap<String, ScriptState>>;

/// Runs `script` until the task is aborted, publishing its state on `states`.
pub fn spawn(
    script: VrrpScript,
    states: watch::Sender<BTreeMap<String, ScriptState>>,
) -> JoinHandle<()> {
    states.send_modify(|m| {
        m.insert(script.name.clone(), ScriptState::Unknown);
    });
    tokio::spawn(async move {
        let mut tracker = Tracker::new(script.rise, script.fall);
        loop {
            let started = Instant::now();
            let (success, why) = run_once(&script).await;
            let before = tracker.state();
            let after = tracker.record(success);
            if after != before {
                if success {
                    tracing::info!(script = %script.name, "VRRP script succeeds: {}", after.label());
                } else {
                    tracing::warn!(script = %script.name, "VRRP script fails: {why}");
                }
                states.send_modify(|m| {
                    m.insert(script.name.clone(), after);
                });
            }
            tokio::time::sleep_until((started + script.interval).into()).await;
        }
    })
}

/// One run: success, or why not.
async fn run_once(script: &VrrpScript) -> (bool, String) {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(&script.script)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => return (false, format!("cannot run `{}`: {e}", script.script)),
    };
    // Dropped before `child` (declared after it): if this future is dropped (the script is
    // stopped), the group dies too.
    let mut group = ProcessGroup::of(&child);
    match tokio::time::timeout(script.timeout, child.wait()).await {
        Ok(result) => {
            group.disarm();
            match result {
                Ok(status) if status.success() => (true, String::new()),
                Ok(status) => (false, format!("`{}` {status}", script.script)),
                Err(e) => (false, format!("`{}`: {e}", script.script)),
            }
        }
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            (
                false,
                format!(
                    "`{}` still running after {}: killed with its process group",
                    script.script,
                    format_duration(script.timeout)
                ),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use ScriptState::*;

    /// How long a test waits for a script's state.
    const PATIENCE: Duration = Duration::from_secs(10);

    #[test]
    fn the_first_result_counts_then_rise_and_fall() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.state(), Unknown);
        assert_eq!(t.record(true), Up, "the first success counts at once");
        assert_eq!(t.record(false), Up);
        assert_eq!(t.record(false), Up);
        assert_eq!(t.record(true), Up, "a success starts the count again");
        assert_eq!(t.record(false), Up);
        assert_eq!(t.record(false), Up);
        assert_eq!(t.record(false), Down, "3 failures in a row");
        assert_eq!(t.record(true), Down);
        assert_eq!(t.record(false), Down);
        assert_eq!(t.record(true), Down);
        assert_eq!(t.record(true), Up, "2 successes in a row");
        let mut t = Tracker::new(5, 5);
        assert_eq!(t.record(false), Down, "the first failure counts at once");
    }

    fn script(weight: i16, state: ScriptState) -> TrackedScript {
        TrackedScript {
            name: format!("s{weight}"),
            weight,
            state,
        }
    }

    #[test]
    fn weights_apply_as_keepalived_applies_them() {
        let p = |base, scripts: &[TrackedScript]| tracked(base, scripts).priority;
        assert_eq!(p(150, &[script(-20, Up), script(30, Down)]), 150);
        assert_eq!(p(150, &[script(-20, Down), script(30, Down)]), 130);
        assert_eq!(p(150, &[script(-20, Down), script(30, Up)]), 160);
        assert_eq!(p(150, &[script(-20, Unknown), script(30, Unknown)]), 150);
        assert_eq!(p(100, &[script(-253, Down)]), 1, "never below 1");
        assert_eq!(
            p(200, &[script(100, Up)]),
            254,
            "never 255 but for the owner"
        );
        assert_eq!(p(255, &[script(-100, Down)]), 255, "the owner never moves");
    }

    #[test]
    fn a_script_of_weight_zero_decides_the_fault() {
        let up = |scripts: &[TrackedScript]| tracked(100, scripts).scripts_up;
        assert_eq!(up(&[]), Some(true));
        assert_eq!(up(&[script(0, Up), script(-10, Down)]), Some(true));
        assert_eq!(up(&[script(0, Up), script(0, Unknown)]), None);
        assert_eq!(up(&[script(0, Unknown), script(0, Down)]), Some(false));
        assert_eq!(tracked(100, &[script(0, Down)]).priority, 100);
    }

    async fn state_becomes(states: &mut ScriptStates, name: &str, wanted: ScriptState) {
        let waited = tokio::time::timeout(PATIENCE, async {
            loop {
                if states.borrow_and_update().get(name) == Some(&wanted) {
                    return;
                }
                states.changed().await.unwrap();
            }
        })
        .await;
        assert!(waited.is_ok(), "{name} not {wanted:?} within {PATIENCE:?}");
    }

    #[tokio::test]
    async fn a_script_follows_a_file_and_a_stuck_one_is_killed() {
        let flag = std::env::temp_dir().join(format!("bascule-script-{}", std::process::id()));
        let _ = std::fs::remove_file(&flag);
        let (tx, mut states) = watch::channel(BTreeMap::new());
        let def = |name: &str, command: String| VrrpScript {
            name: name.into(),
            script: command,
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(300),
            weight: 0,
            rise: 2,
            fall: 2,
        };
        let file = spawn(
            def("file", format!("test -e {}", flag.display())),
            tx.clone(),
        );
        let stuck = spawn(def("stuck", "sleep 30".into()), tx);
        state_becomes(&mut states, "file", Down).await;
        std::fs::write(&flag, "").unwrap();
        state_becomes(&mut states, "file", Up).await;
        std::fs::remove_file(&flag).unwrap();
        state_becomes(&mut states, "file", Down).await;
        let started = Instant::now();
        state_becomes(&mut states, "stuck", Down).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        file.abort();
        stuck.abort();
    }
}
