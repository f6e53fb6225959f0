//! The configuration loader on any text: a located error or a config, never a panic.
#![no_main]

use bascule::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, "fuzz.yaml") {
        // What `bascule check` does next with a file that parsed.
        let _ = config.unsupported();
    }
    let _ = Config::parse_all(text, "fuzz.yaml");
});
