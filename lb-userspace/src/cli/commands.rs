//! The commands that talk to a running daemon: `status`, `reload`, `simulate`, `weight`,
//! `drain`, `drain-node` and `undrain-node`.

use std::net::SocketAddr;

use hyper::Method;

use super::{print_json, print_simulation, ApiClient, Failure, Outcome, EXIT_FAILED};
use crate::{
    control::{AnnounceStatus, ReloadReport, SimulateAnswer, WeightChange},
    serve::api::{percent_encode, WeightBody},
};

/// `bascule status`.
pub fn status(api: &ApiClient, json: bool) -> Outcome {
    let s = api.snapshot()?;
    if json {
        print_json(&s);
    } else {
        print!("{}", super::status::render(&s));
    }
    Ok(())
}

/// `bascule reload`.
pub fn reload(api: &ApiClient, json: bool) -> Outcome {
    match api.call::<ReloadReport>(Method::POST, "/api/v1/reload", Some(String::new())) {
        Ok(report) => {
            if json {
                print_json(&report);
            } else {
                println!("reloaded: {}", report.diff);
                for d in &report.dropped_overrides {
                    println!("runtime weight dropped: {d}");
                }
            }
            Ok(())
        }
        Err(f) if f.code == EXIT_FAILED => Err(Failure::failed(format!(
            "reload refused, the running configuration stays:\n{}",
            f.message
        ))),
        Err(f) => Err(f),
    }
}

/// `bascule drain-node` (`drain`) and `bascule undrain-node`: every VIP withdrawn while
/// the datapath keeps forwarding, or announced again.
pub fn drain_node(api: &ApiClient, drain: bool, json: bool) -> Outcome {
    let path = if drain {
        "/api/v1/node/drain"
    } else {
        "/api/v1/node/undrain"
    };
    let status: AnnounceStatus = api.call(Method::POST, path, Some(String::new()))?;
    if json {
        print_json(&status);
        return Ok(());
    }
    if drain {
        println!("node drained: every VIP withdrawn, the datapath keeps forwarding");
    } else {
        println!("node undrained: VIPs announced again where they should be");
    }
    for v in &status.vips {
        let state = if v.announced {
            "announced"
        } else {
            "withdrawn"
        };
        println!("{} {state} ({})", v.vip, v.reason);
    }
    Ok(())
}

/// `bascule simulate` against the daemon: its plan and its connection table.
pub fn simulate(
    api: &ApiClient,
    src: SocketAddr,
    dst: SocketAddr,
    proto: &str,
    json: bool,
) -> Outcome {
    let path = format!(
        "/api/v1/simulate?src={}&dst={}&proto={}",
        percent_encode(&src.to_string()),
        percent_encode(&dst.to_string()),
        percent_encode(proto)
    );
    let answer: SimulateAnswer = api.call(Method::GET, &path, None)?;
    print_simulation(&answer, json)
}

/// `bascule weight` and `bascule drain`: `spec` is `ADDR`, `ADDR:PORT`, `[V6]:PORT` or
/// `SERVICE/BACKEND`; without a service it applies to every service that has the backend.
/// `weight: None` returns to the file's weight.
pub fn set_weight(
    api: &ApiClient,
    spec: &str,
    service: Option<&str>,
    weight: Option<u32>,
    json: bool,
) -> Outcome {
    let (service, spec) = match (service, spec.split_once('/')) {
        (None, Some((s, b))) => (Some(s), b),
        _ => (service, spec),
    };
    let (addr, port) = match spec.parse::<SocketAddr>() {
        Ok(sa) => (sa.ip(), Some(sa.port())),
        Err(_) => match spec.trim_start_matches('[').trim_end_matches(']').parse() {
            Ok(ip) => (ip, None),
            Err(_) => {
                return Err(Failure {
                    code: 2,
                    message: format!("\"{spec}\" is not a backend: expected ADDR, ADDR:PORT, [IPV6]:PORT or SERVICE/BACKEND"),
                })
            }
        },
    };
    let snapshot = api.snapshot()?;
    let targets: Vec<(String, String)> = snapshot
        .services
        .iter()
        .filter(|s| service.is_none_or(|name| s.name == name))
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(|b| b.address == addr && port.is_none_or(|p| p == b.port))
                .map(|b| (s.name.clone(), b.label.clone()))
        })
        .collect();
    if targets.is_empty() {
        let scope =
            service.map_or_else(|| "any service".to_string(), |s| format!("service \"{s}\""));
        return Err(Failure::failed(format!(
            "no backend {spec} in {scope} (see `bascule status`)"
        )));
    }
    let mut changes = Vec::new();
    for (svc, label) in targets {
        let path = format!(
            "/api/v1/backends/{}/{}",
            percent_encode(&svc),
            percent_encode(&label)
        );
        let body = serde_json::to_string(&WeightBody { weight }).expect("serializable");
        let change: WeightChange = api.call(Method::POST, &path, Some(body))?;
        changes.push(change);
    }
    if json {
        print_json(&changes);
    } else {
        for c in &changes {
            let what = match c.weight_override {
                Some(0) => "drained: no new flows, established flows stay".to_string(),
                Some(_) => format!("set at runtime (file: {})", c.config_weight),
                None => "the file's weight again".to_string(),
            };
            println!("{} {}: weight {}, {what}", c.service, c.backend, c.weight);
        }
    }
    Ok(())
}
