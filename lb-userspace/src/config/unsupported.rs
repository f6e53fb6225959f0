//! What this build implements of the schema, and [`Config::unsupported`]: every feature a
//! valid configuration asks for that the daemon does not implement yet.

use std::fmt;

use super::errors::ConfigError;
use super::schema::{Config, Forwarding, Scheduler, VrrpAuthType};
use super::units::format_duration;
use super::yaml::Pos;

// What the current daemon implements; `Config::unsupported` reports everything else.
// Shrink these lists as features land.
const SUPPORTED_SCHEDULERS: &[Scheduler] = &[
    Scheduler::Rr,
    Scheduler::Wrr,
    Scheduler::Lc,
    Scheduler::Wlc,
    Scheduler::Lblc,
    Scheduler::Lblcr,
    Scheduler::Dh,
    Scheduler::Sh,
    Scheduler::Sed,
    Scheduler::Nq,
    Scheduler::Mh,
];
const SUPPORTED_FORWARDING: &[Forwarding] = &[
    Forwarding::Dr,
    Forwarding::Tun,
    Forwarding::Nat,
    Forwarding::Local,
];
const SUPPORTS_PERSISTENCE: bool = true;
const SUPPORTS_SORRY_SERVER: bool = true;
const SUPPORTS_HEALTH_CHECKS: bool = true;
const SUPPORTED_VRRP_AUTH: &[VrrpAuthType] = &[VrrpAuthType::Pass];

impl Config {
    /// Every feature this configuration uses that the current daemon does not implement yet,
    /// each with the position of the key or value that asks for it. Empty: all supported.
    pub fn unsupported(&self) -> Vec<ConfigError> {
        let mut out = Vec::new();
        let o = &self.origin;
        let err = |pos: Pos, message: String| ConfigError {
            file: o.file.clone(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        };
        for (i, svc) in self.services.iter().enumerate() {
            let loc = o.services.get(i).cloned().unwrap_or_default();
            if !SUPPORTED_SCHEDULERS.contains(&svc.scheduler) {
                out.push(err(
                    loc.scheduler,
                    format!(
                        "services[{i}].scheduler: \"{}\" is not supported yet (this build supports: {})",
                        svc.scheduler,
                        join(SUPPORTED_SCHEDULERS)
                    ),
                ));
            }
            if !SUPPORTED_FORWARDING.contains(&svc.forwarding) {
                out.push(err(
                    loc.forwarding,
                    format!(
                        "services[{i}].forwarding: \"{}\" is not supported yet (this build supports: {})",
                        svc.forwarding,
                        join(SUPPORTED_FORWARDING)
                    ),
                ));
            }
            if !SUPPORTS_PERSISTENCE && !svc.persistence.is_zero() {
                out.push(err(
                    loc.persistence,
                    format!(
                        "services[{i}].persistence: {} is not supported yet (this build supports: 0s)",
                        format_duration(svc.persistence)
                    ),
                ));
            }
            if !SUPPORTS_SORRY_SERVER {
                if let Some(sorry) = svc.sorry_server {
                    out.push(err(
                        loc.sorry_server,
                        format!("services[{i}].sorry_server: {sorry}: sorry servers are not supported yet (remove the key)"),
                    ));
                }
            }
            if !SUPPORTS_HEALTH_CHECKS && svc.health_check.is_some() {
                out.push(err(
                    loc.health_check,
                    format!("services[{i}].health_check: health checks are not supported yet (remove the key; backends are then always up)"),
                ));
            }
            for (j, b) in svc.backends.iter().enumerate() {
                if let Some(f) = b.forwarding {
                    if !SUPPORTED_FORWARDING.contains(&f) {
                        let at = loc.backends.get(j).map_or(loc.item, |b| b.forwarding);
                        out.push(err(
                            at,
                            format!(
                                "services[{i}].backends[{j}].forwarding: \"{f}\" is not supported yet (this build supports: {})",
                                join(SUPPORTED_FORWARDING)
                            ),
                        ));
                    }
                }
            }
        }
        for (k, inst) in self.vrrp.iter().enumerate() {
            if let Some(auth) = inst
                .authentication
                .as_ref()
                .filter(|a| !SUPPORTED_VRRP_AUTH.contains(&a.kind))
            {
                let at = o.vrrp_auth.get(k).or(o.vrrp.get(k)).copied();
                let at = at.unwrap_or_default();
                out.push(err(
                    at,
                    format!(
                        "vrrp[{k}].authentication.type: \"{}\" is not supported (this build supports: {}, as keepalived's auth_type PASS)",
                        auth.kind,
                        join(SUPPORTED_VRRP_AUTH)
                    ),
                ));
            }
        }
        out.sort_by_key(|e| (e.line, e.column));
        out
    }
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
