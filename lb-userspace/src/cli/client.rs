//! The daemon's HTTP API as the commands see it: one call, its errors as exit codes.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::{Failure, EXIT_UNAUTHORIZED, EXIT_UNREACHABLE};
use crate::{control::snapshot::Snapshot, serve::api::ErrorBody};

/// Time allowed for one API call (a reload may wait a second for MAC addresses).
const CALL_TIMEOUT: Duration = Duration::from_secs(15);

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

    pub(super) fn call<T: DeserializeOwned>(
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
