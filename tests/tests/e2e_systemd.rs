//! The daemon as systemd runs it (`Type=notify-reload`, `WatchdogSec=`), without systemd:
//! the test listens on a `NOTIFY_SOCKET` of its own and checks each notification at its
//! moment: `READY=1` once `/readyz` says ready, `WATCHDOG=1` every half `WATCHDOG_USEC`,
//! `RELOADING=1` with the reload's `MONOTONIC_USEC` then `READY=1` at a reload (SIGHUP),
//! the same with a `STATUS=` naming the refusal at a refused one (API), `STOPPING=1` at
//! SIGTERM. The binary comes from `BASCULE_BIN`.

use std::{
    os::unix::net::UnixDatagram,
    path::Path,
    time::{Duration, Instant},
};

use bascule_tests::{bascule_bin, require_root, Forwarding, Topology};

/// The watchdog timeout given to the daemon: it must ping every 500 ms.
const WATCHDOG_USEC: u64 = 1_000_000;

/// The notifications received, in order, with when they arrived.
struct NotifySocket {
    socket: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl NotifySocket {
    fn bind(path: &Path) -> NotifySocket {
        let socket = UnixDatagram::bind(path).expect("bind the notification socket");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        NotifySocket {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads until a notification satisfies `wanted` (returned), at most `within`.
    fn until(&mut self, within: Duration, wanted: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), text.clone()));
                if wanted(&text) {
                    return Some(text);
                }
            }
        }
        None
    }

    /// Everything received since `index`, watchdog pings left out.
    fn since_without_pings(&self, index: usize) -> Vec<&str> {
        self.seen[index..]
            .iter()
            .map(|(_, m)| m.as_str())
            .filter(|m| *m != "WATCHDOG=1")
            .collect()
    }
}

fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

fn field<'m>(message: &'m str, key: &str) -> Option<&'m str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime(2) writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

/// After `first` (an index into `seen`): a `RELOADING=1` with a `MONOTONIC_USEC` taken
/// after `asked`, then a `READY=1` (returned), and nothing else but status and pings.
fn reload_notifications(n: &mut NotifySocket, asked: u64, what: &str) -> String {
    let first = n.seen.len();
    let ready = n
        .until(Duration::from_secs(20), |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("{what}: no READY=1 after the reload; got {:?}", n.seen));
    let between = n.since_without_pings(first);
    let reloading: Vec<&&str> = between.iter().filter(|m| has(m, "RELOADING=1")).collect();
    assert_eq!(
        reloading.len(),
        1,
        "{what}: one RELOADING=1 before READY=1: {between:?}"
    );
    let usec: u64 = field(reloading[0], "MONOTONIC_USEC")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{what}: RELOADING=1 without MONOTONIC_USEC: {between:?}"));
    assert!(
        usec >= asked && usec <= monotonic_usec(),
        "{what}: MONOTONIC_USEC={usec} is not the reload's time (asked at {asked})"
    );
    ready
}

#[test]
fn notifications_reach_the_service_manager_at_their_moment() {
    require_root();
    let topo = Topology::standard("sdnotify").expect("build the lab");
    let lb = &topo.lbs[0];
    let path = topo.write_lb_config(Forwarding::Dr).expect("config");
    let socket_path = topo.lab.dir().join("notify.sock");
    let mut n = NotifySocket::bind(&socket_path);
    let usec = WATCHDOG_USEC.to_string();
    let daemon = topo
        .start_bascule_env(
            &bascule_bin(),
            lb,
            &path,
            &[
                ("NOTIFY_SOCKET", socket_path.to_str().unwrap()),
                ("WATCHDOG_USEC", &usec),
            ],
        )
        .expect("start bascule run");

    // READY=1 once ready, with the summary.
    let ready = n
        .until(Duration::from_secs(30), |m| has(m, "READY=1"))
        .unwrap_or_else(|| panic!("no READY=1; log:\n{}", daemon.log_text()));
    let (code, body) = topo.api(lb, "GET", "/readyz", None).expect("GET /readyz");
    assert_eq!((code, body.trim()), (200, "ready"), "READY=1 means /readyz");
    assert_eq!(
        field(&ready, "STATUS"),
        Some("2 services, 4 of 4 backends up"),
        "{ready:?}"
    );
    assert!(
        !n.seen.iter().any(|(_, m)| has(m, "RELOADING=1")),
        "{:?}",
        n.seen
    );

    // WATCHDOG=1 from the controller every 500 ms.
    let from = n.seen.len();
    let _ = n.until(Duration::from_millis(3200), |_| false);
    let pings: Vec<Instant> = n.seen[from..]
        .iter()
        .filter(|(_, m)| m == "WATCHDOG=1")
        .map(|(t, _)| *t)
        .collect();
    assert!(
        (5..=8).contains(&pings.len()),
        "{} pings in 3.2 s, expected about 6",
        pings.len()
    );
    for gap in pings.windows(2).map(|w| w[1] - w[0]) {
        assert!(
            gap >= Duration::from_millis(350) && gap <= Duration::from_millis(750),
            "a watchdog ping {gap:?} after the previous one, expected 500 ms"
        );
    }

    // A good reload (SIGHUP): RELOADING=1 with its time, then READY=1.
    let good = std::fs::read_to_string(&path)
        .unwrap()
        .replacen("weight: 1\n", "weight: 2\n", 1);
    std::fs::write(&path, &good).unwrap();
    let asked = monotonic_usec();
    topo.lab.signal(&daemon, libc::SIGHUP).expect("SIGHUP");
    let ready = reload_notifications(&mut n, asked, "a good reload");
    assert_eq!(
        field(&ready, "STATUS"),
        Some("2 services, 4 of 4 backends up"),
        "{ready:?}"
    );

    // A refused reload (API): the same, and STATUS says why.
    std::fs::write(&path, good.replacen("weight: 2\n", "weight: 70000\n", 1)).unwrap();
    let asked = monotonic_usec();
    let (code, body) = topo
        .api(lb, "POST", "/api/v1/reload", None)
        .expect("POST /api/v1/reload");
    assert_eq!(code, 422, "{body}");
    let ready = reload_notifications(&mut n, asked, "a refused reload");
    let status = field(&ready, "STATUS").unwrap_or_default();
    assert!(
        status.starts_with(
            "2 services, 4 of 4 backends up; last reload refused, previous configuration kept: "
        ) && status.contains("weight: 70000 is out of range"),
        "{ready:?}"
    );

    // STOPPING=1 at SIGTERM, before the daemon exits.
    let (status, _) = topo.lab.terminate(&daemon).expect("stop the daemon");
    assert!(status.success(), "{status}; log:\n{}", daemon.log_text());
    assert!(
        n.until(Duration::from_secs(1), |m| has(m, "STOPPING=1"))
            .is_some(),
        "no STOPPING=1: {:?}",
        n.seen
    );
}
