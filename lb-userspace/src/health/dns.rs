//! `dns`: one query over UDP; up when the answer has the expected response code and, if
//! asked, the expected value among its answers. The message codec (RFC 1035, section 4)
//! is the few functions below.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::atomic::{AtomicU16, Ordering},
};

use tokio::net::UdpSocket;

use crate::config::{DnsRcode, DnsType, HealthCheck};

use super::check::{io_failure, Deadline};

const CLASS_IN: u16 = 1;
const FLAG_QR: u16 = 0x8000;
const FLAG_RD: u16 = 0x0100;
/// Largest UDP answer read (EDNS is not offered, so 512 would do; be generous).
const MAX_ANSWER: usize = 4096;

static NEXT_ID: AtomicU16 = AtomicU16::new(0);

pub(super) struct DnsCheck {
    target: SocketAddr,
    name: String,
    qtype: DnsType,
    rcode: DnsRcode,
    answer: Option<String>,
}

impl DnsCheck {
    pub fn new(hc: &HealthCheck, target: SocketAddr) -> Result<DnsCheck, String> {
        encode_query(0, &hc.query_name, hc.query_type.code())?;
        Ok(DnsCheck {
            target,
            name: hc.query_name.clone(),
            qtype: hc.query_type,
            rcode: hc.expect_rcode,
            answer: hc.expect_answer.clone(),
        })
    }

    pub async fn attempt(&self, deadline: &Deadline) -> Result<(), String> {
        let target = self.target;
        let id = query_id();
        let query = encode_query(id, &self.name, self.qtype.code())?;
        let local: SocketAddr = match target {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        socket
            .connect(target)
            .await
            .map_err(|e| io_failure(&e, target))?;
        socket
            .send(&query)
            .await
            .map_err(|e| udp_failure(&e, target))?;
        let asked = format!("{}/{}", self.name, self.qtype);
        let mut buf = vec![0u8; MAX_ANSWER];
        loop {
            let n = match tokio::time::timeout_at(deadline.instant(), socket.recv(&mut buf)).await {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => return Err(udp_failure(&e, target)),
                Err(_) => {
                    return Err(deadline.expired(&format!(
                        "waiting for the DNS answer of {target} for {asked}"
                    )))
                }
            };
            // A stray datagram (an old query's late answer) is not ours: keep waiting.
            let Some(answer) = decode_response(&buf[..n], id)
                .map_err(|why| format!("{target} sent a malformed DNS answer: {why}"))?
            else {
                continue;
            };
            return self.judge(&answer, &asked);
        }
    }

    fn judge(&self, answer: &Answer, asked: &str) -> Result<(), String> {
        let target = self.target;
        if answer.rcode != self.rcode.code() {
            return Err(format!(
                "DNS answer of {target} for {asked} is {}, expected {}",
                rcode_name(answer.rcode),
                self.rcode
            ));
        }
        if let Some(want) = &self.answer {
            let of_type: Vec<&Record> = answer
                .records
                .iter()
                .filter(|r| r.rtype == self.qtype.code())
                .collect();
            if !of_type
                .iter()
                .any(|r| same_value(self.qtype, &r.value, want))
            {
                let got: Vec<&str> = of_type.iter().map(|r| r.value.as_str()).collect();
                return Err(format!(
                    "DNS answer of {target} for {asked} does not contain {want} (it has: {})",
                    if got.is_empty() {
                        "nothing".to_string()
                    } else {
                        got.join(", ")
                    }
                ));
            }
        }
        Ok(())
    }
}

fn query_id() -> u16 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    NEXT_ID.fetch_add(1, Ordering::Relaxed) ^ (nanos as u16)
}

fn udp_failure(e: &std::io::Error, target: SocketAddr) -> String {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        format!("connection refused by {target} (ICMP port unreachable)")
    } else {
        io_failure(e, target)
    }
}

/// Compares an answer's rendering with `expect_answer`: addresses as addresses, names
/// without case or final dot, text exactly.
pub(super) fn same_value(qtype: DnsType, got: &str, want: &str) -> bool {
    match qtype {
        DnsType::A | DnsType::Aaaa => got.parse::<IpAddr>().ok() == want.parse::<IpAddr>().ok(),
        DnsType::Txt => got == want,
        _ => {
            let norm = |s: &str| s.trim_end_matches('.').to_ascii_lowercase();
            norm(got) == norm(want)
        }
    }
}

