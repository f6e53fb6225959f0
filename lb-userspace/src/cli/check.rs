//! The commands that need no daemon, from a configuration file alone: `check` and
//! `simulate -c`.

use std::{net::SocketAddr, path::Path};

use super::{print_json, print_simulation, Failure, Outcome};
use crate::{
    config::Config,
    control::{self, FlowLookups},
    plan, util,
};

/// `bascule check`: validates, and prints each service's Maglev digest (equal digests on
/// two nodes mean they send every flow to the same backend).
/// A file that makes the validation panic (a bug: every value has its check) is refused
/// all the same, exit code 1 with a message, not a panic's 101.
pub fn check(path: &Path, host: bool, json: bool) -> Outcome {
    util::panic::contain(|| check_file(path, host, json)).unwrap_or_else(|panic| {
        Err(Failure::failed(format!(
            "{}: cannot check this file: bascule failed on it ({panic}); please report it",
            path.display()
        )))
    })
}

fn check_file(path: &Path, host: bool, json: bool) -> Outcome {
    let config = control::load_config(path).map_err(|e| Failure::failed(format!("{e:#}")))?;
    if host {
        let facts = control::host_facts().map_err(|e| Failure::failed(format!("{e:#}")))?;
        control::check_host(&config, &facts).map_err(|e| {
            Failure::failed(format!(
                "{e:#}\n(to check a file meant for another node, add --no-host)"
            ))
        })?;
    }
    let p = offline_plan(&config).map_err(|e| Failure::failed(format!("{e:#}")))?;
    let backends: usize = config.services.iter().map(|s| s.backends.len()).sum();
    let digests: Vec<(String, usize, String)> = p
        .services
        .iter()
        .zip(plan::table_digests(&p))
        .map(|(s, digest)| (s.name.clone(), s.table.len(), format!("{digest:016x}")))
        .collect();
    if json {
        print_json(&serde_json::json!({
            "file": path.display().to_string(),
            "valid": true,
            "services": config.services.len(),
            "backends": backends,
            "digests": digests.iter().map(|(n, slots, d)| serde_json::json!({"service": n, "slots": slots, "digest": d})).collect::<Vec<_>>(),
        }));
    } else {
        println!(
            "{}: ok, {} service(s), {} backend(s)",
            path.display(),
            config.services.len(),
            backends
        );
        for (name, slots, digest) in digests {
            println!("service {name}: maglev {slots} slots, digest {digest}");
        }
    }
    Ok(())
}

/// `bascule simulate -c FILE`: without a daemon, from the config alone (every backend
/// taken as reachable, no connection table), as `bascule check` computes digests.
pub fn simulate_offline(
    config: &Config,
    src: SocketAddr,
    dst: SocketAddr,
    proto: &str,
    json: bool,
) -> Outcome {
    let proto = control::parse_protocol(proto).map_err(|e| Failure::failed(e.to_string()))?;
    let p = offline_plan(config).map_err(|e| Failure::failed(format!("{e:#}")))?;
    let flow = lb_common::FlowKey::new(src, dst, proto);
    let nothing_seen = FlowLookups::default();
    print_simulation(
        &control::simulate(&p, config, &flow, &nothing_seen, &|_| 0),
        json,
    )
}

/// A plan of `config` with every `dr` backend counted as reachable: what depends on the
/// config alone (tables, digests).
pub fn offline_plan(config: &Config) -> anyhow::Result<plan::Plan> {
    let macs: plan::MacTable = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| (b.address, [0u8; 6])))
        .collect();
    plan::plan(config, &macs, plan::TunnelSources::default(), None)
}
