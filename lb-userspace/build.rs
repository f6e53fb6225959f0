//! Builds the eBPF programs (crate `lb-ebpf`, nightly, bpf-linker) and leaves the objects
//! in OUT_DIR, where `src/datapath.rs` embeds them: one binary is the whole product.

use std::{path::Path, process::Command};

fn main() -> anyhow::Result<()> {
    check_prerequisites();
    let manifest = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest).join("../lb-ebpf");
    let root = root.to_str().expect("utf-8 path");
    println!("cargo:rerun-if-changed=../lb-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "lb-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
}

/// Fails with one line naming the fix when the eBPF toolchain is incomplete.
fn check_prerequisites() {
    let missing = |what: &str| -> ! {
        eprintln!("error: missing {what}: run `cargo xtask setup`");
        std::process::exit(1);
    };
    let linker = Command::new("bpf-linker").arg("--version").output();
    match linker {
        Ok(out) if String::from_utf8_lossy(&out.stdout).contains("0.10.4") => {}
        _ => missing("bpf-linker 0.10.4"),
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match sysroot {
        Some(s)
            if Path::new(&s)
                .join("lib/rustlib/src/rust/library/core")
                .exists() => {}
        Some(_) => missing("rust-src for the nightly toolchain"),
        None => missing("the nightly toolchain"),
    }
}
