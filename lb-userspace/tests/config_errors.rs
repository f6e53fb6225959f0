//! `Config::load` on files: the messages carry the path as given, `FILE:LINE:COLUMN: ...`.
//! (Every error message, exactly, is a unit test: src/config/tests/messages.rs.)

use std::{path::Path, process::Command};

use bascule::config::{Config, Forwarding, Scheduler};

fn fixture(name: &str) -> String {
    format!("{}/tests/configs/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn full_example_loads() {
    let c = Config::load(Path::new(&fixture("full.yaml"))).unwrap();
    assert_eq!(c.node.interfaces[0].name, "eth0");
    assert_eq!(c.services[0].scheduler, Scheduler::Mh);
    assert_eq!(c.services[0].backends[0].forwarding, Some(Forwarding::Nat));
    assert_eq!(c.vrrp[0].virtual_router_id, 51);
    // The example uses features this build does not implement yet.
    let unsupported: Vec<String> = c.unsupported().iter().map(|e| e.to_string()).collect();
    // The example runs whole with this build (VRRP with pass authentication included).
    assert!(unsupported.is_empty(), "{unsupported:#?}");
}

#[test]
fn bad_file_points_at_the_value() {
    let path = fixture("bad-weight.yaml");
    let e = Config::load(Path::new(&path)).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("{path}:11:17: services[0].backends[0].weight: 70000 is out of range, expected 0..=65535")
    );
    assert_eq!((e.line, e.column), (11, 17));
}

#[test]
fn missing_file() {
    let e = Config::load(Path::new("/nonexistent/bascule.yaml")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("/nonexistent/bascule.yaml: cannot read the configuration: "),
        "{e}"
    );
}

/// Each file in `tests/configs/bad/` holds one mistake; loading it must fail with exactly
/// this `FILE:LINE:COLUMN: message` (the first error, in file order).
#[test]
fn each_bad_config_fails_at_its_line_and_column() {
    let cases: &[(&str, &str)] = &[
        ("unknown-key.yaml", "8:5: services[0].schedular: unknown key (did you mean \"scheduler\"?), expected one of: name, vip, vips, port, ports, protocol, scheduler, forwarding, persistence, sorry_server, maglev_table_size, backends, health_check"),
        ("wrong-type.yaml", "7:11: services[0].port: expected an integer in 0..=65535, found the string \"eighty\""),
        ("weight-out-of-range.yaml", "10:17: services[0].backends[0].weight: 70000 is out of range, expected 0..=65535"),
        ("duplicate-service.yaml", "8:5: services[1]: duplicate service 10.0.0.100:80/tcp, already defined by services[0] (\"web\") at line 5"),
        ("duplicate-backend.yaml", "11:18: services[0].backends[2].address: backend 10.0.0.11 is listed twice (also backends[0] at line 9)"),
        ("bad-duration.yaml", "5:16: conntrack.tcp_timeout: \"15 minutes\" is not a valid duration (unknown unit \" minutes\"; units are us, ms, s, m, h, d), expected e.g. 100ms, 1s, 5m or 1h"),
        ("bad-address.yaml", "6:10: services[0].vip: \"10.0.0.300\" is not valid, expected an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)"),
        ("bad-scheduler.yaml", "8:16: services[0].scheduler: \"roundrobin\" is not a valid scheduler, expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh"),
        ("missing-vip.yaml", "5:5: services[0]: missing required key \"vip\""),
        ("listen-without-token.yaml", "5:11: http.listen: 0.0.0.0:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"),
        ("family-mismatch.yaml", "10:18: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.100 is IPv4; forwarding dr needs the same address family (only tun can carry IPv4 in IPv6)"),
        ("table-not-prime.yaml", "8:24: services[0].maglev_table_size: 1000 is not prime, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"),
        ("yaml-syntax.yaml", "3:9: invalid YAML: illegal placement of ':' indicator"),
        ("hex-inside-a-character.yaml", "14:16: services[0].health_check.payload: \"hex:0é0\" is not valid (\"é\" is not a hex digit), expected text or hex: followed by hex digits (e.g. hex:0d0a)"),
        ("huge-duration.yaml", "5:16: conntrack.tcp_timeout: \"200000000000000d\" is not a valid duration (longer than the longest accepted, 365d), expected e.g. 100ms, 1s, 5m or 1h"),
        ("huge-integer.yaml", "5:16: conntrack.max_entries: expected an integer in 1..=4294967295, found the number 340282366920938463463374607431768211456999"),
        ("nul-in-name.yaml", "3:13: node.interfaces[0].name: \"eth\\0\" is not a valid interface name, expected 1 to 15 characters without '/', ':', spaces or control characters"),
    ];
    for (file, expected) in cases {
        let path = fixture(&format!("bad/{file}"));
        let e = Config::load(Path::new(&path)).expect_err(file);
        assert_eq!(e.to_string(), format!("{path}:{expected}"), "{file}");
    }
}

