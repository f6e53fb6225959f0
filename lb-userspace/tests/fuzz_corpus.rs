//! The fuzz targets' committed corpus (`fuzz/corpus/TARGET/`, crashes found by fuzzing
//! included once fixed) replayed through the same entries on the stable toolchain: every
//! input gives an answer, none panics.

use std::path::{Path, PathBuf};

use bascule::{
    config::{Config, HealthCheck},
    health::fuzz,
};

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "{}: no corpus", dir.display());
    files
}

#[test]
fn configs() {
    let mut parsed = 0;
    for (_, bytes) in corpus("config") {
        let Ok(text) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if Config::parse(text, "fuzz.yaml").is_ok() {
            parsed += 1;
        }
        let _ = Config::parse_all(text, "fuzz.yaml");
    }
    assert!(parsed > 0, "the corpus has valid files too");
}

#[test]
fn health_check_answers() {
    for (_, bytes) in corpus("dns_response") {
        let _ = fuzz::dns_response(&bytes);
    }
    for (_, bytes) in corpus("smtp_reply") {
        let _ = fuzz::smtp_replies(&bytes);
    }
    for (_, bytes) in corpus("icmp_message") {
        let _ = fuzz::icmp_message(&bytes);
    }
}

#[test]
fn http_answers() {
    let yaml = "node:\n  interfaces: [{name: eth0}]\nservices:\n  - name: web\n    vip: 10.0.0.100\n    port: 80\n    forwarding: tun\n    backends: [{address: 10.0.0.11}]\n    health_check: {type: http_get, path: /healthz, body_regex: \"^ok\", digest: 444bcb3a3fcf8389296c49467f27e1d6, expect_status: [200-299]}\n";
    let check: HealthCheck = Config::parse(yaml, "fuzz.yaml").unwrap().services[0]
        .health_check
        .clone()
        .unwrap();
    // The seeds that answer "ok" with a 2xx, however framed, are up; every other is down.
    let up = ["ok", "chunked", "continue-then-ok"];
    for (path, bytes) in corpus("http_response") {
        let verdict = fuzz::http_response(&check, &bytes);
        let name = path.file_name().unwrap().to_string_lossy();
        if up.contains(&name.as_ref()) {
            assert_eq!(verdict, Ok(()), "{name}");
        } else if !name.starts_with("crash-") {
            assert!(verdict.is_err(), "{name}: {verdict:?}");
        }
    }
}
