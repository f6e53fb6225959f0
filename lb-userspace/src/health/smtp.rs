//! `smtp`: a 220 greeting, `HELO` answered 250, then `QUIT` (its answer is not required).

use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use super::{
    check::{connect, io_failure, Deadline},
    http::preview,
};

/// Longest reply read (RFC 5321 lines are at most 512 bytes; a few continuation lines).
const MAX_REPLY: usize = 8 * 1024;

pub(super) struct SmtpCheck {
    pub target: SocketAddr,
    pub helo_name: String,
}

impl SmtpCheck {
    pub async fn attempt(&self, deadline: &Deadline) -> Result<(), String> {
        let target = self.target;
        let mut stream = connect(target, deadline).await?;
        let mut buf = Vec::new();
        let (code, text) = read_reply(&mut stream, &mut buf, deadline, target, "greeting").await?;
        if code != 220 {
            return Err(format!(
                "SMTP greeting of {target} is {code} {text:?}, expected 220"
            ));
        }
        let helo = format!("HELO {}\r\n", self.helo_name);
        send(&mut stream, helo.as_bytes(), deadline, target).await?;
        let (code, text) = read_reply(&mut stream, &mut buf, deadline, target, "HELO").await?;
        if code != 250 {
            return Err(format!(
                "{target} answered HELO with {code} {text:?}, expected 250"
            ));
        }
        // Polite, but the check has succeeded: the answer to QUIT does not matter.
        let _ = send(&mut stream, b"QUIT\r\n", deadline, target).await;
        let _ = read_reply(&mut stream, &mut buf, deadline, target, "QUIT").await;
        Ok(())
    }
}

async fn send(
    stream: &mut TcpStream,
    bytes: &[u8],
    deadline: &Deadline,
    target: SocketAddr,
) -> Result<(), String> {
    match tokio::time::timeout_at(deadline.instant(), stream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(io_failure(&e, target)),
        Err(_) => Err(deadline.expired(&format!("sending to {target}"))),
    }
}

/// Reads one (possibly multi-line) reply; what follows it stays in `buf`.
async fn read_reply(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: &Deadline,
    target: SocketAddr,
    waiting_for: &str,
) -> Result<(u16, String), String> {
    let mut chunk = [0u8; 1024];
    loop {
        if let Some((code, text, used)) =
            parse_reply(buf).map_err(|why| format!("{target} sent {why}"))?
        {
            buf.drain(..used);
            return Ok((code, text));
        }
        if buf.len() > MAX_REPLY {
            return Err(format!(
                "{target} sent an SMTP reply longer than {MAX_REPLY} bytes"
            ));
        }
        let read = tokio::time::timeout_at(deadline.instant(), stream.read(&mut chunk));
        match read.await {
            Ok(Ok(0)) => {
                return Err(format!(
                    "{target} closed the connection before its SMTP {waiting_for} reply"
                ))
            }
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) => return Err(io_failure(&e, target)),
            Err(_) => {
                return Err(deadline.expired(&format!(
                    "waiting for the SMTP {waiting_for} reply of {target}"
                )))
            }
        }
    }
}

/// One SMTP reply from the start of `buf`: lines `CODE-text` then a last `CODE text`.
/// `Ok(None)` until the last line has arrived; returns the code, the last line's text
/// and the bytes used.
pub(super) fn parse_reply(buf: &[u8]) -> Result<Option<(u16, String, usize)>, String> {
    let mut start = 0;
    let mut code = None;
    while let Some(eol) = buf[start..].iter().position(|&b| b == b'\n') {
        let line = &buf[start..start + eol];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let bad = || format!("something that is not an SMTP reply: {}", preview(line));
        if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        let this: u16 = std::str::from_utf8(&line[..3])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if *code.get_or_insert(this) != this {
            return Err(format!(
                "an SMTP reply whose lines disagree on the code: {}",
                preview(line)
            ));
        }
        start += eol + 1;
        match line.get(3) {
            Some(b'-') => continue,
            None | Some(b' ') => {
                let text = String::from_utf8_lossy(line.get(4..).unwrap_or_default())
                    .trim()
                    .to_string();
                return Ok(Some((this, text, start)));
            }
            Some(_) => return Err(bad()),
        }
    }
    if buf.len() - start >= 3 && !buf[start..start + 3].iter().all(u8::is_ascii_digit) {
        return Err(format!(
            "something that is not an SMTP reply: {}",
            preview(&buf[start..])
        ));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line_replies() {
        assert_eq!(
            parse_reply(b"220 mx.example.com ESMTP ready\r\nrest"),
            Ok(Some((220, "mx.example.com ESMTP ready".into(), 32)))
        );
        assert_eq!(parse_reply(b"220 mx.exa"), Ok(None));
        let multi = b"250-mx.example.com\r\n250-PIPELINING\r\n250 8BITMIME\r\n";
        assert_eq!(
            parse_reply(multi),
            Ok(Some((250, "8BITMIME".into(), multi.len())))
        );
        assert_eq!(parse_reply(&multi[..30]), Ok(None));
        assert_eq!(parse_reply(b"221\r\n"), Ok(Some((221, String::new(), 5))));
    }

    #[test]
    fn bad_banners_are_refused() {
        assert_eq!(
            parse_reply(b"SSH-2.0-OpenSSH\r\n"),
            Err("something that is not an SMTP reply: \"SSH-2.0-OpenSSH\"".into())
        );
        assert!(parse_reply(b"HTTP/1.1 400").is_err());
        assert!(parse_reply(b"250-a\r\n251 b\r\n").is_err());
        assert!(parse_reply(b"220x\r\n").is_err());
    }
}
