//! What a machine needs before bascule builds and its tests run: checked, and installed by
//! `cargo xtask setup` where it is missing. Every item prints one line: `ok   ...` when it
//! was already there, `done ...` when setup just installed it.

use std::{
    env,
    io::Write,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::{output, run_checked};

/// The toolchain that builds the eBPF crate (`-Z build-std`); it cannot be installed here
/// (`RUSTUP_AUTO_INSTALL=0`, no download of toolchains), only its components.
const NIGHTLY: &str = "nightly";

/// 0.10.x is the last line that loads rustc's own LLVM (Debian 12 has no LLVM 21+ for
/// 0.11+); 0.10.0 emits BTF map-in-map definitions the kernel refuses (EINVAL), 0.10.4
/// loads them.
const BPF_LINKER_VERSION: &str = "0.10.4";

/// Tools the end-to-end tests and the demo drive (namespace labs, packet capture and
/// crafting, BPF inspection, peers to compare with, promtool, BIRD for the scale-out lab's
/// BGP and BFD, Chromium for the status page's test).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "iputils-ping",
    "tcpdump",
    "tshark",
    "python3-scapy",
    "bpftool",
    "ethtool",
    "arping",
    "curl",
    "procps",
    "psmisc",
    "keepalived",
    "haproxy",
    "wrk",
    "prometheus",
    "man-db",
    "bird2",
    "chromium",
];

const BPFFS: &str = "/sys/fs/bpf";

/// `cargo xtask setup`.
pub fn run() -> Result<()> {
    let steps: [fn() -> Result<bool>; 6] = [
        ensure_nightly,
        ensure_rust_src,
        ensure_debian_packages,
        ensure_bpffs,
        ensure_bpf_linker,
        ensure_cargo_fuzz,
    ];
    let mut installed = 0;
    for step in steps {
        if step()? {
            installed += 1;
        }
    }
    match installed {
        0 => println!("setup: nothing to do, this machine has everything"),
        n => println!("setup: {n} item(s) installed, this machine has everything now"),
    }
    Ok(())
}

/// What `cargo xtask build` needs, as one line naming everything missing.
pub fn check_build_prerequisites() -> Result<()> {
    let mut missing = Vec::new();
    if !has_nightly()? {
        missing.push(format!("{NIGHTLY} toolchain"));
    } else if !has_rust_src()? {
        missing.push(format!("rust-src ({NIGHTLY})"));
    }
    if bpf_linker_version().as_deref() != Some(BPF_LINKER_VERSION) {
        missing.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    }
    if !missing.is_empty() {
        bail!("missing {}: run `cargo xtask setup`", missing.join(", "));
    }
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn ok(what: &str) -> Result<bool> {
    println!("ok   {what}");
    Ok(false)
}

fn done(what: &str) -> Result<bool> {
    println!("done {what}");
    Ok(true)
}

fn ensure_nightly() -> Result<bool> {
    if !has_nightly()? {
        bail!(
            "missing the `{NIGHTLY}` toolchain (rustup toolchain list): it cannot be installed \
             on this machine; bascule needs it to build the eBPF crate"
        );
    }
    ok(&format!("{NIGHTLY} toolchain present"))
}

fn has_nightly() -> Result<bool> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup is needed to find the nightly toolchain")?;
    Ok(toolchains
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .any(is_nightly_channel))
}

/// `nightly` or `nightly-<host triple>`, not a dated `nightly-2026-05-19-...`: aya-build
/// runs `rustup run nightly`.
fn is_nightly_channel(toolchain: &str) -> bool {
    toolchain == NIGHTLY
        || toolchain
            .strip_prefix("nightly-")
            .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
}

fn ensure_rust_src() -> Result<bool> {
    if has_rust_src()? {
        return ok(&format!("rust-src ({NIGHTLY}) already installed"));
    }
    run_checked(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        NIGHTLY,
    ]))?;
    done(&format!("rust-src ({NIGHTLY}) installed"))
}

fn has_rust_src() -> Result<bool> {
    let components = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        NIGHTLY,
        "--installed",
    ]))?;
    Ok(components.lines().any(|line| line.trim() == "rust-src"))
}

