//! `http_get` and `ssl_get`: an HTTP/1.1 request (over TLS for ssl_get), judged by its
//! status, and optionally its body against a regular expression and an MD5 digest
//! (keepalived's `digest`).
//!
//! The exchange is hyper's HTTP/1 client on one connection per attempt
//! (`Connection: close`): it frames the answer (Content-Length, chunked, end of
//! connection) and skips informational (1xx) responses. This file adds the deadline, the
//! bound on what is read (a head of [`MAX_HEAD`], a body of [`MAX_BODY`], read only when
//! `body_regex` or `digest` needs it and the status is one expected) and the verdict,
//! a plain function.

use std::{
    io,
    net::SocketAddr,
    path::Path,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{
    body::{Body, Incoming},
    client::conn::http1,
    header::{self, HeaderMap, HeaderValue},
    Method, Request, Uri,
};
use hyper_util::rt::TokioIo;
use md5::{Digest, Md5};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::config::{CheckType, HealthCheck, HttpMethod, StatusRange};

use super::check::{connect, io_failure, Deadline};

/// Largest response head (hyper's read buffer), and largest body kept for `body_regex`
/// and `digest`.
const MAX_HEAD: usize = 64 * 1024;
pub(super) const MAX_BODY: usize = 1024 * 1024;
/// The first bytes of an answer kept to show what a backend sent that is not HTTP.
const PREVIEW: usize = 64;

/// What makes a response good.
#[derive(Debug)]
pub(super) struct Expect {
    pub status: Vec<StatusRange>,
    pub body_regex: Option<regex::bytes::Regex>,
    /// Lowercase hex MD5.
    pub digest: Option<String>,
}

impl Expect {
    fn needs_body(&self) -> bool {
        self.body_regex.is_some() || self.digest.is_some()
    }

    fn accepts(&self, status: u16) -> bool {
        self.status.iter().any(|r| r.contains(status))
    }
}

pub(super) struct HttpCheck {
    target: SocketAddr,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    expect: Expect,
    /// `10.0.0.11:80/healthz`, how messages name what was asked.
    shown: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl HttpCheck {
    pub fn new(hc: &HealthCheck, target: SocketAddr) -> Result<HttpCheck, String> {
        let host = hc.virtualhost.clone().unwrap_or_else(|| target.to_string());
        let body_regex = match &hc.body_regex {
            Some(r) => Some(
                regex::bytes::Regex::new(r)
                    .map_err(|e| format!("body_regex {r:?} does not compile: {e}"))?,
            ),
            None => None,
        };
        let tls = if hc.kind == CheckType::SslGet {
            let config = tls_config(hc.ca_file.as_deref())?;
            let name = server_name(hc.sni.as_deref(), hc.virtualhost.as_deref(), target)?;
            Some((tokio_rustls::TlsConnector::from(config), name))
        } else {
            None
        };
        let uri = hc
            .path
            .parse::<Uri>()
            .map_err(|e| format!("path {:?} cannot be requested: {e}", hc.path))?;
        Ok(HttpCheck {
            target,
            method: method(hc.method),
            uri,
            headers: headers(hc.method, &host)?,
            expect: Expect {
                status: hc.expect_status.clone(),
                body_regex,
                digest: hc.digest.clone(),
            },
            shown: format!("{target}{}", hc.path),
            tls,
        })
    }

    pub async fn attempt(&self, deadline: &Deadline) -> Result<(), String> {
        let tcp = connect(self.target, deadline).await?;
        match &self.tls {
            None => self.over(tcp, deadline).await,
            Some((connector, name)) => {
                let tls = deadline
                    .run(
                        || format!("TLS handshake with {}", self.target),
                        connector.connect(name.clone(), tcp),
                    )
                    .await?;
                self.over(tls, deadline).await
            }
        }
    }

    /// The exchange on a connected `stream`, and the verdict on its answer.
    pub(super) async fn over<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        stream: S,
        deadline: &Deadline,
    ) -> Result<(), String> {
        let response = self.exchange(stream, deadline).await?;
        judge(&self.expect, &response, &self.shown)
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut request = Request::new(Empty::new());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }

    /// Sends the request on `stream` and reads the answer, all before the deadline.
    async fn exchange<S: AsyncRead + AsyncWrite + Unpin + Send>(
        &self,
        stream: S,
        deadline: &Deadline,
    ) -> Result<Response, String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let io = TokioIo::new(Recording {
            inner: stream,
            seen: seen.clone(),
        });
        let exchange = async {
            let (mut sender, conn) = http1::Builder::new()
                .title_case_headers(true)
                .max_buf_size(MAX_HEAD)
                .handshake(io)
                .await
                .map_err(|e| self.failure(&e, &seen))?;
            let mut conn = std::pin::pin!(conn);
            let mut answer = std::pin::pin!(async {
                let head = sender.send_request(self.request()).await;
                self.read(head.map_err(|e| self.failure(&e, &seen))?).await
            });
            // The connection is driven here, not on a task of its own: it ends with the
            // attempt. Once it has ended, whatever it delivered or failed with is the
            // answer's.
            tokio::select! {
                result = answer.as_mut() => result,
                _ = conn.as_mut() => answer.await,
            }
        };
        match tokio::time::timeout_at(deadline.instant(), exchange).await {
            Ok(result) => result,
            Err(_) => Err(deadline.expired(&format!("waiting for the answer of {}", self.shown))),
        }
    }

    /// The status, and the body (at most [`MAX_BODY`]) when the verdict needs it.
    async fn read(&self, answer: hyper::Response<Incoming>) -> Result<Response, String> {
        let status = answer.status().as_u16();
        let mut body = answer.into_body();
        if !self.expect.needs_body() || !self.expect.accepts(status) {
            return Ok(Response {
                status,
                body: Vec::new(),
            });
        }
        let announced = body.size_hint().lower();
        if announced > MAX_BODY as u64 {
            return Err(format!(
                "{} answered a body of {announced} bytes; body_regex and digest read at most {} KiB",
                self.shown,
                MAX_BODY / 1024
            ));
        }
        let mut kept = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.failure(&e, &Mutex::default()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            if kept.len() + data.len() > MAX_BODY {
                return Err(format!(
                    "{} answered a body of more than {} KiB; body_regex and digest read at most that",
                    self.shown,
                    MAX_BODY / 1024
                ));
            }
            kept.extend_from_slice(&data);
        }
        Ok(Response { status, body: kept })
    }

    /// A failed exchange, worded for the log; `seen`: the first bytes the backend sent.
    fn failure(&self, e: &hyper::Error, seen: &Mutex<Vec<u8>>) -> String {
        let shown = &self.shown;
        if e.is_parse_too_large() {
            return format!(
                "{shown} answered a head longer than {} KiB",
                MAX_HEAD / 1024
            );
        }
        if e.is_parse() || e.is_parse_status() {
            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
            return format!(
                "{shown} answered something that is not HTTP: {}",
                preview(&seen)
            );
        }
        if e.is_incomplete_message() {
            return format!("{shown} closed the connection before a complete answer");
        }
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            if let Some(io) = c.downcast_ref::<io::Error>() {
                match io.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        return format!("{shown} closed the connection before the end of the body")
                    }
                    io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                        return format!("{shown} answered a malformed body: {io}")
                    }
                    io::ErrorKind::Other => {}
                    _ => return format!("reading the answer: {}", io_failure(io, self.target)),
                }
            }
            why = format!("{why}: {c}");
            cause = c.source();
        }
        format!("{shown} answered {why}")
    }
}

