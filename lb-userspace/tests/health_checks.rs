//! Every checker against a real server this test starts on loopback: success and each way
//! it fails (refused, timeout, wrong status, wrong body, bad banner, wrong rcode...), and
//! rise/fall against a flapping server. ICMP runs in a network namespace of its own (root).

mod common;

use common::servers::{down, key, read_head, tcp_server, Server, LOCALHOST};

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use bascule::{
    config::{CheckType, Config, DnsRcode, DnsType, HealthCheck, StatusRange},
    health::{probe, HealthSupervisor, Outcome},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream, UdpSocket},
};

const TIMEOUT: Duration = Duration::from_millis(500);

fn check(kind: CheckType) -> HealthCheck {
    HealthCheck {
        timeout: TIMEOUT,
        ..HealthCheck::new(kind)
    }
}

/// A loopback port nothing listens on (bound, then closed).
async fn closed_port() -> SocketAddr {
    let l = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    l.local_addr().unwrap()
}

/// An HTTP server answering `response(n, head)` to the n-th request (from 0), and
/// remembering the request heads.
async fn http_server(
    response: impl Fn(usize, &str) -> String + Send + Sync + 'static,
) -> (Server, Arc<Mutex<Vec<String>>>) {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let (seen, response) = (heads.clone(), Arc::new(response));
    let server = tcp_server(move |mut conn| {
        let (seen, response, count) = (seen.clone(), response.clone(), count.clone());
        async move {
            let head = read_head(&mut conn).await;
            let n = count.fetch_add(1, Ordering::SeqCst);
            let answer = response(n, &head);
            seen.lock().unwrap().push(head);
            let _ = conn.write_all(answer.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    })
    .await;
    (server, heads)
}

fn http_response(status: u16, body: &str) -> String {
    format!(
        "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// A server that accepts and then says nothing (connections held until the test ends).
async fn silent_server() -> Server {
    let held = Arc::new(Mutex::new(Vec::new()));
    tcp_server(move |conn| {
        held.lock().unwrap().push(conn);
        async {}
    })
    .await
}

#[tokio::test]
async fn tcp_connects_and_reports_refused_and_timeout() {
    let server = silent_server().await;
    assert_eq!(
        probe(&check(CheckType::Tcp), &key(server.addr)).await,
        Outcome::Up
    );
    // connect_port overrides the backend's port.
    let elsewhere = closed_port().await;
    let mut c = check(CheckType::Tcp);
    c.connect_port = Some(server.addr.port());
    assert_eq!(probe(&c, &key(elsewhere)).await, Outcome::Up);

    let refused = closed_port().await;
    assert_eq!(
        down(probe(&check(CheckType::Tcp), &key(refused)).await),
        format!("connection refused by {refused}")
    );

    // A listener whose accept queue is full drops new SYNs: connect times out.
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&SocketAddr::new(LOCALHOST, 0).into()).unwrap();
    full.listen(0).unwrap();
    let full_addr = full.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..3 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full_addr)).await
        {
            fillers.push(s);
        }
    }
    assert!(!fillers.is_empty(), "could not fill the accept queue");
    assert_eq!(
        down(probe(&check(CheckType::Tcp), &key(full_addr)).await),
        format!("no answer within 500ms connecting to {full_addr}")
    );
}

