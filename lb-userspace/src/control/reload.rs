//! Reloads: what changed between two configurations (services added, removed, changed;
//! settings that need a restart; backends gone), and the controller's reload itself.

use std::{
    collections::{HashMap, HashSet},
    fmt,
    net::IpAddr,
    path::Path,
    sync::Arc,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};

use super::{commit::report_missing, controller::log_dropped_overrides};
use super::{
    load::{check_host, host_facts, load_config_cached},
    node::{prepare_interfaces, warm_routed_backends},
    requests::ControlError,
    runtime::{retain_overrides, BackendKey},
    snapshot::{LastReload, Reloads},
    Controller, RESOLVE_WAIT_CHANGE,
};
use crate::{
    config::{Config, ParseCache, Service},
    util,
};

/// How a refused reload's message starts when the reload panicked.
const PANICKED: &str = "the reload failed on a bug";

fn is_panic(message: &str) -> bool {
    message.contains(PANICKED)
}

/// Runs `attempt` (a reload of `path`), counts it in `reloads` and logs it; a panic is a
/// refused reload with the panic's message.
pub(super) fn counted_reload(
    reloads: &mut Reloads,
    path: &Path,
    attempt: impl FnOnce() -> Result<ReloadReport, ControlError>,
) -> Result<ReloadReport, ControlError> {
    let started = Instant::now();
    let result = util::panic::contain(attempt).unwrap_or_else(|panic| {
        Err(ControlError::Failed(format!(
            "{}: {PANICKED} ({panic}); please report it",
            path.display()
        )))
    });
    reloads.last = Some(LastReload {
        at_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        ok: result.is_ok(),
        took_ms: started.elapsed().as_millis() as u64,
    });
    match &result {
        Ok(report) => {
            reloads.ok += 1;
            reloads.last_error = None;
            tracing::info!(
                file = %path.display(),
                took_ms = started.elapsed().as_millis() as u64,
                "configuration reloaded: {}",
                report.diff
            );
        }
        Err(e) => {
            reloads.error += 1;
            reloads.last_error = Some(e.to_string());
            tracing::error!(file = %path.display(), "reload refused, the running configuration stays: {e}");
        }
    }
    result
}

/// The answer to a reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub diff: ConfigDiff,
    /// Runtime weights dropped by the reload, with why.
    pub dropped_overrides: Vec<String>,
}

/// Services added, removed and changed by a reload, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDiff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
    pub unchanged: usize,
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let before = by_name(old);
    let after = by_name(new);
    for s in &new.services {
        match before.get(s.name.as_str()) {
            None => d.added.push(s.name.clone()),
            Some(o) if *o != s => d.changed.push(s.name.clone()),
            Some(_) => d.unchanged += 1,
        }
    }
    for o in &old.services {
        if !after.contains_key(o.name.as_str()) {
            d.removed.push(o.name.clone());
        }
    }
    d
}

pub(super) fn by_name(config: &Config) -> HashMap<&str, &Service> {
    config
        .services
        .iter()
        .map(|s| (s.name.as_str(), s))
        .collect()
}

/// Backends of `old` that `new` does not have (in the same service, at the same address
/// and port). Work only for the services `diff` (of `old` to `new`) names as changed or
/// removed.
pub fn gone_backends(old: &Config, new: &Config, diff: &ConfigDiff) -> Vec<BackendKey> {
    let (before, after) = (by_name(old), by_name(new));
    let mut gone = Vec::new();
    for name in diff.changed.iter().chain(&diff.removed) {
        let Some(o) = before.get(name.as_str()) else {
            continue;
        };
        let kept: HashSet<(IpAddr, u16)> =
            after.get(name.as_str()).map_or_else(HashSet::new, |n| {
                n.backends
                    .iter()
                    .map(|b| (b.address, b.effective_port(n)))
                    .collect()
            });
        for b in &o.backends {
            let port = b.effective_port(o);
            if !kept.contains(&(b.address, port)) {
                gone.push(BackendKey {
                    service: o.name.clone(),
                    address: b.address,
                    port,
                });
            }
        }
    }
    gone
}

/// Whether `config` has the backend `key`.
pub(super) fn configured(services: &HashMap<&str, &Service>, key: &BackendKey) -> bool {
    services.get(key.service.as_str()).is_some_and(|s| {
        s.backends
            .iter()
            .any(|b| b.address == key.address && b.effective_port(s) == key.port)
    })
}

