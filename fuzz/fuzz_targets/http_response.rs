//! An `http_get` check with `body_regex` and `digest` against a backend that answers
//! the input and closes: a verdict (up, or down with a reason), never a panic or a hang.
#![no_main]

use std::sync::OnceLock;

use bascule::config::{Config, HealthCheck};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = "node:\n  interfaces: [{name: eth0}]\nservices:\n  - name: web\n    vip: 10.0.0.100\n    port: 80\n    forwarding: tun\n    backends: [{address: 10.0.0.11}]\n    health_check: {type: http_get, path: /healthz, body_regex: \"^ok\", digest: 444bcb3a3fcf8389296c49467f27e1d6, expect_status: [200-299]}\n";

fn check() -> &'static HealthCheck {
    static CHECK: OnceLock<HealthCheck> = OnceLock::new();
    CHECK.get_or_init(|| {
        Config::parse(CONFIG, "fuzz.yaml").expect("the fuzz target's config")
            .services[0]
            .health_check
            .clone()
            .expect("a health check")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = bascule::health::fuzz::http_response(check(), data);
});
