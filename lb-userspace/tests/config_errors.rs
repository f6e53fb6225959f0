//! `Config::load` on files: the messages carry the path as given, `FILE:LINE:COLUMN: ...`.
//! (The detailed error cases are unit tests in src/config.rs.)

use std::path::Path;

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