fn ensure_bpf_linker() -> Result<bool> {
    let found = bpf_linker_version();
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        return ok(&format!(
            "bpf-linker {BPF_LINKER_VERSION} already installed"
        ));
    }
    match &found {
        Some(other) => {
            println!("...  bpf-linker {other} found, replacing it with {BPF_LINKER_VERSION}")
        }
        None => println!("...  bpf-linker {BPF_LINKER_VERSION} missing"),
    }
    println!(
        "...  installing bpf-linker {BPF_LINKER_VERSION} with `cargo +{NIGHTLY} install` \
         (3-6 minutes on 2 cores)"
    );
    run_checked(
        Command::new("rustup")
            .args(["run", NIGHTLY, "cargo", "install", "--locked", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            // Away from the workspace, so that its .cargo/config.toml does not apply.
            .current_dir(env::temp_dir()),
    )?;
    match bpf_linker_version() {
        Some(version) if version == BPF_LINKER_VERSION => {
            done(&format!("bpf-linker {BPF_LINKER_VERSION} installed"))
        }
        other => bail!(
            "installed bpf-linker {BPF_LINKER_VERSION} into cargo's bin directory, but \
             `bpf-linker --version` on PATH reports {}: put ~/.cargo/bin first on PATH",
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// cargo-fuzz, which `cargo xtask test` runs the fuzz targets (`fuzz/`) with.
fn ensure_cargo_fuzz() -> Result<bool> {
    let works = Command::new("rustup")
        .args(["run", NIGHTLY, "cargo", "fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return ok("cargo-fuzz already installed");
    }
    println!("...  installing cargo-fuzz with `cargo +{NIGHTLY} install` (2-4 minutes on 2 cores)");
    run_checked(
        Command::new("rustup")
            .args(["run", NIGHTLY, "cargo", "install", "--locked", "cargo-fuzz"])
            .current_dir(env::temp_dir()),
    )?;
    done("cargo-fuzz installed")
}

/// The version `bpf-linker --version` on PATH reports, None when there is none that runs.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    if !out.status.success() {
        return None;
    }
    parse_bpf_linker_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_bpf_linker_version(version_output: &str) -> Option<String> {
    let mut words = version_output.split_whitespace();
    (words.next()? == "bpf-linker").then(|| words.next().map(str::to_owned))?
}

fn ensure_debian_packages() -> Result<bool> {
    let mut missing = Vec::new();
    for &package in DEBIAN_PACKAGES {
        if !dpkg_installed(package)? {
            missing.push(package);
        }
    }
    if missing.is_empty() {
        return ok(&format!(
            "Debian packages already installed ({})",
            DEBIAN_PACKAGES.len()
        ));
    }
    if !is_root() {
        bail!(
            "missing Debian packages {}: run `cargo xtask setup` as root",
            missing.join(" ")
        );
    }
    println!("...  installing Debian packages: {}", missing.join(" "));
    run_checked(apt_get().args(["update", "-q"]))?;
    if missing.contains(&"tshark") {
        // tshark's install asks whether non-root users may capture; the answer is no.
        preseed_debconf("wireshark-common wireshark-common/install-setuid boolean false\n")?;
    }
    run_checked(
        apt_get()
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    for &package in &missing {
        if !dpkg_installed(package)? {
            bail!("`apt-get install {package}` succeeded but dpkg does not list it as installed");
        }
    }
    done(&format!("Debian packages installed: {}", missing.join(" ")))
}

fn dpkg_installed(package: &str) -> Result<bool> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .context("cannot run dpkg-query: setup knows Debian only; install the packages yourself")?;
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

fn apt_get() -> Command {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null());
    cmd
}

fn preseed_debconf(selections: &str) -> Result<()> {
    let mut child = Command::new("debconf-set-selections")
        .stdin(Stdio::piped())
        .spawn()
        .context("cannot start debconf-set-selections")?;
    child
        .stdin
        .take()
        .context("debconf-set-selections has no stdin")?
        .write_all(selections.as_bytes())?;
    let status = child.wait()?;
    if !status.success() {
        bail!("debconf-set-selections failed ({status})");
    }
    Ok(())
}

/// bascule pins its maps under /sys/fs/bpf/bascule; a new machine has no bpffs mounted.
pub fn ensure_bpffs() -> Result<bool> {
    if bpffs_mounted()? {
        return ok(&format!("bpffs already mounted at {BPFFS}"));
    }
    if !is_root() {
        bail!("bpffs is not mounted at {BPFFS}: run `cargo xtask setup` as root");
    }
    run_checked(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    done(&format!("bpffs mounted at {BPFFS}"))
}

fn bpffs_mounted() -> Result<bool> {
    let fs_type = output(Command::new("stat").args(["-f", "-c", "%T", BPFFS]))?;
    Ok(fs_type.trim() == "bpf_fs")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_undated_nightly_counts() {
        assert!(is_nightly_channel("nightly"));
        assert!(is_nightly_channel("nightly-x86_64-unknown-linux-gnu"));
        assert!(!is_nightly_channel(
            "nightly-2026-05-19-x86_64-unknown-linux-gnu"
        ));
        assert!(!is_nightly_channel("stable-x86_64-unknown-linux-gnu"));
    }

    #[test]
    fn bpf_linker_version_is_the_second_word() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.10.4\n").as_deref(),
            Some("0.10.4")
        );
        assert_eq!(parse_bpf_linker_version("something else 1.0"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }
}