/// A file can be valid and still not fit the node: checked against the node's interfaces.
#[test]
fn a_vip_no_interface_can_reach() {
    let path = fixture("bad/unreachable-vip.yaml");
    let config = Config::load(Path::new(&path)).unwrap();
    let host = bascule::config::HostFacts {
        interfaces: [("lo".to_string(), vec![])].into_iter().collect(),
    };
    let errors: Vec<String> = config
        .check_host(&host)
        .iter()
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        errors,
        vec![format!("{path}:6:10: services[0].vip: no interface can reach fd00::100: none of node.interfaces (lo) has an IPv6 address; add one, or attach to an interface that has one")]
    );
}

/// `deploy/examples/*.yaml` are valid configs; the only thing this build may refuse in
/// them is a forwarding method it does not implement yet (nat, local).
#[test]
fn deploy_examples_are_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/examples");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        for e in c.unsupported() {
            assert!(
                e.message.contains("forwarding: \""),
                "{}: {e}",
                path.display()
            );
        }
        seen.push(path.file_name().unwrap().to_string_lossy().into_owned());
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "demo.yaml",
            "dr.yaml",
            "local.yaml",
            "nat.yaml",
            "tun.yaml",
            "vrrp-pair.yaml"
        ]
    );
}

/// Files an operator (or a script gone wrong) may hand `bascule check`: each is refused
/// with a message, by `Config::load` and by the binary with exit code 1 (never a panic,
/// exit 101, nor a crash).
#[test]
fn hostile_files_are_refused_with_exit_code_1() {
    let dir = std::env::temp_dir().join(format!("bascule-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let head = "node:\n  interfaces:\n    - name: eth0\n";
    let mut files: Vec<(String, Vec<u8>)> = vec![
        (
            "deep.yaml".into(),
            format!(
                "{head}services: {}{}\n",
                "[".repeat(100_000),
                "]".repeat(100_000)
            )
            .into_bytes(),
        ),
        (
            "deep-maps.yaml".into(),
            format!(
                "{head}services: {}1{}\n",
                "{a: ".repeat(50_000),
                "}".repeat(50_000)
            )
            .into_bytes(),
        ),
        (
            "long-string.yaml".into(),
            format!("{head}services:\n  - name: \"{}\"\n", "w".repeat(10 << 20)).into_bytes(),
        ),
        (
            "invalid-utf8.yaml".into(),
            [head.as_bytes(), b"services:\n  - name: \"\xff\xfe\"\n"].concat(),
        ),
        (
            "raw-nul.yaml".into(),
            [head.as_bytes(), b"services:\n  - name: a\x00b\n"].concat(),
        ),
    ];
    for name in [
        "hex-inside-a-character.yaml",
        "huge-duration.yaml",
        "huge-integer.yaml",
        "nul-in-name.yaml",
    ] {
        files.push((
            name.into(),
            std::fs::read(fixture(&format!("bad/{name}"))).unwrap(),
        ));
    }
    for (name, bytes) in &files {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let loaded = std::panic::catch_unwind(|| Config::load(&path));
        let e = loaded
            .unwrap_or_else(|_| panic!("{name}: Config::load panicked"))
            .expect_err(name);
        assert!(
            e.to_string().starts_with(&path.display().to_string()),
            "{name}: {e}"
        );
        assert!(
            e.to_string().len() < 4096,
            "{name}: a message of {} bytes",
            e.to_string().len()
        );
        let out = Command::new(env!("CARGO_BIN_EXE_bascule"))
            .args(["check", "--no-host", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {:?} {stderr}",
            out.status
        );
        assert!(!stderr.contains("panicked"), "{name}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