/// A query for `name` (`.` is the root) of type `qtype`, class IN, recursion desired.
pub(super) fn encode_query(id: u16, name: &str, qtype: u16) -> Result<Vec<u8>, String> {
    let mut m = Vec::with_capacity(32 + name.len());
    m.extend_from_slice(&id.to_be_bytes());
    m.extend_from_slice(&FLAG_RD.to_be_bytes());
    m.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]); // 1 question, no other section
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(format!("{name:?} is not a valid DNS name"));
            }
            m.push(label.len() as u8);
            m.extend_from_slice(label.as_bytes());
        }
    }
    m.push(0);
    if m.len() - 12 > 255 {
        return Err(format!("{name:?} is longer than a DNS name may be"));
    }
    m.extend_from_slice(&qtype.to_be_bytes());
    m.extend_from_slice(&CLASS_IN.to_be_bytes());
    Ok(m)
}

/// What a response says.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Answer {
    pub rcode: u8,
    pub records: Vec<Record>,
}

/// One answer record, its value rendered as text (an address, a name, the text).
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Record {
    pub rtype: u16,
    pub value: String,
}

/// Decodes a response to query `id`; `Ok(None)` for a message that is not that
/// response (another id, or a query).
pub(super) fn decode_response(m: &[u8], id: u16) -> Result<Option<Answer>, String> {
    if m.len() < 12 {
        return Err(format!("{} bytes, shorter than a DNS header", m.len()));
    }
    let word = |at: usize| u16::from_be_bytes([m[at], m[at + 1]]);
    let flags = word(2);
    if word(0) != id || flags & FLAG_QR == 0 {
        return Ok(None);
    }
    let rcode = (flags & 0x000f) as u8;
    let (qdcount, ancount) = (word(4), word(6));
    let mut at = 12;
    for _ in 0..qdcount {
        at = skip_name(m, at)? + 4;
    }
    let mut records = Vec::new();
    for _ in 0..ancount {
        at = skip_name(m, at)?;
        let fixed = m.get(at..at + 10).ok_or("answer record cut short")?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let rdlen = u16::from_be_bytes([fixed[8], fixed[9]]) as usize;
        let start = at + 10;
        let rdata = m.get(start..start + rdlen).ok_or("record data cut short")?;
        let value = match rtype {
            1 if rdlen == 4 => Ipv4Addr::new(rdata[0], rdata[1], rdata[2], rdata[3]).to_string(),
            28 if rdlen == 16 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(rdata);
                Ipv6Addr::from(o).to_string()
            }
            2 | 5 | 12 => read_name(m, start)?,
            15 if rdlen > 2 => read_name(m, start + 2)?,
            16 => {
                let mut text = Vec::new();
                let mut i = 0;
                while i < rdata.len() {
                    let n = rdata[i] as usize;
                    text.extend_from_slice(rdata.get(i + 1..i + 1 + n).ok_or("TXT cut short")?);
                    i += 1 + n;
                }
                String::from_utf8_lossy(&text).into_owned()
            }
            _ => String::new(),
        };
        records.push(Record { rtype, value });
        at = start + rdlen;
    }
    Ok(Some(Answer { rcode, records }))
}

/// The offset just after the (possibly compressed) name at `at`.
fn skip_name(m: &[u8], mut at: usize) -> Result<usize, String> {
    loop {
        let len = *m.get(at).ok_or("name cut short")?;
        match len & 0xc0 {
            0xc0 => return Ok(at + 2),
            0 if len == 0 => return Ok(at + 1),
            0 => at += 1 + len as usize,
            _ => return Err(format!("unknown label type {len:#x}")),
        }
    }
}

/// The name at `at`, following compression pointers, as `a.b.c.` (`.` for the root).
fn read_name(m: &[u8], mut at: usize) -> Result<String, String> {
    let mut name = String::new();
    for _ in 0..128 {
        let len = *m.get(at).ok_or("name cut short")?;
        match len & 0xc0 {
            0xc0 => {
                let low = *m.get(at + 1).ok_or("pointer cut short")?;
                at = (usize::from(len & 0x3f) << 8) | usize::from(low);
            }
            0 if len == 0 => {
                if name.is_empty() {
                    name.push('.');
                }
                return Ok(name);
            }
            0 => {
                let label = m
                    .get(at + 1..at + 1 + len as usize)
                    .ok_or("label cut short")?;
                name.push_str(&String::from_utf8_lossy(label));
                name.push('.');
                at += 1 + len as usize;
            }
            _ => return Err(format!("unknown label type {len:#x}")),
        }
    }
    Err("a name with a compression loop".into())
}

