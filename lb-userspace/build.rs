//! Builds the eBPF programs (crate `lb-ebpf`, nightly, bpf-linker) into OUT_DIR, where
//! `src/datapath/` embeds them: one binary is the whole product.
//!
//! Written out instead of calling aya-build so that the eBPF crate is built for BPF ISA
//! v3 (`-C target-cpu=v3`: 32-bit jumps and ALU, atomics; every kernel with `bpf_loop`
//! has it), which aya-build's fixed rustflags do not allow.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    check_prerequisites();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let workspace = manifest.parent().expect("workspace root").to_path_buf();
    for dir in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    git_commit(&workspace);
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let output = ebpf_cargo("build", &workspace, &target_dir, &arch)
        .output()
        .expect("cannot run `rustup run nightly cargo`: run `cargo xtask setup`");
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprint!("{stderr}");
    if !output.status.success() {
        eprintln!("error: building the eBPF programs (lb-ebpf) failed, see above");
        std::process::exit(1);
    }
    // Cargo shows a build script's output only when it fails: the eBPF crate's warnings
    // would go unseen outside `cargo xtask test` (whose clippy step fails on them).
    // Forwarded, each one appears in every build of this package.
    for warning in ebpf_warnings(&stderr) {
        println!("cargo:warning=lb-ebpf: {warning}");
    }
    for bin in ["lb-ebpf", "lb-decap", "lb-floor"] {
        let built = target_dir.join("bpfel-unknown-none/release").join(bin);
        std::fs::copy(&built, out.join(bin))
            .unwrap_or_else(|e| panic!("copy {}: {e}", built.display()));
    }
}

/// `BASCULE_GIT_COMMIT` for `bascule --version`: the commit the binary is built from, or
/// `unknown commit` outside git. Watched through HEAD and the branch it names, so a new
/// commit builds the version again (and nothing else does).
fn git_commit(workspace: &Path) {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(workspace)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let commit =
        git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown commit".into());
    println!("cargo:rustc-env=BASCULE_GIT_COMMIT={commit}");
    let branch = git(&["symbolic-ref", "-q", "HEAD"]);
    for file in ["HEAD", "packed-refs"]
        .into_iter()
        .map(String::from)
        .chain(branch)
    {
        // A missing file would make cargo run this script at every build.
        let path = git(&["rev-parse", "--git-path", &file]).map(|p| workspace.join(p));
        if let Some(path) = path.filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}

/// The warnings of a cargo build's output, each with the place it points at (the
/// per-crate "generated N warnings" summaries left out).
fn ebpf_warnings(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut lines = stderr.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(message) = line.strip_prefix("warning: ") else {
            continue;
        };
        if message.contains(" generated ") && message.contains(" warning") {
            continue;
        }
        let at = lines
            .peek()
            .and_then(|next| next.trim_start().strip_prefix("--> "))
            .map(|place| format!(" ({place})"))
            .unwrap_or_default();
        out.push(format!("{message}{at}"));
    }
    out
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

include!("ebpf_cargo.rs");
