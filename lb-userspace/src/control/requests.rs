//! What the controller is asked (one channel of [`Request`]s, answered on one-shot
//! channels), what a request can fail with, and the runtime weight and health requests.

use std::{fmt, net::SocketAddr, sync::Arc};

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use super::{
    announcing::AnnounceStatus,
    reload::ReloadReport,
    runtime::{backend_keys, effective, find_backend, same_for_datapath, Override},
    simulate::SimulateAnswer,
    snapshot::Snapshot,
    Controller, RESOLVE_WAIT_CHANGE,
};
use crate::health::HealthMap;

/// Why a request failed, with the HTTP status it maps to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlError {
    /// 404: no such service or backend.
    NotFound(String),
    /// 400/422: the request or the new configuration is wrong.
    Invalid(String),
    /// 500: the datapath refused an update.
    Failed(String),
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ControlError::NotFound(m) | ControlError::Invalid(m) | ControlError::Failed(m) => {
                f.write_str(m)
            }
        }
    }
}

/// A weight as the API reports it after a change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightChange {
    pub service: String,
    pub backend: String,
    pub weight: u32,
    pub config_weight: u32,
    pub weight_override: Option<u32>,
}

/// What the controller is asked. `Snapshot` and `Simulate` are observers: they queue
/// behind the others, in a bounded queue (see [`inbox`](super::inbox)).
pub enum Request {
    /// One snapshot is shared by the requests of 200 ms.
    Snapshot(oneshot::Sender<Arc<Snapshot>>),
    Reload(oneshot::Sender<Result<ReloadReport, ControlError>>),
    /// `weight: None` removes the override (back to the file's weight).
    SetWeight {
        service: String,
        backend: String,
        weight: Option<u32>,
        reply: oneshot::Sender<Result<WeightChange, ControlError>>,
    },
    /// From health checking: the health of every checked backend now (it replaces the
    /// previous map; only what changed reaches the maps). No answer; once the maps hold it,
    /// and no newer change is pending, the controller logs "datapath updated for backend
    /// health".
    Health(HealthMap),
    Simulate {
        src: SocketAddr,
        dst: SocketAddr,
        proto: u8,
        reply: oneshot::Sender<Result<SimulateAnswer, ControlError>>,
    },
    /// `bascule drain-node` (`drain: true`): withdraw every VIP, keep forwarding;
    /// `undrain-node` (`false`): announce again what should be.
    Drain {
        drain: bool,
        reply: oneshot::Sender<Result<AnnounceStatus, ControlError>>,
    },
    /// `sync:` entries a peer sent (authenticated, fresh): written into the connection
    /// table, or counted as ignored. No answer.
    Sync(Vec<crate::sync::Entry>),
    /// `sync:` bulk: every connection-table entry, named for a peer that starts.
    SyncTable(oneshot::Sender<Vec<crate::sync::Entry>>),
    /// Stops the controller: with `keep_datapath`, pinned links stay attached and the
    /// maps pinned (the next daemon adopts them); otherwise everything is removed.
    Stop {
        keep_datapath: bool,
        reply: oneshot::Sender<()>,
    },
}

/// The sending side, cloned into the API and the signal handler (and health checkers).
pub use super::inbox::Handle;

impl Controller {
    pub(super) fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: Option<u32>,
    ) -> Result<WeightChange, ControlError> {
        let key = find_backend(&self.config, service, backend)?;
        if let Some(w) = weight {
            if w > 65535 {
                return Err(ControlError::Invalid(format!(
                    "weight {w} is out of range, expected 0..=65535"
                )));
            }
        }
        let config_weight = backend_keys(&self.config)
            .into_iter()
            .find(|(k, _)| *k == key)
            .map_or(0, |(_, w)| w);
        let before = self.runtime.overrides.get(&key).copied();
        match weight {
            Some(w) => {
                self.runtime.overrides.insert(
                    key.clone(),
                    Override {
                        weight: w,
                        config_weight,
                    },
                );
            }
            None => {
                self.runtime.overrides.remove(&key);
            }
        }
        let config = self.config.clone();
        let result = self
            .replan(&config, RESOLVE_WAIT_CHANGE)
            .and_then(|next| self.commit(next, false));
        if let Err(e) = result {
            match before {
                Some(o) => self.runtime.overrides.insert(key.clone(), o),
                None => self.runtime.overrides.remove(&key),
            };
            return Err(ControlError::Failed(format!("{e:#}")));
        }
        let inhibit = self.inhibit_on_failure(&key.service);
        let effective = effective(config_weight, &key, inhibit, &self.runtime).weight;
        tracing::info!(
            backend = %key,
            weight = effective,
            config_weight,
            "backend weight {}",
            match weight {
                Some(0) => "set to 0 at runtime (drained: no new flows, established ones stay)".to_string(),
                Some(w) => format!("set to {w} at runtime"),
                None => "reset to the configuration's".to_string(),
            }
        );
        Ok(WeightChange {
            service: key.service.clone(),
            backend: key.label(),
            weight: effective,
            config_weight,
            weight_override: weight,
        })
    }

    fn inhibit_on_failure(&self, service: &str) -> bool {
        self.config
            .services
            .iter()
            .find(|s| s.name == service)
            .and_then(|s| s.health_check.as_ref())
            .is_some_and(|h| h.inhibit_on_failure)
    }

    /// A new health map: re-plans if it changes what the datapath does. (The health
    /// checks log each backend's transitions; this logs the resulting update, only when no
    /// newer change is pending: the line then means "the datapath holds every health change
    /// logged before it". A pending change comes as its own request.)
    pub(super) fn set_health(&mut self, health: HealthMap) {
        let changed = !same_for_datapath(&health, &self.runtime.health);
        self.runtime.health = health;
        if changed {
            let down = self.runtime.health.values().filter(|h| !h.up).count();
            let config = self.config.clone();
            if let Err(e) = self
                .replan(&config, RESOLVE_WAIT_CHANGE)
                .and_then(|next| self.commit(next, false))
            {
                tracing::error!("cannot apply a health change: {e:#}");
                return;
            }
            tracing::debug!(down, "health change applied");
        }
        if self.newer_health().is_none() {
            tracing::info!("datapath updated for backend health");
        }
    }
}
