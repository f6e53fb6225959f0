//! `fuzz/` (cargo-fuzz, libFuzzer, nightly): every target replays its committed corpus,
//! then mutates it for a few seconds. New inputs go to a temporary directory, so the
//! committed corpus stays as it is; a crash fails the step with libFuzzer's report (the
//! input is saved under `fuzz/artifacts/TARGET/`).

use std::{env, process::Command};

use anyhow::{Context, Result};

use crate::{run_checked, workspace_root};

/// The targets of `fuzz/Cargo.toml`.
pub const TARGETS: &[&str] = &[
    "config",
    "vrrp_advert",
    "dns_response",
    "smtp_reply",
    "icmp_message",
    "http_response",
];

/// Seconds of mutation per target after the corpus (`BASCULE_FUZZ_SECONDS` overrides).
const SMOKE_SECONDS: u32 = 15;

/// The short run of every target `cargo xtask test` makes.
pub fn smoke() -> Result<()> {
    let seconds = env::var("BASCULE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SMOKE_SECONDS);
    let root = workspace_root();
    for target in TARGETS {
        let scratch = env::temp_dir().join(format!("bascule-fuzz-{}-{target}", std::process::id()));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("cannot create {}", scratch.display()))?;
        let result = run_checked(
            Command::new("rustup")
                .args(["run", "nightly", "cargo", "fuzz", "run", target])
                .arg(&scratch)
                .arg(root.join("fuzz/corpus").join(target))
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-rss_limit_mb=2048")
                .current_dir(root),
        );
        let _ = std::fs::remove_dir_all(&scratch);
        result.with_context(|| {
            format!(
                "fuzz target {target} failed: the input is under fuzz/artifacts/{target}/; \
                 replay it with `cargo +nightly fuzz run {target} FILE`"
            )
        })?;
        println!("ok   fuzz target {target}: corpus replayed, {seconds}s of mutations");
    }
    Ok(())
}
