//! The daemon under systemd (`Type=notify-reload`, `WatchdogSec=`): what it tells the
//! service manager, and when.
//!
//! | moment | notification |
//! |---|---|
//! | the datapath attached and programmed (`/readyz` says ready) | `READY=1` and `STATUS=` |
//! | a reload starts (SIGHUP or `POST /api/v1/reload`) | `RELOADING=1`, `MONOTONIC_USEC=` |
//! | it ends, taken or refused | `READY=1` and `STATUS=` (naming a refusal) |
//! | the controller's loop turns, every `WATCHDOG_USEC / 2` | `WATCHDOG=1` |
//! | services, backends up or VRRP states change (checked every second) | `STATUS=` |
//! | SIGTERM or SIGINT | `STOPPING=1` |
//!
//! systemd's reload protocol has no way to say that a reload failed: `READY=1` ends the
//! reload job as done. A refused file therefore leaves `systemctl reload` successful; the
//! refusal shows in `systemctl status` (the `STATUS=` line), in the journal, in
//! `bascule_config_reloads_total{result="error"}`, and `bascule reload` exits 1 with it.

use std::sync::{Arc, Mutex};

use crate::{
    config::Config,
    control::{self, snapshot::VrrpStatus, ControlError, ReloadReport},
    health::HealthMap,
    util::systemd::{self as sd, Notifier},
};

/// Longest refusal message quoted in `STATUS=`.
const MAX_REFUSAL: usize = 300;

/// The notifications of one daemon; does nothing when `NOTIFY_SOCKET` is not set.
#[derive(Default)]
pub struct ServiceManager {
    notifier: Option<Notifier>,
    state: Mutex<StatusState>,
}

#[derive(Default)]
struct StatusState {
    /// Services, backends, VRRP: [`summary`].
    summary: String,
    /// Why the last reload was refused, until one is taken.
    refused: Option<String>,
    /// The last `STATUS=` sent.
    sent: String,
}

impl ServiceManager {
    /// The service manager `NOTIFY_SOCKET` names (a wrong name is logged, then ignored).
    pub fn from_env() -> Arc<ServiceManager> {
        let notifier = Notifier::from_env().unwrap_or_else(|e| {
            tracing::warn!("NOTIFY_SOCKET is unusable, systemd is not told anything: {e}");
            None
        });
        Arc::new(ServiceManager {
            notifier,
            state: Mutex::default(),
        })
    }

    /// `WATCHDOG=1` every half of `WATCHDOG_USEC`, from the controller's loop.
    pub fn heartbeat(&self) -> Option<control::Heartbeat> {
        let notifier = self.notifier.clone()?;
        let timeout = sd::watchdog_timeout()?;
        tracing::info!(
            timeout_ms = timeout.as_millis() as u64,
            "systemd watchdog: the controller pings it every half of its timeout"
        );
        Some(control::Heartbeat {
            every: timeout / 2,
            beat: Box::new(move || notifier.notify("WATCHDOG=1")),
        })
    }

    /// Started: the datapath is attached and programmed.
    pub fn ready(&self) {
        self.send_with_status("READY=1");
    }

    /// A reload begins.
    pub fn reloading(&self) {
        if let Some(n) = &self.notifier {
            n.notify(&sd::reloading_message());
        }
    }

    /// A reload ended with `outcome` (`None`: the controller did not answer).
    pub fn reloaded(&self, outcome: Option<&Result<ReloadReport, ControlError>>) {
        {
            let mut state = self.lock();
            state.refused = match outcome {
                Some(Ok(_)) => None,
                Some(Err(e)) => Some(one_line(&e.to_string())),
                None => Some("the controller is stopping".to_string()),
            };
        }
        self.send_with_status("READY=1");
    }

    /// The daemon is stopping.
    pub fn stopping(&self) {
        if let Some(n) = &self.notifier {
            n.notify("STOPPING=1\nSTATUS=stopping");
        }
    }

    /// A new summary: `STATUS=` is sent if the line changed.
    pub fn set_summary(&self, summary: String) {
        let line = {
            let mut state = self.lock();
            state.summary = summary;
            let line = status_line(&state);
            if line == state.sent {
                return;
            }
            line
        };
        self.send_status(&line, None);
    }

    fn send_with_status(&self, first: &str) {
        let line = status_line(&self.lock());
        self.send_status(&line, Some(first));
    }

    fn send_status(&self, line: &str, first: Option<&str>) {
        let Some(n) = &self.notifier else {
            return;
        };
        self.lock().sent = line.to_string();
        let message = match first {
            Some(f) => format!("{f}\nSTATUS={line}"),
            None => format!("STATUS={line}"),
        };
        n.notify(&message);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StatusState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn status_line(state: &StatusState) -> String {
    match &state.refused {
        Some(why) => format!(
            "{}; last reload refused, previous configuration kept: {why}",
            state.summary
        ),
        None => state.summary.clone(),
    }
}

/// `text` on one line (`STATUS=` ends at a newline), at most [`MAX_REFUSAL`] characters.
fn one_line(text: &str) -> String {
    let joined = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    match joined.char_indices().nth(MAX_REFUSAL) {
        Some((at, _)) => format!("{}...", &joined[..at]),
        None => joined,
    }
}

/// The one-line summary: services, backends up, VRRP instances' states.
pub fn summary(config: &Config, health: &HealthMap, vrrp: &[VrrpStatus]) -> String {
    let services = config.services.len();
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    let down = health.values().filter(|h| !h.up).count().min(backends);
    let mut line = format!(
        "{services} service{}, {} of {backends} backend{} up",
        if services == 1 { "" } else { "s" },
        backends - down,
        if backends == 1 { "" } else { "s" },
    );
    if !vrrp.is_empty() {
        let states: Vec<String> = vrrp
            .iter()
            .map(|v| format!("{} {}", v.instance, v.state.as_str()))
            .collect();
        line.push_str(&format!("; VRRP {}", states.join(", ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_fit_on_one_line() {
        assert_eq!(
            one_line("a.yaml:3:1: bad\n  b.yaml:4:2: worse\n"),
            "a.yaml:3:1: bad; b.yaml:4:2: worse"
        );
        let long = "x".repeat(1000);
        assert_eq!(one_line(&long).chars().count(), MAX_REFUSAL + 3);
    }

    #[test]
    fn status_names_a_refusal_until_a_reload_is_taken() {
        let mut state = StatusState {
            summary: "2 services, 3 of 4 backends up".to_string(),
            ..Default::default()
        };
        assert_eq!(status_line(&state), "2 services, 3 of 4 backends up");
        state.refused = Some("f.yaml:15:17: weight out of range".to_string());
        assert_eq!(
            status_line(&state),
            "2 services, 3 of 4 backends up; last reload refused, previous configuration kept: f.yaml:15:17: weight out of range"
        );
    }
}
