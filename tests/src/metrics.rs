//! What a test reads of bascule's Prometheus exposition: the text of the first LB node's
//! `/metrics`, one series' value, and `promtool check metrics`'s verdict on it.

use std::{
    io::Write as _,
    process::{Command, Stdio},
};

use crate::topology::Topology;

/// `GET /metrics` on the lab's first LB node (asserts 200).
pub fn scrape(topo: &Topology) -> String {
    let (status, body) = topo
        .api(&topo.lbs[0], "GET", "/metrics", None)
        .expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

/// The value of one series (`name{labels}` exactly as exposed), as an integer.
pub fn value(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Asserts that `promtool check metrics` accepts the exposition `text`.
pub fn promtool_accepts(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `cargo xtask setup` installs it)");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
