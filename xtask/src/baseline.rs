//! `cargo xtask bench --baseline REV`: the XDP object of another revision, for the bench
//! to measure beside this build's in the same run (its figures are `baseline.xdp.*`).
//! The revision's tree is exported under `target/baseline/<commit>/` and built there by
//! its own build script, with its own eBPF flags; the dependencies' builds are kept in
//! `target/baseline/target/` for the next revision (the first build takes minutes).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::{cargo, output, run_checked, target_dir, workspace_root};

/// Builds revision `rev`'s XDP object; its path.
pub fn object(rev: &str) -> Result<PathBuf> {
    let root = workspace_root();
    let commit = output(
        std::process::Command::new("git")
            .args(["rev-parse", "--verify", &format!("{rev}^{{commit}}")])
            .current_dir(root),
    )
    .with_context(|| format!("--baseline {rev}: not a revision of this repository"))?
    .trim()
    .to_string();
    let base = target_dir()?.join("baseline");
    let tree = base.join(&commit);
    if !tree.exists() {
        // Exported beside, then renamed: an interrupted export leaves no tree that a
        // later run would take for whole.
        let partial = base.join(format!("{commit}.partial"));
        let tar = base.join(format!("{commit}.tar"));
        let _ = std::fs::remove_dir_all(&partial);
        std::fs::create_dir_all(&partial)
            .with_context(|| format!("cannot create {}", partial.display()))?;
        println!("==> exporting {rev} ({commit}) to {}", tree.display());
        run_checked(
            std::process::Command::new("git")
                .args(["archive", "--format=tar", "-o"])
                .arg(&tar)
                .arg(&commit)
                .current_dir(root),
        )?;
        run_checked(
            std::process::Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&partial),
        )?;
        let _ = std::fs::remove_file(&tar);
        std::fs::rename(&partial, &tree).with_context(|| {
            format!("cannot rename {} to {}", partial.display(), tree.display())
        })?;
    }
    println!("==> building {rev}'s XDP object");
    let targets = base.join("target");
    run_checked(
        cargo()
            .args(["build", "--release", "-p", "lb-userspace", "--lib"])
            .current_dir(&tree)
            .env("CARGO_TARGET_DIR", &targets),
    )?;
    newest_object(&targets.join("release/build"))
}

/// The newest `lb-userspace-*/out/lb-ebpf` under `build` (a build script's output).
pub fn newest_object(build: &std::path::Path) -> Result<PathBuf> {
    let mut found: Option<(std::time::SystemTime, PathBuf)> = None;
    let entries =
        std::fs::read_dir(build).with_context(|| format!("cannot read {}", build.display()))?;
    for entry in entries.flatten() {
        if !entry
            .file_name()
            .to_string_lossy()
            .starts_with("lb-userspace-")
        {
            continue;
        }
        let object = entry.path().join("out/lb-ebpf");
        if let Ok(modified) = object.metadata().and_then(|m| m.modified()) {
            if found.as_ref().is_none_or(|(t, _)| modified > *t) {
                found = Some((modified, object));
            }
        }
    }
    match found {
        Some((_, path)) => Ok(path),
        None => bail!(
            "no XDP object (lb-userspace-*/out/lb-ebpf) under {}: the build above succeeded \
             without one, so this revision's build script names or places it elsewhere; \
             measure against a revision that builds the datapath with lb-userspace's build \
             script",
            build.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build directory without the datapath's object says what was looked for and why
    /// it may be missing; the newest of several objects is the one taken.
    #[test]
    fn the_newest_object_or_what_was_looked_for() {
        let dir = std::env::temp_dir().join(format!("xtask-objects-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lb-userspace-aaa/out")).unwrap();
        let err = newest_object(&dir).unwrap_err().to_string();
        assert!(err.contains("lb-userspace-*/out/lb-ebpf"), "{err}");
        assert!(err.contains("build script"), "{err}");
        std::fs::write(dir.join("lb-userspace-aaa/out/lb-ebpf"), b"old").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::create_dir_all(dir.join("lb-userspace-bbb/out")).unwrap();
        std::fs::write(dir.join("lb-userspace-bbb/out/lb-ebpf"), b"new").unwrap();
        let found = newest_object(&dir).unwrap();
        assert_eq!(std::fs::read(found).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
