//! `cargo xtask package`: the Debian package `target/debian/bascule_<version>_<arch>.deb`,
//! laid out by hand and built with `dpkg-deb`: the binary, the systemd unit, the
//! configuration as a conffile, shell completions and the manual page (both printed by
//! the binary itself, so they always match its options), and the documents.
//!
//! `cargo xtask test` builds it from the debug binary, installs it on the machine, checks
//! what an operator would use and purges it ([`install_test`]).

use std::{
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{build, output, run_checked, target_dir, workspace_root, Profile};

const NAME: &str = "bascule";
const CONFFILE: &str = "/etc/bascule/bascule.yaml";

/// Where each generated or copied file goes in the package, relative to its root.
const BASH_COMPLETION: &str = "usr/share/bash-completion/completions/bascule";
const ZSH_COMPLETION: &str = "usr/share/zsh/vendor-completions/_bascule";
const FISH_COMPLETION: &str = "usr/share/fish/vendor_completions.d/bascule.fish";
const MAN_PAGE: &str = "usr/share/man/man1/bascule.1.gz";

/// `cargo xtask package [--debug | --install-test]`.
pub fn run(args: &[String]) -> Result<()> {
    let profile = match args {
        [] => Profile::Release,
        [flag] if flag == "--debug" => Profile::Debug,
        [flag] if flag == "--install-test" => return install_test(),
        _ => bail!(
            "`cargo xtask package` takes `--debug` or `--install-test`, got `{}`",
            args.join(" ")
        ),
    };
    let deb = build_deb(profile)?;
    println!("built {}", deb.display());
    Ok(())
}

/// Builds the binary and the package; returns the package's path.
pub fn build_deb(profile: Profile) -> Result<PathBuf> {
    let bin = build(profile)?;
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?
        .trim()
        .to_string();
    let out = target_dir()?.join("debian");
    let root = out.join(format!("{NAME}_{version}_{arch}"));
    if root.exists() {
        fs::remove_dir_all(&root).with_context(|| format!("remove {}", root.display()))?;
    }
    let ws = workspace_root();
    let deploy = ws.join("deploy");
    install(&bin, &root.join("usr/bin/bascule"), 0o755)?;
    install(
        &deploy.join("systemd/bascule.service"),
        &root.join("lib/systemd/system/bascule.service"),
        0o644,
    )?;
    install(
        &deploy.join("debian/bascule.yaml"),
        &root.join(CONFFILE.trim_start_matches('/')),
        0o644,
    )?;
    for (shell, dest) in [
        ("bash", BASH_COMPLETION),
        ("zsh", ZSH_COMPLETION),
        ("fish", FISH_COMPLETION),
    ] {
        let script = output(Command::new(&bin).args(["completions", shell]))?;
        write(&root.join(dest), script.as_bytes(), 0o644)?;
    }
    let man = output(Command::new(&bin).arg("manpage"))?;
    write(&root.join(MAN_PAGE), &gzip(man.as_bytes())?, 0o644)?;
    let doc = root.join("usr/share/doc/bascule");
    for file in [
        "README.md",
        "docs/configuration.md",
        "docs/operations.md",
        "LICENSE-MIT",
        "LICENSE-APACHE",
    ] {
        let from = ws.join(file);
        if from.exists() {
            let name = Path::new(file).file_name().expect("a file name");
            install(&from, &doc.join(name), 0o644)?;
        }
    }
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    for entry in fs::read_dir(deploy.join("examples"))? {
        let path = entry?.path();
        let name = path.file_name().expect("a file name");
        install(&path, &doc.join("examples").join(name), 0o644)?;
    }
    let debian = root.join("DEBIAN");
    write(
        &debian.join("control"),
        control(version, &arch, installed_size(&root)?).as_bytes(),
        0o644,
    )?;
    write(
        &debian.join("conffiles"),
        format!("{CONFFILE}\n").as_bytes(),
        0o644,
    )?;
    write(
        &debian.join("postinst"),
        MAINTAINER_SCRIPT.as_bytes(),
        0o755,
    )?;
    write(&debian.join("postrm"), MAINTAINER_SCRIPT.as_bytes(), 0o755)?;
    let deb = out.join(format!("{NAME}_{version}_{arch}.deb"));
    // The debug binary is large (debug info) and only installed by the test: stored, not
    // compressed, so that building it takes a second, not minutes of xz.
    let compression = match profile {
        Profile::Release => "-Zxz",
        Profile::Debug => "-Znone",
    };
    run_checked(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", compression, "--build"])
            .arg(&root)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The package as an operator meets it: installed with dpkg, the binary runs and says
/// which commit it is, the manual page and completions are found, the configuration is
/// a conffile the binary accepts; purged, nothing of it stays.
pub fn install_test() -> Result<()> {
    let deb = build_deb(Profile::Debug)?;
    run_checked(Command::new("dpkg").arg("-i").arg(&deb))?;
    let checked = check_installed();
    run_checked(Command::new("dpkg").args(["--purge", NAME]))?;
    checked?;
    for left in [
        "/usr/bin/bascule",
        CONFFILE,
        "/lib/systemd/system/bascule.service",
    ] {
        if Path::new(left).exists() {
            bail!("{left} is still there after `dpkg --purge {NAME}`");
        }
    }
    println!(
        "ok   package installed, checked and purged: {}",
        deb.display()
    );
    Ok(())
}

fn check_installed() -> Result<()> {
    let version = output(Command::new("/usr/bin/bascule").arg("--version"))?;
    let expected = format!("bascule {} (", env!("CARGO_PKG_VERSION"));
    if !version.starts_with(&expected) {
        bail!("`bascule --version` printed {version:?}, expected {expected}COMMIT)");
    }
    let man = output(Command::new("man").args(["-w", NAME]))?;
    if man.trim() != format!("/{MAN_PAGE}") {
        bail!("`man -w bascule` found {man:?}");
    }
    // bash completes the subcommands from the installed script.
    let words = output(Command::new("bash").arg("-c").arg(format!(
        ". /{BASH_COMPLETION} && COMP_WORDS=(bascule st) COMP_CWORD=1 && \
         _bascule bascule st bascule && echo \"${{COMPREPLY[@]}}\""
    )))?;
    if words.split_whitespace().collect::<Vec<_>>() != ["status"] {
        bail!("bash completion of `bascule st` gave {words:?}, expected status");
    }
    for script in [ZSH_COMPLETION, FISH_COMPLETION] {
        let text = fs::read_to_string(Path::new("/").join(script))
            .with_context(|| format!("read /{script}"))?;
        if !text.contains("simulate") {
            bail!("/{script} does not complete `simulate`");
        }
    }
    let conffiles = output(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", NAME]))?;
    if !conffiles.contains(CONFFILE) {
        bail!("{CONFFILE} is not a conffile: {conffiles:?}");
    }
    run_checked(Command::new("/usr/bin/bascule").args(["check", "--no-host", "-c", CONFFILE]))?;
    // The unit as this machine's systemd reads it (unknown settings, a Type= it lacks).
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/bascule.service"])
        .output()
        .context("cannot run systemd-analyze")?;
    let said = String::from_utf8_lossy(&verify.stderr);
    if !verify.status.success() || said.contains("bascule.service") {
        bail!(
            "systemd-analyze verify of the installed unit: {}",
            said.trim()
        );
    }
    Ok(())
}

/// Copies `from` to `to` (creating its directory) with `mode`.
fn install(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let bytes = fs::read(from).with_context(|| format!("read {}", from.display()))?;
    write(to, &bytes, mode)
}

fn write(to: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = to.parent().expect("a file in a directory");
    fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    fs::write(to, bytes).with_context(|| format!("write {}", to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", to.display()))
}

/// `gzip -9n`: no name or time stamp in the header, so the same page gives the same bytes.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-9n")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(bytes)
        .context("write to gzip")?;
    let out = child.wait_with_output().context("gzip")?;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The package's size in KiB, as `Installed-Size` wants it.
fn installed_size(root: &Path) -> Result<u64> {
    fn walk(dir: &Path) -> Result<u64> {
        let mut bytes = 0;
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            bytes += if meta.is_dir() {
                walk(&entry.path())?
            } else {
                meta.len()
            };
        }
        Ok(bytes)
    }
    Ok(walk(root)?.div_ceil(1024))
}

fn control(version: &str, arch: &str, size_kib: u64) -> String {
    format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: The bascule developers <bascule@localhost>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6\n\
         Section: net\n\
         Priority: optional\n\
         Description: layer-4 load balancer and failover daemon (XDP)\n \
         bascule balances TCP and UDP services in the kernel with an XDP program\n \
         (direct routing, IP-in-IP or NAT; Maglev and the IPVS schedulers), checks\n \
         its backends' health, moves virtual addresses between nodes with VRRP and\n \
         serves an API and Prometheus metrics, from one YAML file.\n"
    )
}

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: bascule\n\n\
     Files: *\n\
     Copyright: 2026 The bascule developers\n\
     License: MIT or Apache-2.0\n \
     The full texts are in LICENSE-MIT and LICENSE-APACHE beside this file.\n"
        .to_string()
}

/// postinst and postrm: systemd reads the unit again when it runs (nothing is enabled or
/// started: a load balancer starts once its configuration is the operator's).
const MAINTAINER_SCRIPT: &str = "#!/bin/sh\nset -e\n\
if [ -d /run/systemd/system ]; then\n\
    systemctl daemon-reload >/dev/null || true\n\
fi\n";