#[tokio::test]
async fn http_get_judges_status_body_and_digest() {
    let (server, heads) = http_server(|_, head| {
        if head.starts_with("GET /healthz ") {
            http_response(200, "status: ok\n")
        } else if head.starts_with("GET /maintenance ") {
            http_response(503, "down for maintenance\n")
        } else {
            http_response(404, "")
        }
    })
    .await;
    let at = key(server.addr);
    let mut c = check(CheckType::HttpGet);
    c.path = "/healthz".into();
    c.virtualhost = Some("www.example.com".into());
    assert_eq!(probe(&c, &at).await, Outcome::Up);
    let head = heads.lock().unwrap().last().cloned().unwrap();
    assert!(head.starts_with("GET /healthz HTTP/1.1\r\n"), "{head}");
    assert!(head.contains("\r\nHost: www.example.com\r\n"), "{head}");

    // Wrong status, then the same status accepted through a range.
    c.path = "/maintenance".into();
    assert_eq!(
        down(probe(&c, &at).await),
        format!("HTTP 503 from {}/maintenance", server.addr)
    );
    c.expect_status = vec![
        StatusRange { lo: 200, hi: 299 },
        StatusRange { lo: 500, hi: 503 },
    ];
    assert_eq!(probe(&c, &at).await, Outcome::Up);

    // Body regex and MD5 digest (md5sum of "status: ok\n").
    c.path = "/healthz".into();
    c.expect_status = vec![StatusRange { lo: 200, hi: 200 }];
    c.body_regex = Some("^status: (ok|degraded)$".into());
    assert_eq!(
        down(probe(&c, &at).await),
        format!(
            "body of {}/healthz does not match /^status: (ok|degraded)$/: \"status: ok \"",
            server.addr
        )
    );
    c.body_regex = Some("(?m)^status: ok$".into());
    assert_eq!(probe(&c, &at).await, Outcome::Up);
    c.digest = Some("5b4ec3ef5bda1e1bd9a9e0c4ba8d4ba0".into());
    let why = down(probe(&c, &at).await);
    assert!(
        why.starts_with(&format!("MD5 of the body of {}/healthz is ", server.addr))
            && why.ends_with(", expected 5b4ec3ef5bda1e1bd9a9e0c4ba8d4ba0"),
        "{why}"
    );
    let real = why
        .split(" is ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    c.digest = Some(real);
    assert_eq!(probe(&c, &at).await, Outcome::Up);
}

#[tokio::test]
async fn http_get_reads_chunked_bodies_and_refuses_what_is_not_http() {
    let (chunked, _) = http_server(|_, _| {
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n5\r\n good\r\n0\r\n\r\n"
            .into()
    })
    .await;
    let mut c = check(CheckType::HttpGet);
    c.body_regex = Some("^all good$".into());
    assert_eq!(probe(&c, &key(chunked.addr)).await, Outcome::Up);

    let (ssh, _) = http_server(|_, _| "SSH-2.0-OpenSSH_9.2\r\n".into()).await;
    assert_eq!(
        down(probe(&check(CheckType::HttpGet), &key(ssh.addr)).await),
        format!(
            "{}/ answered something that is not HTTP: \"SSH-2.0-OpenSSH_9.2  \"",
            ssh.addr
        )
    );
}

#[tokio::test]
async fn http_get_reports_refused_and_timeout() {
    let refused = closed_port().await;
    assert_eq!(
        down(probe(&check(CheckType::HttpGet), &key(refused)).await),
        format!("connection refused by {refused}")
    );
    let silent = silent_server().await;
    assert_eq!(
        down(probe(&check(CheckType::HttpGet), &key(silent.addr)).await),
        format!(
            "no answer within 500ms waiting for the answer of {}/",
            silent.addr
        )
    );
}

/// A CA and a certificate it signed for `localhost` and 127.0.0.1.
struct Pki {
    ca_pem: String,
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
}

fn pki(ca_name: &str) -> Pki {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut leaf_params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    leaf_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let leaf = leaf_params.signed_by(&leaf_key, &ca).unwrap();
    Pki {
        ca_pem: ca.pem(),
        chain: vec![leaf.der().clone()],
        key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    }
}

/// An HTTPS server answering 200 to everything, recording the SNI names it was sent.
async fn https_server(pki: &Pki) -> (Server, Arc<Mutex<Vec<Option<String>>>>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(pki.chain.clone(), pki.key.clone_key())
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let names = Arc::new(Mutex::new(Vec::new()));
    let seen = names.clone();
    let server = tcp_server(move |conn| {
        let (acceptor, seen) = (acceptor.clone(), seen.clone());
        async move {
            let Ok(mut tls) = acceptor.accept(conn).await else {
                return;
            };
            seen.lock()
                .unwrap()
                .push(tls.get_ref().1.server_name().map(str::to_string));
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls
                .write_all(http_response(200, "secure\n").as_bytes())
                .await;
            let _ = tls.shutdown().await;
        }
    })
    .await;
    (server, names)
}

#[tokio::test]
async fn ssl_get_with_sni_and_certificate_verification() {
    let pki = pki("bascule test CA");
    let (server, names) = https_server(&pki).await;
    let dir = std::env::temp_dir().join(format!("bascule-health-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();
    let other_ca = dir.join("other-ca.pem");
    std::fs::write(&other_ca, self::pki("another CA").ca_pem).unwrap();
    let at = key(server.addr);

    // Without a CA file any certificate is accepted (keepalived's SSL_GET).
    let mut c = check(CheckType::SslGet);
    c.body_regex = Some("secure".into());
    assert_eq!(probe(&c, &at).await, Outcome::Up);
    assert_eq!(
        names.lock().unwrap().pop(),
        Some(None),
        "no SNI for an address"
    );

    // Verified against the CA, for the name sent as SNI.
    c.ca_file = Some(ca_file.clone());
    c.sni = Some("localhost".into());
    assert_eq!(probe(&c, &at).await, Outcome::Up);
    assert_eq!(
        names.lock().unwrap().pop(),
        Some(Some("localhost".to_string()))
    );
    // Without SNI the certificate must name the address: it does (127.0.0.1).
    c.sni = None;
    assert_eq!(probe(&c, &at).await, Outcome::Up);

    // A name the certificate does not hold; a CA that did not sign it.
    c.sni = Some("www.example.com".into());
    let why = down(probe(&c, &at).await);
    assert!(
        why.starts_with(&format!("TLS handshake with {}: ", server.addr))
            && why.contains("not valid for name"),
        "{why}"
    );
    c.sni = Some("localhost".into());
    c.ca_file = Some(other_ca);
    let why = down(probe(&c, &at).await);
    assert!(why.contains("UnknownIssuer"), "{why}");

    // TLS to a plain HTTP server (that answers at once), and to a silent one.
    let plain = tcp_server(|mut conn| async move {
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
    })
    .await;
    let why = down(probe(&check(CheckType::SslGet), &key(plain.addr)).await);
    assert!(
        why.starts_with(&format!("TLS handshake with {}: ", plain.addr)),
        "{why}"
    );
    let silent = silent_server().await;
    assert_eq!(
        down(probe(&check(CheckType::SslGet), &key(silent.addr)).await),
        format!("TLS handshake with {}: no answer within 500ms", silent.addr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// An SMTP responder: `banner` first, `helo_reply` to the first line, 221 to QUIT.
/// Records the lines the client sent.
async fn smtp_server(
    banner: &'static str,
    helo_reply: &'static str,
) -> (Server, Arc<Mutex<Vec<String>>>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = lines.clone();
    let server = tcp_server(move |conn| {
        let seen = seen.clone();
        async move {
            let (read, mut write) = conn.into_split();
            let mut read = BufReader::new(read);
            let _ = write.write_all(banner.as_bytes()).await;
            let mut line = String::new();
            while read.read_line(&mut line).await.unwrap_or(0) > 0 {
                seen.lock().unwrap().push(line.clone());
                let reply = if line.starts_with("QUIT") {
                    "221 bye\r\n"
                } else {
                    helo_reply
                };
                let _ = write.write_all(reply.as_bytes()).await;
                if line.starts_with("QUIT") {
                    return;
                }
                line.clear();
            }
        }
    })
    .await;
    (server, lines)
}

#[tokio::test]
async fn smtp_needs_a_220_greeting_and_250_to_helo() {
    let (good, lines) = smtp_server(
        "220-mx.example.com ESMTP\r\n220 ready\r\n",
        "250 mx.example.com\r\n",
    )
    .await;
    let mut c = check(CheckType::Smtp);
    c.helo_name = "lb1.example.com".into();
    assert_eq!(probe(&c, &key(good.addr)).await, Outcome::Up);
    assert_eq!(
        *lines.lock().unwrap(),
        vec![
            "HELO lb1.example.com\r\n".to_string(),
            "QUIT\r\n".to_string()
        ]
    );

    let (busy, _) = smtp_server("554 too busy\r\n", "250 ok\r\n").await;
    assert_eq!(
        down(probe(&c, &key(busy.addr)).await),
        format!(
            "SMTP greeting of {} is 554 \"too busy\", expected 220",
            busy.addr
        )
    );
    let (picky, _) = smtp_server("220 ready\r\n", "501 bad HELO\r\n").await;
    assert_eq!(
        down(probe(&c, &key(picky.addr)).await),
        format!(
            "{} answered HELO with 501 \"bad HELO\", expected 250",
            picky.addr
        )
    );
    let (ssh, _) = smtp_server("SSH-2.0-OpenSSH_9.2\r\n", "").await;
    assert_eq!(
        down(probe(&c, &key(ssh.addr)).await),
        format!(
            "{} sent something that is not an SMTP reply: \"SSH-2.0-OpenSSH_9.2\"",
            ssh.addr
        )
    );
    let silent = silent_server().await;
    assert_eq!(
        down(probe(&c, &key(silent.addr)).await),
        format!(
            "no answer within 500ms waiting for the SMTP greeting reply of {}",
            silent.addr
        )
    );
}

/// A DNS responder on UDP: answers every query with `rcode` and, for type A queries,
/// one A record per address in `addresses`.
async fn dns_server(rcode: u8, addresses: &'static [[u8; 4]]) -> Server {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = &buf[..n];
            // Header (12 bytes), then the question's name, type and class.
            let mut end = 12;
            while query[end] != 0 {
                end += 1 + query[end] as usize;
            }
            let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
            end += 5;
            let mut m = query[..end].to_vec();
            m[2] = 0x81;
            m[3] = 0x80 | rcode;
            let answers: &[[u8; 4]] = if qtype == 1 { addresses } else { &[] };
            m[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
            for a in answers {
                m.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 0, 0, 4]);
                m.extend_from_slice(a);
            }
            let _ = socket.send_to(&m, from).await;
        }
    });
    Server::new(addr, task)
}

#[tokio::test]
async fn dns_checks_rcode_and_answer() {
    let server = dns_server(0, &[[192, 0, 2, 1], [192, 0, 2, 2]]).await;
    let at = key(server.addr);
    let mut c = check(CheckType::Dns);
    assert_eq!(
        probe(&c, &at).await,
        Outcome::Up,
        "SOA of the root, NOERROR"
    );
    c.query_name = "www.example.com".into();
    c.query_type = DnsType::A;
    c.expect_answer = Some("192.0.2.2".into());
    assert_eq!(probe(&c, &at).await, Outcome::Up);
    c.expect_answer = Some("192.0.2.9".into());
    assert_eq!(
        down(probe(&c, &at).await),
        format!(
            "DNS answer of {} for www.example.com/A does not contain 192.0.2.9 (it has: 192.0.2.1, 192.0.2.2)",
            server.addr
        )
    );

    let nx = dns_server(3, &[]).await;
    c.expect_answer = None;
    assert_eq!(
        down(probe(&c, &key(nx.addr)).await),
        format!(
            "DNS answer of {} for www.example.com/A is NXDOMAIN, expected NOERROR",
            nx.addr
        )
    );
    c.expect_rcode = DnsRcode::NxDomain;
    assert_eq!(probe(&c, &key(nx.addr)).await, Outcome::Up);

    // Nothing listening: the ICMP port unreachable refuses it.
    let closed = UdpSocket::bind((LOCALHOST, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    assert_eq!(
        down(probe(&c, &key(closed)).await),
        format!("connection refused by {closed} (ICMP port unreachable)")
    );
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    assert_eq!(
        down(probe(&c, &key(silent_addr)).await),
        format!("no answer within 500ms waiting for the DNS answer of {silent_addr} for www.example.com/A")
    );
}

#[tokio::test]
async fn udp_expects_a_reply_or_no_port_unreachable() {
    let echo = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            let _ = echo.send_to(&buf[..n], from).await;
        }
    });
    let _echo = Server::new(echo_addr, task);
    let mut c = check(CheckType::Udp);
    c.payload = b"PING 1".to_vec();
    c.expect = Some(b"PING".to_vec());
    assert_eq!(probe(&c, &key(echo_addr)).await, Outcome::Up);
    c.expect = Some(b"PONG".to_vec());
    assert_eq!(
        down(probe(&c, &key(echo_addr)).await),
        format!("UDP reply of {echo_addr} does not start with \"PONG\": \"PING 1\"")
    );

    let closed = UdpSocket::bind((LOCALHOST, 0))
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    c.expect = None;
    assert_eq!(
        down(probe(&c, &key(closed)).await),
        format!("connection refused by {closed} (ICMP port unreachable)")
    );
    // A silent service is up unless a reply is required.
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    assert_eq!(probe(&c, &key(silent_addr)).await, Outcome::Up);
    c.require_reply = true;
    assert_eq!(
        down(probe(&c, &key(silent_addr)).await),
        format!("no answer within 500ms waiting for a UDP reply from {silent_addr}")
    );
}

/// Runs `f` on a thread inside a network namespace of its own, with its own runtime.
fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        common::enter_private_netns().expect("a network namespace (run as root)");
        f()
    })
    .join()
    .expect("the namespace thread panicked")
}

