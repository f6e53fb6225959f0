//! The commands that talk to a running daemon through its HTTP API (`status`, `simulate`,
//! `drain`, `weight`, `reload`), and `check`. Each prints for people, or JSON with
//! `--json`, and ends with an exit code scripts can test:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done (`simulate`: the flow reaches a backend) |
//! | 1 | refused or failed: bad config, unknown backend, no backend for the flow |
//! | 2 | wrong command line |
//! | 3 | the daemon cannot be reached |
//! | 4 | the daemon wants a (different) token |

use std::{net::SocketAddr, path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

pub mod status;

use crate::{
    config::Config,
    control::{self, snapshot::Snapshot, ReloadReport, SimulateAnswer, WeightChange},
    plan,
    serve::api::{percent_encode, ErrorBody, WeightBody},
};

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_UNREACHABLE: u8 = 3;
pub const EXIT_UNAUTHORIZED: u8 = 4;

/// Default API address (`http.listen`'s default).
pub const DEFAULT_API: &str = "http://127.0.0.1:9469";
/// Time allowed for one API call (a reload may wait a second for MAC addresses).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

/// A command's failure: what to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    fn failed(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILED,
            message: message.into(),
        }
    }
}

pub type Outcome = Result<(), Failure>;

/// The daemon's API, as the CLI sees it.
pub struct ApiClient {
    url: String,
    authority: String,
    token: Option<String>,
}

impl ApiClient {
    /// `url` is `http://HOST:PORT`; the token comes from `token_file`, else `BASCULE_TOKEN`.
    pub fn new(url: &str, token_file: Option<&Path>) -> Result<Self, Failure> {
        let authority = url
            .strip_prefix("http://")
            .map(|a| a.trim_end_matches('/'))
            .filter(|a| !a.is_empty() && !a.contains('/'))
            .ok_or_else(|| Failure {
                code: 2,
                message: format!("--api {url}: expected http://HOST:PORT"),
            })?
            .to_string();
        let token = match token_file {
            Some(f) => Some(
                std::fs::read_to_string(f)
                    .map_err(|e| {
                        Failure::failed(format!("cannot read the token file {}: {e}", f.display()))
                    })?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var("BASCULE_TOKEN")
                .ok()
                .filter(|t| !t.is_empty()),
        };
        Ok(ApiClient {
            url: url.trim_end_matches('/').to_string(),
            authority,
            token,
        })
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<T, Failure> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Failure::failed(format!("cannot start a runtime: {e}")))?;
        let (status, text) = rt.block_on(async {
            tokio::time::timeout(CALL_TIMEOUT, self.exchange(method, path, body))
                .await
                .unwrap_or_else(|_| {
                    Err(Failure {
                        code: EXIT_UNREACHABLE,
                        message: format!(
                            "the daemon at {} did not answer within {}s",
                            self.url,
                            CALL_TIMEOUT.as_secs()
                        ),
                    })
                })
        })?;
        if status == StatusCode::UNAUTHORIZED {
            return Err(Failure {
                code: EXIT_UNAUTHORIZED,
                message: format!(
                    "the daemon at {} refused the request: it needs its API token (--token-file FILE or BASCULE_TOKEN)",
                    self.url
                ),
            });
        }
        if !status.is_success() {
            let message = serde_json::from_str::<ErrorBody>(&text)
                .map(|e| e.error)
                .unwrap_or_else(|_| text.trim().to_string());
            return Err(Failure::failed(message));
        }
        serde_json::from_str(&text)
            .map_err(|e| Failure::failed(format!("unexpected answer from {}{path}: {e}", self.url)))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<(StatusCode, String), Failure> {
        let unreachable = |e: &dyn std::fmt::Display| {
            Failure {
            code: EXIT_UNREACHABLE,
            message: format!(
                "cannot reach the bascule daemon at {}: {e} (is `bascule run` running? its API listens on http.listen; use --api)",
                self.url
            ),
        }
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority)
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| Failure::failed(format!("cannot build the request: {e}")))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| unreachable(&e))?;
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    pub fn snapshot(&self) -> Result<Snapshot, Failure> {
        self.call(Method::GET, "/api/v1/services", None)
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("serializable"));
}

/// `bascule status`.
pub fn status(api: &ApiClient, json: bool) -> Outcome {
    let s = api.snapshot()?;
    if json {
        print_json(&s);
    } else {
        print!("{}", status::render(&s));
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
    let nothing_seen = control::FlowLookups::default();
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

fn print_simulation(a: &SimulateAnswer, json: bool) -> Outcome {
    if json {
        print_json(a);
    } else {
        println!("{}", a.explanation);
    }
    if a.backend.is_some() || !a.candidates.is_empty() {
        Ok(())
    } else {
        Err(Failure {
            code: EXIT_FAILED,
            message: String::new(),
        })
    }
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

/// `bascule check`: validates, and prints each service's Maglev digest (equal digests on
/// two nodes mean they send every flow to the same backend).
pub fn check(path: &Path, host: bool, json: bool) -> Outcome {
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