impl fmt::Display for ConfigDiff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "services added: {}; removed: {}; changed: {}; unchanged: {}",
            list(&self.added),
            list(&self.removed),
            list(&self.changed),
            self.unchanged
        )
    }
}

/// Settings that need a restart: a reload that changes them is refused.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut v = Vec::new();
    if old.node != new.node {
        v.push("node");
    }
    if old.conntrack != new.conntrack {
        v.push("conntrack");
    }
    if old.http != new.http {
        v.push("http");
    }
    // Which table and protocol the routes live in (and whether there are any): a reload
    // may change `announce.vips` and `announce.withdraw_grace` only.
    let routes = |c: &Config| c.announce.as_ref().map(|a| (a.table, a.protocol));
    if routes(old) != routes(new) {
        v.push("announce.table, announce.protocol");
    }
    if old.sync != new.sync {
        v.push("sync");
    }
    v
}

impl Controller {
    /// A reload, counted and logged. A panic on the way (a bug: every value of the file
    /// has its check) refuses it like an invalid file: the running configuration stays,
    /// and the daemon with it.
    pub(super) fn reload(&mut self) -> Result<ReloadReport, ControlError> {
        let path = self.path.clone();
        let mut reloads = std::mem::take(&mut self.reloads);
        let result = counted_reload(&mut reloads, &path, || self.try_reload());
        if result.is_err() && reloads.last_error.as_deref().is_some_and(is_panic) {
            // The parse may have stopped halfway through the cache: start it over.
            self.parse_cache = ParseCache::default();
        }
        self.reloads = reloads;
        result
    }

    fn try_reload(&mut self) -> Result<ReloadReport, ControlError> {
        let started = Instant::now();
        let new = load_config_cached(&self.path, &mut self.parse_cache)
            .map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: file parsed and checked"
        );
        let host = host_facts().map_err(|e| ControlError::Failed(format!("{e:#}")))?;
        check_host(&new, &host).map_err(|e| ControlError::Invalid(format!("{e:#}")))?;
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: host checked"
        );
        let restart = restart_only_changes(&self.config, &new);
        if !restart.is_empty() {
            return Err(ControlError::Invalid(format!(
                "{}: {} settings change only with a restart (the running configuration stays)",
                self.path.display(),
                restart.join(", ")
            )));
        }
        let diff = diff(&self.config, &new);
        let gone = gone_backends(&self.config, &new, &diff);
        prepare_interfaces(&new).map_err(|e| ControlError::Failed(format!("{e:#}")))?;
        // New backends' next hops start resolving (those of unchanged services are known).
        let touched: HashSet<&str> = diff
            .added
            .iter()
            .chain(&diff.changed)
            .map(String::as_str)
            .collect();
        warm_routed_backends(
            new.services
                .iter()
                .filter(|s| touched.contains(s.name.as_str())),
        );
        let mut overrides = self.runtime.overrides.clone();
        let dropped = retain_overrides(&mut overrides, &new);
        let previous_overrides = std::mem::replace(&mut self.runtime.overrides, overrides);
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: diffed"
        );
        let result = self.replan(&new, RESOLVE_WAIT_CHANGE).and_then(|next| {
            tracing::debug!(
                took_ms = started.elapsed().as_millis() as u64,
                "reload: planned"
            );
            let old = std::mem::replace(&mut self.config, Arc::new(new));
            self.commit(next, false).inspect_err(|_| self.config = old)
        });
        if let Err(e) = result {
            self.runtime.overrides = previous_overrides;
            return Err(ControlError::Failed(format!("{e:#}")));
        }
        tracing::debug!(
            took_ms = started.elapsed().as_millis() as u64,
            "reload: committed"
        );
        log_dropped_overrides(&dropped);
        report_missing(&self.missing_macs);
        for k in gone {
            self.runtime.health.remove(&k.health_key());
        }
        if let Some(on_reload) = &self.on_reload {
            on_reload(&self.config);
        }
        Ok(ReloadReport {
            diff,
            dropped_overrides: dropped
                .iter()
                .map(|(k, why)| format!("{k}: {why}"))
                .collect(),
        })
    }
}
