//! The HTTP server (hyper 1.x) on `http.listen`: `/metrics`, `/healthz`, `/readyz` and
//! the JSON API under `/api/v1/`. Handlers hold no state of their own: they ask the
//! controller (`control::Request`) and turn its answer into a response.
//!
//! | route | answer |
//! |---|---|
//! | `GET /` | the live status page ([`status_page`](super::status_page)) |
//! | `GET /healthz` | 200 while the daemon runs |
//! | `GET /readyz` | 200 once the program is attached and the maps programmed, else 503 |
//! | `GET /metrics` | Prometheus text (OpenMetrics if the `Accept` header asks for it) |
//! | `GET /api/v1/services` | the [`Snapshot`](crate::control::snapshot::Snapshot) `bascule status` shows |
//! | `GET /api/v1/vrrp` | `{"instances": [...]}` |
//! | `GET /api/v1/sync` | `{"enabled": bool, "peers": [...], "sent": N, ...}` (`sync:`) |
//! | `GET /api/v1/simulate?src=IP:PORT&dst=IP:PORT&proto=tcp` | which backend, and why |
//! | `POST /api/v1/backends/{service}/{backend}` `{"weight": N}` | runtime weight (`null`: back to the file's) |
//! | `POST /api/v1/reload` | reloads the config file |
//! | `POST /api/v1/node/drain`, `POST /api/v1/node/undrain` | withdraw every VIP (the datapath keeps forwarding) / announce again; answers the announcements (`announce:`) |
//!
//! With a token (`http.token_file`), every route but `/healthz` and `/readyz` needs
//! `Authorization: Bearer TOKEN` (the scheme in any case); otherwise 401. A `POST` needs
//! `Content-Type: application/json`, otherwise 415: a browser's cross-site form cannot
//! send that, so a page cannot reload or drain a daemon on the loopback.
//!
//! The server is bounded ([`Limits`]): a request head must arrive within 5 s, a response
//! be ready within 30 s, a connection lasts 5 min at most, and at most 256 are open (see
//! [`gate`](super::gate): a client trickling bytes cannot hold the daemon's file
//! descriptors, which the health checks need).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{
    body::Incoming, header, server::conn::http1, service::service_fn, Method, Request, Response,
    StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::oneshot};

pub use super::gate::Limits;
use super::{
    gate::{Admitted, Gate},
    metrics,
    systemd::ServiceManager,
};
use crate::control::{self, inbox::SendError, ControlError};

/// Largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// Largest request head read (hyper's read buffer).
const MAX_HEAD: usize = 16 * 1024;

pub struct Api {
    pub control: control::Handle,
    pub limits: Limits,
    /// Bearer token required on the API and `/metrics` (`None`: open, loopback only).
    pub token: Option<String>,
    pub ready: Arc<AtomicBool>,
    /// Told of each reload (`RELOADING=1`, then `READY=1`), as a SIGHUP's.
    pub systemd: Arc<ServiceManager>,
}

/// `{"error": "..."}`, the body of every error response.
#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// `POST /api/v1/backends/{service}/{backend}`.
#[derive(Serialize, Deserialize)]
pub struct WeightBody {
    /// `null`: remove the runtime weight.
    pub weight: Option<u32>,
}

type Body = Full<Bytes>;

/// Accepts connections until the task is dropped.
pub async fn serve(listener: TcpListener, api: Arc<Api>) {
    let gate = Gate::new(api.limits.connections);
    let mut reported = 0;
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let admitted = gate.admit();
        let turned_away = gate.turned_away();
        // One line at the first, then at every thousandth, not one per connection.
        if turned_away > reported && (reported == 0 || turned_away >= reported + 1000) {
            tracing::warn!(
                limit = api.limits.connections,
                turned_away,
                "too many API connections: the oldest waiting for a request are closed to make room, new ones when every connection is in a request"
            );
            reported = turned_away;
        }
        let Some(admitted) = admitted else {
            drop(stream);
            continue;
        };
        tokio::spawn(connection(api.clone(), stream, peer, admitted));
    }
}

/// One connection, until it ends, outlives its lifetime or is closed to make room.
async fn connection(
    api: Arc<Api>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    admitted: Admitted,
) {
    let Admitted { slot, evicted } = admitted;
    let limits = api.limits;
    let slot = Arc::new(slot);
    let service = service_fn(move |req| {
        let api = api.clone();
        let busy = slot.busy();
        async move {
            let _busy = busy;
            let answer = tokio::time::timeout(limits.request_timeout, handle(&api, req, peer));
            Ok::<_, Infallible>(answer.await.unwrap_or_else(|_| {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "no answer within {}s: the daemon is busy, try again",
                        limits.request_timeout.as_secs()
                    ),
                )
            }))
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD)
        .serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        ended = conn => {
            if let Err(e) = ended {
                tracing::debug!(%peer, "HTTP connection ended: {e}");
            }
        }
        _ = evicted => tracing::debug!(%peer, "HTTP connection closed to make room"),
        _ = tokio::time::sleep(limits.connection_lifetime) => {
            tracing::debug!(%peer, "HTTP connection closed at the end of its lifetime");
        }
    }
}