pub(super) fn rcode_name(code: u8) -> String {
    [
        DnsRcode::NoError,
        DnsRcode::FormErr,
        DnsRcode::ServFail,
        DnsRcode::NxDomain,
        DnsRcode::NotImp,
        DnsRcode::Refused,
    ]
    .into_iter()
    .find(|r| r.code() == code)
    .map_or_else(|| format!("rcode {code}"), |r| r.to_string())
}

/// A response to `query`, for tests' DNS responders: same id and question, `rcode`,
/// and `answers` (type, rdata) each under a pointer to the question's name.
#[cfg(test)]
pub(super) fn encode_response(query: &[u8], rcode: u8, answers: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let q_end = skip_name(query, 12).expect("query name") + 4;
    let mut m = query[..q_end].to_vec();
    m[2] = 0x81; // QR, RD
    m[3] = 0x80 | rcode; // RA
    m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
    for (rtype, rdata) in answers {
        m.extend_from_slice(&[0xc0, 12]);
        m.extend_from_slice(&rtype.to_be_bytes());
        m.extend_from_slice(&CLASS_IN.to_be_bytes());
        m.extend_from_slice(&300u32.to_be_bytes());
        m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
        m.extend_from_slice(rdata);
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_layout() {
        let q = encode_query(0x1234, "www.example.com", 1).unwrap();
        assert_eq!(
            q,
            [
                &[0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0][..],
                b"\x03www\x07example\x03com\x00",
                &[0, 1, 0, 1]
            ]
            .concat()
        );
        let root = encode_query(1, ".", 6).unwrap();
        assert_eq!(&root[12..], &[0, 0, 6, 0, 1]);
        assert_eq!(
            encode_query(1, "example.com.", 1).unwrap().len(),
            q.len() - 4
        );
        assert!(encode_query(1, &"a".repeat(64), 1).is_err());
    }

    #[test]
    fn responses_decode_with_compression() {
        let q = encode_query(7, "example.com", 1).unwrap();
        let r = encode_response(&q, 0, &[(1, vec![192, 0, 2, 1]), (1, vec![192, 0, 2, 2])]);
        let a = decode_response(&r, 7).unwrap().unwrap();
        assert_eq!(a.rcode, 0);
        assert_eq!(
            a.records
                .iter()
                .map(|r| r.value.as_str())
                .collect::<Vec<_>>(),
            ["192.0.2.1", "192.0.2.2"]
        );
        // A CNAME pointing into the question: "www" + pointer to "example.com".
        let q = encode_query(8, "alias.example.com", 5).unwrap();
        let r = encode_response(&q, 0, &[(5, b"\x03www\xc0\x12".to_vec())]);
        let a = decode_response(&r, 8).unwrap().unwrap();
        assert_eq!(a.records[0].value, "www.example.com.");
        let nx = encode_response(&q, 3, &[]);
        assert_eq!(decode_response(&nx, 8).unwrap().unwrap().rcode, 3);
        // Another id, or our own query echoed back, is not the answer.
        assert_eq!(decode_response(&nx, 9), Ok(None));
        assert_eq!(decode_response(&q, 8), Ok(None));
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(decode_response(&[0; 5], 0).is_err());
        let q = encode_query(7, "example.com", 1).unwrap();
        let mut r = encode_response(&q, 0, &[(1, vec![192, 0, 2, 1])]);
        r.truncate(r.len() - 2);
        assert!(decode_response(&r, 7).is_err());
        // A pointer loop.
        let mut r = encode_response(&q, 0, &[(5, vec![0xc0, 0])]);
        let at = r.len() - 2;
        r[at + 1] = at as u8;
        let n = r.len();
        r[n - 2..].copy_from_slice(&[0xc0, at as u8]);
        assert!(decode_response(&r, 7).is_err());
    }

    #[test]
    fn answers_compare_by_type() {
        assert!(same_value(DnsType::Aaaa, "2001:db8::1", "2001:DB8:0::1"));
        assert!(!same_value(DnsType::A, "192.0.2.1", "192.0.2.10"));
        assert!(same_value(
            DnsType::Cname,
            "WWW.example.com.",
            "www.example.com"
        ));
        assert!(!same_value(DnsType::Txt, "v=spf1", "V=SPF1"));
        assert_eq!(rcode_name(3), "NXDOMAIN");
        assert_eq!(rcode_name(9), "rcode 9");
    }
}