/// The stream under hyper: keeps the first [`PREVIEW`] bytes read, and takes a TLS peer
/// closing without close_notify (as many do) for the end of the stream.
struct Recording<S> {
    inner: S,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recording<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Poll::Ready(Ok(())),
            Poll::Ready(Ok(())) => {
                let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
                let room = PREVIEW.saturating_sub(seen.len());
                let new = &buf.filled()[before..];
                seen.extend_from_slice(&new[..new.len().min(room)]);
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recording<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn method(method: HttpMethod) -> Method {
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Post => Method::POST,
        HttpMethod::Options => Method::OPTIONS,
    }
}

/// The request's headers (hyper writes them title-cased, in this order).
pub(super) fn headers(method: HttpMethod, host: &str) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    let host = HeaderValue::from_str(host)
        .map_err(|_| format!("{host:?} cannot be sent as the Host header"))?;
    h.insert(header::HOST, host);
    h.insert(
        header::USER_AGENT,
        HeaderValue::from_static("bascule-healthcheck"),
    );
    h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    if method == HttpMethod::Post {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    }
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    Ok(h)
}

/// A response, with its body when the check needs it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// The verdict on a response to what `shown` names.
pub(super) fn judge(expect: &Expect, response: &Response, shown: &str) -> Result<(), String> {
    if !expect.accepts(response.status) {
        return Err(format!("HTTP {} from {shown}", response.status));
    }
    if let Some(re) = &expect.body_regex {
        if !re.is_match(&response.body) {
            return Err(format!(
                "body of {shown} does not match /{}/: {}",
                re.as_str(),
                preview(&response.body)
            ));
        }
    }
    if let Some(want) = &expect.digest {
        let got = md5_hex(&response.body);
        if &got != want {
            return Err(format!(
                "MD5 of the body of {shown} is {got}, expected {want}"
            ));
        }
    }
    Ok(())
}

