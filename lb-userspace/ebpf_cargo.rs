// The nested nightly cargo that works on the eBPF crate, in one place for the two that run
// it: `lb-userspace/build.rs` (builds it) and `xtask` (clippy on it), which both
// `include!` this file.

/// `rustup run nightly cargo SUBCOMMAND` on `lb-ebpf`'s programs for the BPF target (ISA
/// v3, `core` built from source, BTF), run from `workspace` into `target_dir`, for a host
/// of architecture `arch`. The outer cargo's variables that would steer it (its rustc,
/// wrappers, flags, target directory) are removed.
fn ebpf_cargo(
    subcommand: &str,
    workspace: &std::path::Path,
    target_dir: &std::path::Path,
    arch: &str,
) -> std::process::Command {
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".into(),
        "-Clink-arg=--btf".into(),
        "-Ctarget-cpu=v3".into(),
        "-Clink-arg=--disable-expand-memcpy-in-order".into(),
        // Kept global (BTF linkage) so that the verifier checks it once, on its own:
        // `lb-ebpf/src/flow.rs`, `schedule`.
        "-Clink-arg=--export=bascule_schedule".into(),
        // The same for `lb-ebpf/src/sync.rs`, `report`.
        "-Clink-arg=--export=bascule_sync_report".into(),
        // The same for `lb-ebpf/src/flow.rs`, `record`.
        "-Clink-arg=--export=bascule_record".into(),
    ]
    .join("\x1f");
    let mut cmd = std::process::Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", subcommand])
        .args(["--package", "lb-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    for key in [
        "RUSTC",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
    ] {
        cmd.env_remove(key);
    }
    cmd
}
