//! Backends that answer HTTP checks with malice or oddities (a chunk size near 2^64,
//! bodies past the bound, informational responses before the real one): the check ends
//! with a reason, never with a panic, and the next check still runs. Unprivileged: every
//! server is a listener on 127.0.0.1 started by the test.

mod common;

use common::servers::{down, key, read_head, tcp_server, Server};
use std::{sync::Arc, time::Duration};

use bascule::{
    config::{CheckType, Config, HealthCheck},
    health::{probe, HealthSupervisor, Outcome},
};
use tokio::io::AsyncWriteExt;

/// A server writing `answer` to every connection once the request head has arrived, then
/// closing (`close: true`) or holding the connection open until the test ends.
async fn server(answer: Vec<u8>, close: bool) -> Server {
    let answer = Arc::new(answer);
    tcp_server(move |mut conn| {
        let answer = answer.clone();
        async move {
            read_head(&mut conn).await;
            let _ = conn.write_all(&answer).await;
            if close {
                let _ = conn.shutdown().await;
            } else {
                std::future::pending::<()>().await;
            }
        }
    })
    .await
}

fn http_check() -> HealthCheck {
    HealthCheck {
        timeout: Duration::from_millis(500),
        ..HealthCheck::new(CheckType::HttpGet)
    }
}

/// A first chunk, then a size that overflows any "bytes so far + size" sum.
const HOSTILE_CHUNK: &[u8] =
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\nfffffffffffffffe\r\nhello";

#[tokio::test]
async fn a_chunk_size_near_2_64_fails_the_check_with_a_reason() {
    let hostile = server(HOSTILE_CHUNK.to_vec(), true).await;
    let shown = format!("{}/", hostile.addr);
    let mut with_regex = http_check();
    with_regex.body_regex = Some("ok".into());
    let mut with_digest = http_check();
    with_digest.digest = Some("b1946ac92492d2347c6235b4d2611184".into());
    for c in [&with_regex, &with_digest] {
        // Twice: the first failure leaves nothing behind that breaks the next attempt.
        for _ in 0..2 {
            assert_eq!(
                down(probe(c, &key(hostile.addr)).await),
                format!("{shown} closed the connection before the end of the body")
            );
        }
    }
    // A size past 2^64, and one that is not hexadecimal.
    for size in ["1ffffffffffffffff", "zz"] {
        let answer = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\n");
        let malformed = server(answer.into_bytes(), true).await;
        let why = down(probe(&with_regex, &key(malformed.addr)).await);
        assert!(
            why.starts_with(&format!("{}/ answered a malformed body: ", malformed.addr)),
            "{why}"
        );
    }
}

/// Waits (at most 10 s) until the only backend's health satisfies `done`.
async fn wait_for(
    supervisor: &HealthSupervisor,
    what: &str,
    done: impl Fn(&bascule::health::BackendHealth) -> bool,
) -> bascule::health::BackendHealth {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(h) = supervisor.snapshot().into_values().next() {
            if done(&h) {
                return h;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {what} within 10 s: {h:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_supervisor_keeps_checking_a_hostile_backend() {
    let hostile = server(HOSTILE_CHUNK.to_vec(), true).await;
    let yaml = format!(
        "node:\n  interfaces: [{{name: eth0}}]\nservices:\n  - name: web\n    vip: 10.0.0.100\n    port: {}\n    forwarding: tun\n    backends: [{{address: {}}}]\n    health_check: {{type: http_get, body_regex: ok, interval: 50ms, timeout: 500ms, rise: 1, fall: 1, initial_state: up}}\n",
        hostile.addr.port(),
        hostile.addr.ip()
    );
    let cfg = Config::parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    let supervisor = HealthSupervisor::start(tokio::runtime::Handle::current(), &cfg.services);
    let h = wait_for(&supervisor, "down", |h| !h.up).await;
    assert!(h.last_failure.is_some(), "down with a reason: {h:?}");
    let attempts = h.attempts;
    wait_for(&supervisor, "checked again", |h| h.attempts >= attempts + 3).await;
}

#[tokio::test]
async fn bodies_past_one_mib_fail_without_being_read() {
    let mut c = http_check();
    c.body_regex = Some("ok".into());
    // Announced: failed at once, the connection held open would otherwise time out.
    let announced = server(
        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", 2 << 20).into_bytes(),
        false,
    )
    .await;
    assert_eq!(
        down(probe(&c, &key(announced.addr)).await),
        format!(
            "{}/ answered a body of 2097152 bytes; body_regex and digest read at most 1024 KiB",
            announced.addr
        )
    );
    // Chunked: failed once the bound is passed, with the rest never sent.
    let mut chunks = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        chunks.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunks.extend(std::iter::repeat_n(b'x', 64 << 10));
        chunks.extend_from_slice(b"\r\n");
    }
    let streamed = server(chunks, false).await;
    assert_eq!(
        down(probe(&c, &key(streamed.addr)).await),
        format!(
            "{}/ answered a body of more than 1024 KiB; body_regex and digest read at most that",
            streamed.addr
        )
    );
}

#[tokio::test]
async fn informational_responses_come_before_the_answer() {
    let continued = |status: &str, body: &str| {
        format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    };
    let unavailable = server(continued("503 Service Unavailable", ""), true).await;
    assert_eq!(
        down(probe(&http_check(), &key(unavailable.addr)).await),
        format!("HTTP 503 from {}/", unavailable.addr)
    );
    let fine = server(continued("200 OK", "all ok"), true).await;
    assert_eq!(probe(&http_check(), &key(fine.addr)).await, Outcome::Up);
    let mut c = http_check();
    c.body_regex = Some("^all ok$".into());
    assert_eq!(probe(&c, &key(fine.addr)).await, Outcome::Up);
}
