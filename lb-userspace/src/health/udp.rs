//! `udp`: send a datagram; up when a reply comes (starting with `expect`, if given), or,
//! unless a reply is required, when no ICMP port unreachable comes back within `timeout`
//! (so such a check always lasts `timeout`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::net::UdpSocket;

use super::{
    check::{io_failure, Deadline},
    http::preview,
};

/// Largest reply read.
const MAX_REPLY: usize = 64 * 1024;

pub(super) struct UdpCheck {
    pub target: SocketAddr,
    pub payload: Vec<u8>,
    pub expect: Option<Vec<u8>>,
    pub require_reply: bool,
}

impl UdpCheck {
    pub async fn attempt(&self, deadline: &Deadline) -> Result<(), String> {
        let target = self.target;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let failure = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                format!("connection refused by {target} (ICMP port unreachable)")
            } else {
                io_failure(&e, target)
            }
        };
        socket.connect(target).await.map_err(failure)?;
        socket.send(&self.payload).await.map_err(failure)?;
        let mut buf = vec![0u8; MAX_REPLY];
        match tokio::time::timeout_at(deadline.instant(), socket.recv(&mut buf)).await {
            Ok(Ok(n)) => judge_reply(&buf[..n], self.expect.as_deref(), target),
            Ok(Err(e)) => Err(failure(e)),
            Err(_) if self.require_reply => {
                Err(deadline.expired(&format!("waiting for a UDP reply from {target}")))
            }
            Err(_) => Ok(()),
        }
    }
}

pub(super) fn judge_reply(
    reply: &[u8],
    expect: Option<&[u8]>,
    target: SocketAddr,
) -> Result<(), String> {
    match expect {
        Some(want) if !reply.starts_with(want) => Err(format!(
            "UDP reply of {target} does not start with {}: {}",
            preview(want),
            preview(reply)
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_matched_by_prefix() {
        let t: SocketAddr = "127.0.0.1:5353".parse().unwrap();
        assert_eq!(judge_reply(b"PONG 1", Some(b"PONG"), t), Ok(()));
        assert_eq!(judge_reply(b"anything", None, t), Ok(()));
        assert_eq!(
            judge_reply(b"ERR", Some(b"PONG"), t),
            Err("UDP reply of 127.0.0.1:5353 does not start with \"PONG\": \"ERR\"".into())
        );
    }
}