pub(super) fn md5_hex(bytes: &[u8]) -> String {
    Md5::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first bytes of `b`, quoted, for a message.
pub(super) fn preview(b: &[u8]) -> String {
    let cut = &b[..b.len().min(40)];
    let text: String = String::from_utf8_lossy(cut)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if b.len() > cut.len() {
        format!("{text:?}...")
    } else {
        format!("{text:?}")
    }
}

/// The name the TLS handshake is for: `sni`, else `virtualhost`'s host, else the address
/// (no SNI is sent for an address; a verified certificate must then name the address).
fn server_name(
    sni: Option<&str>,
    virtualhost: Option<&str>,
    target: SocketAddr,
) -> Result<ServerName<'static>, String> {
    let host = sni.or_else(|| virtualhost.map(host_of));
    match host {
        Some(h) => ServerName::try_from(h.to_string())
            .map_err(|_| format!("{h:?} cannot be sent as a TLS server name")),
        None => Ok(ServerName::IpAddress(target.ip().into())),
    }
}

/// `www.example.com:8443` -> `www.example.com`; `[fd00::1]:443` -> `fd00::1`.
fn host_of(virtualhost: &str) -> &str {
    if let Some(rest) = virtualhost.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match virtualhost.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.parse::<u16>().is_ok() => h,
        _ => virtualhost,
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS client settings: with a CA file, certificates are verified against it; without,
/// any certificate is accepted (keepalived's SSL_GET default), the handshake's signatures
/// still are.
pub(super) fn tls_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let config = match ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("ca_file {}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("ca_file {}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("ca_file {} holds no certificate", path.display()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Accepts any certificate chain, but checks the handshake's signatures with it.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect(status: &[(u16, u16)], re: Option<&str>, digest: Option<&str>) -> Expect {
        Expect {
            status: status
                .iter()
                .map(|&(lo, hi)| StatusRange { lo, hi })
                .collect(),
            body_regex: re.map(|r| regex::bytes::Regex::new(r).unwrap()),
            digest: digest.map(str::to_string),
        }
    }

    #[test]
    fn request_names_host_and_closes() {
        let h = headers(HttpMethod::Get, "[fd00::11]:80").unwrap();
        let pairs: Vec<(&str, &str)> = h
            .iter()
            .map(|(k, v)| (k.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("host", "[fd00::11]:80"),
                ("user-agent", "bascule-healthcheck"),
                ("accept", "*/*"),
                ("connection", "close")
            ]
        );
        let post = headers(HttpMethod::Post, "h").unwrap();
        assert_eq!(post[header::CONTENT_LENGTH], "0");
        assert!(headers(HttpMethod::Get, "bad\nhost").is_err());
    }

    #[test]
    fn verdicts_name_what_was_wrong() {
        let ok = Response {
            status: 200,
            body: b"status: ok\n".to_vec(),
        };
        let at = "10.0.0.11:80/healthz";
        assert_eq!(judge(&expect(&[(200, 200)], None, None), &ok, at), Ok(()));
        let e503 = Response {
            status: 503,
            body: vec![],
        };
        assert_eq!(
            judge(&expect(&[(200, 200)], None, None), &e503, at),
            Err("HTTP 503 from 10.0.0.11:80/healthz".into())
        );
        assert_eq!(
            judge(&expect(&[(200, 299), (500, 503)], None, None), &e503, at),
            Ok(())
        );
        assert_eq!(
            judge(&expect(&[(200, 200)], Some("^status: (ok|degraded)$"), None), &ok, at),
            Err("body of 10.0.0.11:80/healthz does not match /^status: (ok|degraded)$/: \"status: ok \"".into())
        );
        assert_eq!(
            judge(
                &expect(&[(200, 200)], Some("(?m)^status: ok$"), None),
                &ok,
                at
            ),
            Ok(())
        );
        let md5 = md5_hex(b"status: ok\n");
        assert_eq!(
            judge(&expect(&[(200, 200)], None, Some(&md5)), &ok, at),
            Ok(())
        );
        let other = md5_hex(b"something else");
        assert_eq!(
            judge(&expect(&[(200, 200)], None, Some(&other)), &ok, at),
            Err(format!(
                "MD5 of the body of {at} is {md5}, expected {other}"
            ))
        );
    }

    #[test]
    fn md5_matches_md5sum() {
        // printf 'hello\n' | md5sum
        assert_eq!(md5_hex(b"hello\n"), "b1946ac92492d2347c6235b4d2611184");
    }

    #[test]
    fn tls_names() {
        let t: SocketAddr = "10.0.0.11:443".parse().unwrap();
        assert_eq!(host_of("www.example.com:8443"), "www.example.com");
        assert_eq!(host_of("[fd00::1]:443"), "fd00::1");
        assert_eq!(host_of("fd00::1"), "fd00::1");
        assert_eq!(
            server_name(None, Some("www.example.com:8443"), t).unwrap(),
            ServerName::try_from("www.example.com").unwrap()
        );
        assert_eq!(
            server_name(Some("api.example.com"), Some("www.example.com"), t).unwrap(),
            ServerName::try_from("api.example.com").unwrap()
        );
        assert!(matches!(
            server_name(None, None, t).unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
