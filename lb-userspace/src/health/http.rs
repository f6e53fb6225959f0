//! `http_get` and `ssl_get`: an HTTP/1.1 request (over TLS for ssl_get), judged by its
//! status, and optionally its body against a regular expression and an MD5 digest
//! (keepalived's `digest`).
//!
//! The client is small on purpose: one request per connection (`Connection: close`),
//! bodies framed by Content-Length, chunked encoding or the end of the connection, at most
//! [`MAX_BODY`] bytes kept. The parsing and the verdict are plain functions.

use std::{net::SocketAddr, path::Path, sync::Arc};

use md5::{Digest, Md5};
use rustls::{
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::{CheckType, HealthCheck, HttpMethod, StatusRange};

use super::check::{connect, io_failure, Deadline};

/// Largest response head, and largest body kept for `body_regex` and `digest`.
const MAX_HEAD: usize = 64 * 1024;
pub(super) const MAX_BODY: usize = 1024 * 1024;

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
}

pub(super) struct HttpCheck {
    target: SocketAddr,
    request: Vec<u8>,
    method: HttpMethod,
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
        Ok(HttpCheck {
            target,
            request: request(hc.method, &hc.path, &host),
            method: hc.method,
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
        let response = match &self.tls {
            None => self.exchange(tcp, deadline).await?,
            Some((connector, name)) => {
                let tls = deadline
                    .run(
                        || format!("TLS handshake with {}", self.target),
                        connector.connect(name.clone(), tcp),
                    )
                    .await?;
                self.exchange(tls, deadline).await?
            }
        };
        judge(&self.expect, &response, &self.shown)
    }

    async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        mut stream: S,
        deadline: &Deadline,
    ) -> Result<Response, String> {
        let target = self.target;
        let wrote = tokio::time::timeout_at(deadline.instant(), stream.write_all(&self.request));
        match wrote.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(format!("sending the request: {}", io_failure(&e, target))),
            Err(_) => return Err(deadline.expired(&format!("sending the request to {target}"))),
        }
        let need_body = self.expect.needs_body();
        let mut buf = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let progress = parse_response(&buf, self.method, need_body, false)
                .map_err(|why| format!("{} answered {why}", self.shown))?;
            if let Some(response) = progress {
                return Ok(response);
            }
            let read = tokio::time::timeout_at(deadline.instant(), stream.read(&mut chunk));
            let n = match read.await {
                Ok(Ok(n)) => n,
                // TLS peers often close without close_notify: the end of the body all the same.
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
                Ok(Err(e)) => {
                    return Err(format!("reading the answer: {}", io_failure(&e, target)))
                }
                Err(_) => {
                    return Err(
                        deadline.expired(&format!("waiting for the answer of {}", self.shown))
                    )
                }
            };
            if n == 0 {
                return parse_response(&buf, self.method, need_body, true)
                    .map_err(|why| format!("{} answered {why}", self.shown))?
                    .ok_or_else(|| {
                        format!(
                            "{} closed the connection before a complete answer",
                            self.shown
                        )
                    });
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > MAX_HEAD + MAX_BODY + 64 * 1024 {
                return Err(format!(
                    "{} answered more than {} KiB; body_regex and digest read at most {} KiB",
                    self.shown,
                    (MAX_HEAD + MAX_BODY) / 1024,
                    MAX_BODY / 1024
                ));
            }
        }
    }
}

