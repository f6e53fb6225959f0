//! `bascule import-keepalived` on every `tests/keepalived/*.conf`, against golden files:
//! `NAME.yaml` (the YAML written) and `NAME.report` (what is printed on standard error).
//! Every imported file must pass `bascule check --no-host`. Inputs named `refused_*` must
//! be refused: exit status 1, no output file, the `FILE:LINE` error as their report.
//!
//! The command runs in `tests/keepalived/` with relative names, as an operator would run
//! it, so that the names in the findings and comments are stable. Files the inputs include
//! live in `tests/keepalived/includes.d/`.
//!
//! To accept a deliberate change of the output: `BASCULE_UPDATE_GOLDEN=1 cargo test -p
//! lb-userspace --test keepalived_import`, then review the diff of `tests/keepalived/`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

const BASCULE: &str = env!("CARGO_BIN_EXE_bascule");

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keepalived")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("bascule-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run(args: &[&str]) -> Output {
    Command::new(BASCULE)
        .current_dir(golden_dir())
        .args(args)
        .output()
        .expect("run bascule")
}

/// Compares `got` with the golden file `path` (or writes it when updating); a difference
/// is returned as a message.
fn compare(path: &Path, got: &str, update: bool) -> Option<String> {
    if update {
        std::fs::write(path, got).unwrap();
    }
    let expected = std::fs::read_to_string(path).unwrap_or_default();
    (expected != got).then(|| {
        format!(
            "{} differs (BASCULE_UPDATE_GOLDEN=1 to accept):\n--- expected\n{expected}--- got\n{got}",
            path.display()
        )
    })
}

#[test]
fn every_golden_input_imports_as_expected_and_passes_check() {
    let dir = golden_dir();
    let update = std::env::var_os("BASCULE_UPDATE_GOLDEN").is_some();
    let out_dir = scratch("kad-golden");
    let mut inputs: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".conf"))
        .collect();
    inputs.sort();
    // The seed talk's three examples, the realistic files and the refused ones.
    assert!(inputs.len() >= 14, "too few golden inputs: {inputs:?}");
    let mut failures = Vec::new();
    for input in &inputs {
        let stem = input.trim_end_matches(".conf");
        let out = out_dir.join(format!("{stem}.yaml"));
        let _ = std::fs::remove_file(&out);
        let o = run(&["import-keepalived", input, "-o", out.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
        let refused = stem.starts_with("refused_");
        let expected_code = if refused { 1 } else { 0 };
        if o.status.code() != Some(expected_code) {
            failures.push(format!(
                "{input}: exit status {:?}, expected {expected_code}; stderr:\n{stderr}",
                o.status.code()
            ));
            continue;
        }
        failures.extend(compare(
            &dir.join(format!("{stem}.report")),
            &stderr,
            update,
        ));
        if refused {
            if out.exists() {
                failures.push(format!(
                    "{input}: refused, yet {} was written",
                    out.display()
                ));
            }
            continue;
        }
        let yaml = std::fs::read_to_string(&out).unwrap_or_default();
        failures.extend(compare(&dir.join(format!("{stem}.yaml")), &yaml, update));
        let check = run(&["check", "--no-host", "-c", out.to_str().unwrap()]);
        if !check.status.success() {
            failures.push(format!(
                "{input}: bascule check --no-host refuses the import:\n{}{}",
                String::from_utf8_lossy(&check.stdout),
                String::from_utf8_lossy(&check.stderr)
            ));
        }
    }
    std::fs::remove_dir_all(&out_dir).ok();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn without_output_the_yaml_goes_to_standard_output() {
    let o = run(&["import-keepalived", "seed_tic.conf"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let golden = std::fs::read_to_string(golden_dir().join("seed_tic.yaml")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), golden);
    let report = std::fs::read_to_string(golden_dir().join("seed_tic.report")).unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stderr), report);
}

#[test]
fn an_unreadable_input_or_output_fails_with_status_1() {
    let o = run(&["import-keepalived", "no-such-file.conf"]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("error: no-such-file.conf: cannot read: "),
        "{stderr}"
    );
    let dir = scratch("kad-unwritable");
    let target = dir.join("missing-dir/out.yaml");
    let o = run(&[
        "import-keepalived",
        "seed_tac.conf",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("cannot write"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    std::fs::remove_dir_all(&dir).ok();
}
