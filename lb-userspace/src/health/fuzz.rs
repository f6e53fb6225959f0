//! The checkers' decoders of what a backend sends, reachable from the fuzz targets
//! (`fuzz/` at the workspace root) and their regression tests. Each entry takes raw
//! bytes as the network delivers them and must never panic, whatever they are.

use std::{net::SocketAddr, time::Duration};

use crate::config::{DnsType, HealthCheck};

use super::{check::Deadline, dns, http::HttpCheck, ping, smtp, udp};

/// A DNS answer: the first two bytes are the query id awaited, the rest the datagram.
/// Returns what the checker would read of it (`None`: not the awaited answer).
pub fn dns_response(data: &[u8]) -> Option<String> {
    let id = u16::from_be_bytes([*data.first()?, *data.get(1)?]);
    let message = &data[2..];
    match dns::decode_response(message, id) {
        Ok(Some(answer)) => {
            let mut seen = dns::rcode_name(answer.rcode);
            for r in &answer.records {
                for t in [DnsType::A, DnsType::Aaaa, DnsType::Txt, DnsType::Cname] {
                    dns::same_value(t, &r.value, "example.");
                }
                seen.push_str(&r.value);
            }
            Some(seen)
        }
        Ok(None) => None,
        Err(why) => Some(why),
    }
}

/// SMTP replies read one after the other from `data`, as the checker reads the
/// greeting, then the answer to `HELO`, then to `QUIT`.
pub fn smtp_replies(data: &[u8]) -> Vec<Result<(u16, String), String>> {
    let mut buf = data.to_vec();
    let mut replies = Vec::new();
    for _ in 0..3 {
        match smtp::parse_reply(&buf) {
            Ok(Some((code, text, used))) => {
                buf.drain(..used);
                replies.push(Ok((code, text)));
            }
            Ok(None) => break,
            Err(why) => {
                replies.push(Err(why));
                break;
            }
        }
    }
    replies
}

/// An ICMP message as the ping checker's sockets deliver it; the first byte says which
/// socket: bit 0 IPv6, bit 1 raw (IPv4 with its IP header).
pub fn icmp_message(data: &[u8]) -> Option<String> {
    let how = *data.first()?;
    ping::parse_reply(&data[1..], how & 1 != 0, how & 2 != 0).map(|h| format!("{h:?}"))
}

/// A UDP check's reply, the first byte the length of the `expect` prefix taken from
/// the rest.
pub fn udp_reply(data: &[u8]) -> Result<(), String> {
    let split = usize::from(*data.first().unwrap_or(&0)).min(data.len().saturating_sub(1));
    let (expect, reply) = data.get(1..).unwrap_or_default().split_at(split);
    let target: SocketAddr = ([127, 0, 0, 1], 53).into();
    udp::judge_reply(reply, Some(expect).filter(|e| !e.is_empty()), target)
}

/// An HTTP check of `check` (an `http_get`) whose backend reads the request's head, then
/// answers `data` and closes:
/// the verdict, within one second (the backend closes its side once it has answered).
pub fn http_response(check: &HealthCheck, data: &[u8]) -> Result<(), String> {
    let target: SocketAddr = ([127, 0, 0, 1], 80).into();
    let http = HttpCheck::new(check, target)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    runtime.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let answer = data.to_vec();
        let backend = tokio::spawn(async move {
            // The request's head first (what it asks does not matter), then the answer.
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(&answer).await;
            let _ = server.shutdown().await;
            // Keeps the request's side open until the exchange ends.
            std::future::pending::<()>().await;
        });
        let deadline = Deadline::after(Duration::from_secs(1));
        let verdict = http.over(client, &deadline).await;
        backend.abort();
        verdict
    })
}