fn write_sysctl(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("cannot set {path}: {e}"));
}

#[test]
fn ping_gets_echo_replies_and_reports_silence() {
    in_private_netns(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let v4 = key(SocketAddr::new(LOCALHOST, 0));
            let v6 = key(SocketAddr::new("::1".parse().unwrap(), 0));
            let c = check(CheckType::Ping);
            assert_eq!(probe(&c, &v4).await, Outcome::Up);
            assert_eq!(probe(&c, &v6).await, Outcome::Up);
            // This namespace's kernel stops answering echo requests.
            write_sysctl("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1");
            write_sysctl("/proc/sys/net/ipv6/icmp/echo_ignore_all", "1");
            assert_eq!(
                down(probe(&c, &v4).await),
                "no answer within 500ms waiting for the echo reply of 127.0.0.1"
            );
            assert_eq!(
                down(probe(&c, &v6).await),
                "no answer within 500ms waiting for the echo reply of ::1"
            );
        });
    });
}

#[tokio::test]
async fn misc_exit_codes_weights_timeout_and_environment() {
    let at = key(SocketAddr::new(LOCALHOST, 8080));
    let mut c = check(CheckType::Misc);
    let run = |c: &HealthCheck, cmd: &str| {
        let mut c = c.clone();
        c.command = Some(cmd.to_string());
        let at = at.clone();
        async move { probe(&c, &at).await }
    };
    assert_eq!(run(&c, "exit 0").await, Outcome::Up);
    assert_eq!(
        down(run(&c, "echo disk full >&2; exit 1").await),
        "`echo disk full >&2; exit 1` exited with 1: disk full"
    );
    assert_eq!(down(run(&c, "exit 12").await), "`exit 12` exited with 12");
    c.dynamic = true;
    assert_eq!(run(&c, "exit 12").await, Outcome::UpWithWeight(10));
    assert_eq!(run(&c, "exit 2").await, Outcome::UpWithWeight(0));
    assert_eq!(down(run(&c, "exit 1").await), "`exit 1` exited with 1");
    let env = "test \"$BASCULE_SERVICE $BASCULE_BACKEND_ADDRESS $BASCULE_BACKEND_PORT $BASCULE_BACKEND\" = \"t 127.0.0.1 8080 127.0.0.1:8080\"";
    assert_eq!(run(&c, env).await, Outcome::Up);
    // Killed with its children after the timeout.
    let started = std::time::Instant::now();
    assert_eq!(
        down(run(&c, "sleep 30 & sleep 30").await),
        "`sleep 30 & sleep 30` did not finish within 500ms (killed)"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// Up/down transitions seen through the supervisor's watch, for a service whose one
/// backend is `addr`, checked with `health_check` YAML `hc`.
fn one_backend_config(addr: SocketAddr, hc: &str) -> Config {
    let yaml = format!(
        "node:\n  interfaces: [{{name: eth0}}]\nservices:\n  - name: web\n    vip: 10.0.0.100\n    port: {}\n    forwarding: tun\n    backends: [{{address: {}}}]\n    health_check: {hc}\n",
        addr.port(),
        addr.ip()
    );
    Config::parse(&yaml, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (bounded) until the backend's `up` is `want`; returns the attempts made so far.
async fn wait_up(
    rx: &mut tokio::sync::watch::Receiver<bascule::health::HealthMap>,
    want: bool,
) -> u64 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        {
            let map = rx.borrow_and_update();
            let h = map.values().next().expect("one checked backend");
            if h.up == want {
                return h.attempts;
            }
        }
        if tokio::time::timeout_at(deadline, rx.changed())
            .await
            .is_err()
        {
            panic!(
                "backend did not become {} within 10 s",
                if want { "up" } else { "down" }
            );
        }
    }
}

/// The status a test server answers to its n-th request.
type Script = Box<dyn Fn(usize) -> u16 + Send>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rise_and_fall_against_a_flapping_server() {
    // The server's answers: a script per request number.
    let script: Arc<Mutex<Script>> = Arc::new(Mutex::new(Box::new(|_| 200)));
    let s = script.clone();
    let (server, heads) = http_server(move |n, _| http_response((s.lock().unwrap())(n), "")).await;
    let cfg = one_backend_config(
        server.addr,
        "{type: http_get, interval: 100ms, timeout: 500ms, rise: 3, fall: 2}",
    );
    let supervisor = HealthSupervisor::start(tokio::runtime::Handle::current(), &cfg.services);
    let mut rx = supervisor.subscribe();
    let requests = || heads.lock().unwrap().len();

    // Starts down, goes up after three successes.
    let attempts = wait_up(&mut rx, true).await;
    assert!(
        (3..=4).contains(&attempts),
        "up after rise = 3 successful checks, not {attempts}"
    );

    // Alternating 503/200: never two failures in a row, so it stays up.
    *script.lock().unwrap() = Box::new(|n| if n % 2 == 0 { 503 } else { 200 });
    let before = requests();
    while requests() < before + 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        supervisor.snapshot().values().all(|h| h.up),
        "flapping took it down"
    );
    assert!(!rx.has_changed().unwrap(), "flapping caused a transition");

    // Two failures in a row take it down, with the reason.
    *script.lock().unwrap() = Box::new(|_| 503);
    wait_up(&mut rx, false).await;
    let h = supervisor.snapshot().into_values().next().unwrap();
    assert_eq!(
        h.last_failure,
        Some(format!("HTTP 503 from {}/", server.addr))
    );
    assert!(h.durations.count >= 3 && h.durations.count == h.attempts);

    // Alternating again: never three successes in a row, so it stays down.
    *script.lock().unwrap() = Box::new(|n| if n % 3 == 0 { 503 } else { 200 });
    let before = requests();
    while requests() < before + 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        supervisor.snapshot().values().all(|h| !h.up),
        "flapping brought it up"
    );

    // Steady 200: up again.
    *script.lock().unwrap() = Box::new(|_| 200);
    wait_up(&mut rx, true).await;

    // A reload that drops the backend stops its checks.
    let empty = Config::parse(
        "node:\n  interfaces: [{name: eth0}]\nservices: []\n",
        "t.yaml",
    )
    .unwrap();
    supervisor.update(&empty.services);
    assert_eq!(supervisor.checked(), 0);
    assert!(supervisor.snapshot().is_empty());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_stop = requests();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(requests(), after_stop, "a removed backend is still checked");
}