/// The request bytes.
pub(super) fn request(method: HttpMethod, path: &str, host: &str) -> Vec<u8> {
    let method = match method {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Options => "OPTIONS",
    };
    let length = if method == "POST" {
        "Content-Length: 0\r\n"
    } else {
        ""
    };
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: bascule-healthcheck\r\nAccept: */*\r\n{length}Connection: close\r\n\r\n"
    )
    .into_bytes()
}

/// A response, with its body when the check needs it.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

/// Reads a response from `buf` (what arrived so far; `closed`: the peer closed after it).
/// `Ok(None)`: more bytes are needed. Without `need_body`, the head is enough.
pub(super) fn parse_response(
    buf: &[u8],
    method: HttpMethod,
    need_body: bool,
    closed: bool,
) -> Result<Option<Response>, String> {
    let Some(head_len) = find(buf, b"\r\n\r\n").map(|at| at + 4) else {
        if buf.len() > MAX_HEAD {
            return Err(format!("a head longer than {} KiB", MAX_HEAD / 1024));
        }
        if !buf.is_empty() && !buf.starts_with(&b"HTTP/"[..buf.len().min(5)]) {
            return Err(format!("something that is not HTTP: {}", preview(buf)));
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..head_len]).map_err(|_| "a head that is not text".to_string())?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| format!("something that is not HTTP: {}", preview(buf)))?;
    if !need_body {
        return Ok(Some(Response {
            status,
            body: Vec::new(),
        }));
    }
    let mut length = None;
    let mut chunked = false;
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(format!("a malformed header line {line:?}"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("an invalid Content-Length {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value
                .rsplit(',')
                .next()
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("chunked"));
        }
    }
    let rest = &buf[head_len..];
    let no_body = method == HttpMethod::Head || status / 100 == 1 || status == 204 || status == 304;
    let body = if no_body {
        Some(Vec::new())
    } else if chunked {
        decode_chunked(rest)?
    } else if let Some(n) = length {
        if n > MAX_BODY {
            return Err(format!(
                "a body of {n} bytes; body_regex and digest read at most {} KiB",
                MAX_BODY / 1024
            ));
        }
        (rest.len() >= n).then(|| rest[..n].to_vec())
    } else if closed {
        Some(rest.to_vec())
    } else {
        None
    };
    Ok(body.map(|body| Response { status, body }))
}

/// `HTTP/1.1 200 OK` -> 200.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/") {
        return None;
    }
    let code = parts.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// A chunked body: `Ok(None)` until the final empty chunk has arrived.
pub(super) fn decode_chunked(mut buf: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = find(buf, b"\r\n") else {
            return Ok(None);
        };
        let size_text = std::str::from_utf8(&buf[..eol]).unwrap_or("?");
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("a malformed chunk size {size_text:?}"))?;
        buf = &buf[eol + 2..];
        if size == 0 {
            // Trailers may follow; the body is complete either way.
            return Ok(Some(body));
        }
        if body.len() + size > MAX_BODY {
            return Err(format!(
                "a body of more than {} KiB; body_regex and digest read at most that",
                MAX_BODY / 1024
            ));
        }
        if buf.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[..size]);
        if &buf[size..size + 2] != b"\r\n" {
            return Err("a chunk not followed by CRLF".into());
        }
        buf = &buf[size + 2..];
    }
}

/// The verdict on a response to what `shown` names.
pub(super) fn judge(expect: &Expect, response: &Response, shown: &str) -> Result<(), String> {
    if !expect.status.iter().any(|r| r.contains(response.status)) {
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

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
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

    fn parse(buf: &str, need_body: bool, closed: bool) -> Result<Option<Response>, String> {
        parse_response(buf.as_bytes(), HttpMethod::Get, need_body, closed)
    }

    #[test]
    fn request_names_host_and_closes() {
        let r = request(HttpMethod::Get, "/healthz?x=1", "[fd00::11]:80");
        assert_eq!(
            String::from_utf8(r).unwrap(),
            "GET /healthz?x=1 HTTP/1.1\r\nHost: [fd00::11]:80\r\nUser-Agent: bascule-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        );
        let post = String::from_utf8(request(HttpMethod::Post, "/", "h")).unwrap();
        assert!(post.starts_with("POST / HTTP/1.1\r\n"));
        assert!(post.contains("Content-Length: 0\r\n"));
    }

    #[test]
    fn head_only_when_no_body_is_needed() {
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\nContent-Le", false, false),
            Ok(None)
        );
        assert_eq!(
            parse(
                "HTTP/1.0 503 Service Unavailable\r\n\r\npartial",
                false,
                false
            ),
            Ok(Some(Response {
                status: 503,
                body: vec![]
            }))
        );
    }

    #[test]
    fn bodies_by_length_chunks_or_close() {
        let by_length = "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(
            parse(&by_length[..by_length.len() - 1], true, false),
            Ok(None)
        );
        assert_eq!(
            parse(by_length, true, false).unwrap().unwrap().body,
            b"hello"
        );
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nWiki\r\n6\r\npedia \r\n0\r\n\r\n";
        assert_eq!(
            parse(chunked, true, false).unwrap().unwrap().body,
            b"Wikipedia "
        );
        assert_eq!(parse(&chunked[..chunked.len() - 6], true, false), Ok(None));
        let until_close = "HTTP/1.0 200 OK\r\n\r\nall of it";
        assert_eq!(parse(until_close, true, false), Ok(None));
        assert_eq!(
            parse(until_close, true, true).unwrap().unwrap().body,
            b"all of it"
        );
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", true, false)
                .unwrap()
                .unwrap()
                .body,
            b""
        );
    }

    #[test]
    fn garbage_is_not_http() {
        assert_eq!(
            parse("SSH-2.0-OpenSSH_9.2\r\n", false, false),
            Err("something that is not HTTP: \"SSH-2.0-OpenSSH_9.2  \"".into())
        );
        assert_eq!(parse("HTT", false, false), Ok(None));
        assert!(parse("HTTP/1.1 2000 OK\r\n\r\n", false, false).is_err());
        assert!(parse(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            true,
            false
        )
        .is_err());
        let huge = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(parse(&huge, true, false).unwrap_err().contains("at most"));
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