async fn handle(api: &Api, req: Request<Incoming>, _peer: SocketAddr) -> Response<Body> {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/healthz") => return text(StatusCode::OK, "ok\n"),
        (&Method::GET, "/readyz") => {
            return if api.ready.load(Ordering::SeqCst) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            };
        }
        _ => {}
    }
    if let Some(token) = &api.token {
        if !authorized(req.headers().get(header::AUTHORIZATION), token) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token (Authorization: Bearer TOKEN; the token is in http.token_file)",
            );
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("static"));
            return r;
        }
    }
    if method == Method::POST && !is_json(req.headers().get(header::CONTENT_TYPE)) {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "a POST needs Content-Type: application/json",
        );
    }
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segs: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (&method, segs.as_slice()) {
        (&Method::GET, [""]) => status_page(api),
        (&Method::GET, ["metrics"]) => metrics(api, &req).await,
        (&Method::GET, ["api", "v1", "services"]) => {
            match ask(api, control::Request::Snapshot).await {
                Ok(s) => json(StatusCode::OK, &*s),
                Err(r) => r,
            }
        }
        (&Method::GET, ["api", "v1", "vrrp"]) => match ask(api, control::Request::Snapshot).await {
            Ok(s) => json(StatusCode::OK, &serde_json::json!({ "instances": s.vrrp })),
            Err(r) => r,
        },
        (&Method::GET, ["api", "v1", "sync"]) => match ask(api, control::Request::Snapshot).await {
            Ok(s) => {
                let enabled = s.sync.is_some();
                let mut body =
                    serde_json::to_value(s.sync.clone().unwrap_or_default()).unwrap_or_default();
                body["enabled"] = enabled.into();
                json(StatusCode::OK, &body)
            }
            Err(r) => r,
        },
        (&Method::GET, ["api", "v1", "simulate"]) => {
            simulate(api, req.uri().query().unwrap_or("")).await
        }
        (&Method::POST, ["api", "v1", "backends", service, backend]) => {
            set_weight(api, req, service.to_string(), backend.to_string()).await
        }
        (&Method::POST, ["api", "v1", "reload"]) => {
            api.systemd.reloading();
            let answer = ask(api, control::Request::Reload).await;
            api.systemd.reloaded(answer.as_ref().ok());
            match answer {
                Ok(Ok(report)) => json(StatusCode::OK, &report),
                Ok(Err(e)) => control_error(e),
                Err(r) => r,
            }
        }
        (&Method::POST, ["api", "v1", "node", action @ ("drain" | "undrain")]) => {
            let drain = *action == "drain";
            match ask(api, |reply| control::Request::Drain { drain, reply }).await {
                Ok(Ok(status)) => json(StatusCode::OK, &status),
                Ok(Err(e)) => control_error(e),
                Err(r) => r,
            }
        }
        (_, ["" | "metrics"])
        | (_, ["api", "v1", "node", "drain" | "undrain"])
        | (_, ["api", "v1", "services" | "vrrp" | "sync" | "simulate"])
        | (_, ["api", "v1", "backends", _, _])
        | (_, ["api", "v1", "reload"]) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            &format!("{method} is not allowed on {path}"),
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            &format!("no route {path} (see /api/v1/services, /metrics)"),
        ),
    }
}

/// `GET /`: the status page (behind the token, like the API it reads).
fn status_page(api: &Api) -> Response<Body> {
    let mut r = respond(
        StatusCode::OK,
        "text/html; charset=utf-8",
        super::status_page::render(api.token.as_deref()),
    );
    let headers = r.headers_mut();
    headers.insert(header::CACHE_CONTROL, "no-store".parse().expect("static"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        super::status_page::CONTENT_SECURITY_POLICY
            .parse()
            .expect("static"),
    );
    r
}

/// `GET /metrics`: OpenMetrics if the `Accept` header asks for it, else Prometheus text.
async fn metrics(api: &Api, req: &Request<Incoming>) -> Response<Body> {
    let openmetrics = metrics::wants_openmetrics(
        req.headers()
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok()),
    );
    match ask(api, control::Request::Snapshot).await {
        Ok(s) => {
            let body = metrics::render(&s, openmetrics);
            let ct = if openmetrics {
                metrics::OPENMETRICS_CONTENT_TYPE
            } else {
                metrics::TEXT_CONTENT_TYPE
            };
            respond(StatusCode::OK, ct, body)
        }
        Err(r) => r,
    }
}

