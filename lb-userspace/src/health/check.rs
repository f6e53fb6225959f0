//! One attempt of a check: the outcome type, the per-kind dispatch, and the helpers every
//! checker shares (a deadline for the whole attempt, TCP connect with readable errors).

use std::{fmt, future::Future, io, net::SocketAddr, time::Duration};

use tokio::net::TcpStream;

use crate::config::{format_duration, CheckType, HealthCheck};

use super::{dns, http, misc, ping, smtp, tcp, udp, BackendKey};

/// What one attempt found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Up,
    /// Up, and the check sets the backend's weight (`misc` with `dynamic: true`).
    UpWithWeight(u32),
    /// Down, and why, in words an operator reads in the log.
    Down(String),
}

/// A check of one kind, prepared once for one backend (regexes compiled, TLS configured).
pub(super) enum Checker {
    Tcp(tcp::TcpCheck),
    /// Boxed: a prepared request is large, and the other kinds should not pay for it.
    Http(Box<http::HttpCheck>),
    Smtp(smtp::SmtpCheck),
    Dns(dns::DnsCheck),
    Udp(udp::UdpCheck),
    Ping(ping::PingCheck),
    Misc(misc::MiscCheck),
    /// A test's own attempt, which may panic: the supervisor's tests run it.
    #[cfg(test)]
    Scripted(Box<dyn Fn() -> Outcome + Send + Sync>),
}

/// What every attempt of a supervisor shares.
pub(super) struct Shared {
    pub pinger: ping::Pinger,
}

impl Checker {
    /// Prepares `hc` for the backend `key`. An error (unreadable CA file, say) is reported
    /// as the reason of every attempt's failure.
    pub fn new(hc: &HealthCheck, key: &BackendKey) -> Result<Checker, String> {
        let target = SocketAddr::new(key.address, hc.connect_port.unwrap_or(key.port));
        Ok(match hc.kind {
            CheckType::Tcp => Checker::Tcp(tcp::TcpCheck { target }),
            CheckType::HttpGet | CheckType::SslGet => {
                Checker::Http(Box::new(http::HttpCheck::new(hc, target)?))
            }
            CheckType::Smtp => Checker::Smtp(smtp::SmtpCheck {
                target,
                helo_name: hc.helo_name.clone(),
            }),
            CheckType::Dns => Checker::Dns(dns::DnsCheck::new(hc, target)?),
            CheckType::Udp => Checker::Udp(udp::UdpCheck {
                target,
                payload: hc.payload.clone(),
                expect: hc.expect.clone(),
                require_reply: hc.require_reply || hc.expect.is_some(),
            }),
            CheckType::Ping => Checker::Ping(ping::PingCheck {
                target: key.address,
            }),
            CheckType::Misc => Checker::Misc(misc::MiscCheck::new(hc, key)),
        })
    }

    /// Runs one attempt, bounded by `timeout`.
    pub async fn attempt(&self, shared: &Shared, timeout: Duration) -> Outcome {
        let deadline = Deadline::after(timeout);
        let result = match self {
            Checker::Tcp(c) => c.attempt(&deadline).await,
            Checker::Http(c) => c.attempt(&deadline).await,
            Checker::Smtp(c) => c.attempt(&deadline).await,
            Checker::Dns(c) => c.attempt(&deadline).await,
            Checker::Udp(c) => c.attempt(&deadline).await,
            Checker::Ping(c) => c.attempt(&shared.pinger, &deadline).await,
            Checker::Misc(c) => return c.attempt(timeout).await,
            #[cfg(test)]
            Checker::Scripted(attempt) => return attempt(),
        };
        match result {
            Ok(()) => Outcome::Up,
            Err(reason) => Outcome::Down(reason),
        }
    }
}

/// The end of an attempt: every step of it runs against the same deadline, and says what
/// it was doing when the deadline passed.
pub(super) struct Deadline {
    at: tokio::time::Instant,
    timeout: Duration,
}

impl Deadline {
    pub fn after(timeout: Duration) -> Deadline {
        Deadline {
            at: tokio::time::Instant::now() + timeout,
            timeout,
        }
    }

    /// Runs `step`; its error becomes `"{doing}: {error}"`, running out of time
    /// `"{doing}: no answer within 1s"`.
    pub async fn run<T, E: fmt::Display>(
        &self,
        doing: impl Fn() -> String,
        step: impl Future<Output = Result<T, E>>,
    ) -> Result<T, String> {
        match tokio::time::timeout_at(self.at, step).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(format!("{}: {e}", doing())),
            Err(_) => Err(format!(
                "{}: no answer within {}",
                doing(),
                format_duration(self.timeout)
            )),
        }
    }

    /// The message for running out of time while `doing`.
    pub fn expired(&self, doing: &str) -> String {
        format!("no answer within {} {doing}", format_duration(self.timeout))
    }

    pub fn instant(&self) -> tokio::time::Instant {
        self.at
    }
}

/// Connects to `target` before the deadline; errors read "connection refused by
/// 10.0.0.11:80", "no answer within 1s connecting to 10.0.0.11:80".
pub(super) async fn connect(target: SocketAddr, deadline: &Deadline) -> Result<TcpStream, String> {
    match tokio::time::timeout_at(deadline.instant(), TcpStream::connect(target)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(io_failure(&e, target)),
        Err(_) => Err(deadline.expired(&format!("connecting to {target}"))),
    }
}

/// An I/O error talking to `target`, worded for the log.
pub(super) fn io_failure(e: &io::Error, target: SocketAddr) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => format!("connection refused by {target}"),
        io::ErrorKind::ConnectionReset => format!("connection reset by {target}"),
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH) => format!("{target}: host unreachable"),
            Some(libc::ENETUNREACH) => format!("{target}: network unreachable"),
            _ => format!("{target}: {}", strip_os_error(e)),
        },
    }
}

/// "Connection refused (os error 111)" -> "connection refused".
fn strip_os_error(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error") {
        Some(at) => &text[..at],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}