/// `GET /api/v1/simulate?src=IP:PORT&dst=IP:PORT&proto=tcp`.
async fn simulate(api: &Api, query_string: &str) -> Response<Body> {
    let q = query(query_string);
    let get = |k: &str| q.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let parse = |k: &str| -> Result<SocketAddr, String> {
        let v = get(k).ok_or_else(|| format!("missing query parameter {k}=IP:PORT"))?;
        v.parse()
            .map_err(|_| format!("{k}={v}: expected IP:PORT ([IPV6]:PORT)"))
    };
    let (src, dst) = match (parse("src"), parse("dst")) {
        (Ok(s), Ok(d)) => (s, d),
        (Err(e), _) | (_, Err(e)) => return error(StatusCode::BAD_REQUEST, &e),
    };
    let proto = match control::parse_protocol(get("proto").unwrap_or("tcp")) {
        Ok(p) => p,
        Err(e) => return control_error(e),
    };
    match ask(api, |reply| control::Request::Simulate {
        src,
        dst,
        proto,
        reply,
    })
    .await
    {
        Ok(Ok(answer)) => json(StatusCode::OK, &answer),
        Ok(Err(e)) => control_error(e),
        Err(r) => r,
    }
}

/// `POST /api/v1/backends/{service}/{backend}` `{"weight": N}`.
async fn set_weight(
    api: &Api,
    req: Request<Incoming>,
    service: String,
    backend: String,
) -> Response<Body> {
    let body: WeightBody = match read_json(req).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    match ask(api, |reply| control::Request::SetWeight {
        service,
        backend,
        weight: body.weight,
        reply,
    })
    .await
    {
        Ok(Ok(change)) => json(StatusCode::OK, &change),
        Ok(Err(e)) => control_error(e),
        Err(r) => r,
    }
}

/// Sends a request to the controller and waits for its answer.
async fn ask<T>(
    api: &Api,
    make: impl FnOnce(oneshot::Sender<T>) -> control::Request,
) -> Result<T, Response<Body>> {
    let (tx, rx) = oneshot::channel();
    let unavailable = |e: SendError| {
        let mut r = error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
        if e == SendError::Busy {
            r.headers_mut()
                .insert(header::RETRY_AFTER, "1".parse().expect("static"));
        }
        r
    };
    api.control.send(make(tx)).map_err(unavailable)?;
    rx.await.map_err(|_| unavailable(SendError::Stopped))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, Response<Body>> {
    let bytes = Limited::new(req.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            error(
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            )
        })?
        .to_bytes();
    serde_json::from_slice(&bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("the body is not the expected JSON ({e}); expected {{\"weight\": N}}"),
        )
    })
}

/// `Authorization: Bearer TOKEN`, the scheme in any case (RFC 9110, section 11.1).
fn authorized(header: Option<&header::HeaderValue>, token: &str) -> bool {
    let Some((scheme, given)) = header
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.split_once(' '))
    else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// `application/json`, with parameters (`; charset=utf-8`) or not, in any case.
fn is_json(content_type: Option<&header::HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        content_type.parse().expect("valid content type"),
    );
    r
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    respond(status, "text/plain; charset=utf-8", body.to_string())
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let mut body = serde_json::to_string_pretty(value).expect("serializable");
    body.push('\n');
    respond(status, "application/json", body)
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json(
        status,
        &ErrorBody {
            error: message.to_string(),
        },
    )
}

fn control_error(e: ControlError) -> Response<Body> {
    let status = match &e {
        ControlError::NotFound(_) => StatusCode::NOT_FOUND,
        ControlError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
        ControlError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, &e.to_string())
}

/// `a=1&b=%5B..%5D` as decoded pairs.
fn query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Decodes `%XX` escapes; anything malformed is kept as is.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = |b: u8| (b as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escapes what cannot stand in a path segment or a query value as `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_coding_round_trips() {
        for s in ["[fd00::11]:80", "10.0.0.1:80", "web-1", "a b/c%"] {
            assert_eq!(percent_decode(&percent_encode(s)), s);
        }
        assert_eq!(percent_decode("%5Bfd00::1%5D:80"), "[fd00::1]:80");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn bearer_tokens() {
        let h = |s: &str| header::HeaderValue::from_str(s).unwrap();
        assert!(authorized(Some(&h("Bearer s3cret")), "s3cret"));
        assert!(!authorized(Some(&h("Bearer s3cre")), "s3cret"));
        assert!(!authorized(Some(&h("Basic s3cret")), "s3cret"));
        assert!(authorized(Some(&h("bearer s3cret")), "s3cret"));
        assert!(authorized(Some(&h("BEARER s3cret")), "s3cret"));
        assert!(!authorized(Some(&h("Bearers3cret")), "s3cret"));
        assert!(!authorized(None, "s3cret"));
    }

    #[test]
    fn queries() {
        assert_eq!(
            query("src=10.0.0.1%3A5&dst=%5B::1%5D:80&proto=udp"),
            vec![
                ("src".to_string(), "10.0.0.1:5".to_string()),
                ("dst".to_string(), "[::1]:80".to_string()),
                ("proto".to_string(), "udp".to_string())
            ]
        );
    }
}
