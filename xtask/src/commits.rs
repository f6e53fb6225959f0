//! Commit subjects, checked by `cargo xtask test` before anything lands: `area: imperative
//! summary`, at most 72 characters, and no "Review mend" commit (a review's fix is folded
//! into the commit it fixes). Only the commits not yet on `origin/main` are checked: those
//! already there cannot change.

use std::{path::Path, process::Command};

use anyhow::{bail, Result};

use crate::output;

/// The most characters a subject may have (what `git log --oneline` and mail subjects
/// show whole).
pub const MAX_SUBJECT: usize = 72;

/// What is wrong with a commit subject, if anything.
pub fn subject_problem(subject: &str) -> Option<String> {
    if subject
        .get(..11)
        .is_some_and(|start| start.eq_ignore_ascii_case("review mend"))
    {
        return Some(
            "a review fix: fold it into the commit it fixes (git commit --fixup, then \
             git rebase -i --autosquash)"
                .into(),
        );
    }
    let length = subject.chars().count();
    if length > MAX_SUBJECT {
        return Some(format!(
            "{length} characters, at most {MAX_SUBJECT}: put the details in the body"
        ));
    }
    let form = "expected `area: imperative summary`, the area in lowercase (e.g. \
                `datapath: ...`, `lb-ebpf/parse: ...`)";
    let Some((area, summary)) = subject.split_once(": ") else {
        return Some(format!("no `area: ` before the summary; {form}"));
    };
    let area_char = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '/' | '.' | ',')
    };
    let words_ok = !area.is_empty()
        && area
            .split(' ')
            .all(|word| !word.is_empty() && word.chars().all(area_char));
    if !words_ok {
        return Some(format!(
            "area `{area}` is not lowercase words or a path; {form}"
        ));
    }
    if summary.trim().is_empty() || summary.starts_with(' ') {
        return Some(format!("no summary after `{area}: `; {form}"));
    }
    None
}

/// The subjects of the commits of `repo`'s HEAD that `origin/main` does not have (merges
/// left out: git writes their subjects), oldest first; `None` when the repository knows
/// no `origin/main`.
pub fn unlanded_subjects(repo: &Path) -> Result<Option<Vec<String>>> {
    let known = Command::new("git")
        .current_dir(repo)
        .args(["rev-parse", "--verify", "-q", "refs/remotes/origin/main"])
        .output();
    match known {
        Ok(out) if out.status.success() => {}
        _ => return Ok(None),
    }
    let log = output(Command::new("git").current_dir(repo).args([
        "log",
        "--no-merges",
        "--reverse",
        "--format=%s",
        "refs/remotes/origin/main..HEAD",
    ]))?;
    Ok(Some(log.lines().map(str::to_string).collect()))
}

/// The `cargo xtask test` step: lists the subjects it checks, fails naming each bad one.
pub fn check(repo: &Path) -> Result<()> {
    let Some(subjects) = unlanded_subjects(repo)? else {
        println!(
            "skip commit subjects: this checkout knows no origin/main \
             (refs/remotes/origin/main), so no commit can be told apart as not yet landed"
        );
        return Ok(());
    };
    if subjects.is_empty() {
        println!("ok   no commit beyond origin/main");
        return Ok(());
    }
    let mut bad = Vec::new();
    for subject in &subjects {
        match subject_problem(subject) {
            Some(why) => {
                println!("bad  {subject}");
                bad.push(format!("  \"{subject}\": {why}"));
            }
            None => println!("ok   {subject}"),
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} of {} commit subject(s) beyond origin/main break the commit style \
             (CONTRIBUTING.md):\n{}",
            bad.len(),
            subjects.len(),
            bad.join("\n")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_subjects_pass() {
        for subject in [
            "datapath: check flow::schedule as a global BPF function",
            "lb-ebpf/parse: read IPv6 without extension headers inline",
            "docs: split the README by reader",
            "config, plan: keep ids of renamed services",
            "xtask: check commit subjects",
            "a2: x",
        ] {
            assert_eq!(subject_problem(subject), None, "{subject}");
        }
        let exactly_72 = format!("docs: {}", "x".repeat(MAX_SUBJECT - 6));
        assert_eq!(exactly_72.chars().count(), 72);
        assert_eq!(subject_problem(&exactly_72), None);
    }

    #[test]
    fn bad_subjects_are_named_with_the_reason() {
        let cases = [
            ("Review mend: fold this", "a review fix"),
            ("review mends: the test's name", "a review fix"),
            ("README: daemon start figures", "not lowercase"),
            (
                "README Performance: figures of the full run",
                "not lowercase",
            ),
            (
                "Maglev tail's free slots read from the bitmap",
                "no `area: `",
            ),
            ("datapath:no space after the colon", "no `area: `"),
            ("datapath:  two spaces", "no summary"),
            ("datapath: ", "no summary"),
            (": no area", "not lowercase"),
            ("data  path: two spaces in the area", "not lowercase"),
        ];
        for (subject, why) in cases {
            let problem = subject_problem(subject).unwrap_or_default();
            assert!(problem.contains(why), "{subject:?}: {problem:?}");
        }
        let long = format!("docs: {}", "x".repeat(MAX_SUBJECT - 5));
        let problem = subject_problem(&long).unwrap_or_default();
        assert!(
            problem.starts_with("73 characters, at most 72"),
            "{problem}"
        );
        // Characters, not bytes: 72 of them pass even when some are two bytes long.
        let accented = format!("docs: {}", "é".repeat(MAX_SUBJECT - 6));
        assert_eq!(subject_problem(&accented), None);
    }

    /// A repository in a temporary directory, with `origin/main` at its first commit.
    fn repo_with_commits(subjects: &[&str], with_origin: bool) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "xtask-commits-{}-{}",
            std::process::id(),
            subjects.len() * 2 + usize::from(with_origin)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let git = |args: &[&str]| {
            let out = Command::new("git")
                .current_dir(&dir)
                .args(["-c", "user.name=t", "-c", "user.email=t@example.com"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "git {args:?}: {out:?}");
        };
        git(&["init", "-q", "-b", "work"]);
        git(&[
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "Landed long ago, any style",
        ]);
        if with_origin {
            git(&["update-ref", "refs/remotes/origin/main", "HEAD"]);
        }
        for subject in subjects {
            git(&["commit", "-q", "--allow-empty", "-m", subject]);
        }
        dir
    }

    #[test]
    fn only_commits_beyond_origin_main_are_checked() {
        let dir = repo_with_commits(&["docs: split the README", "Review mend: wrap"], true);
        let subjects = unlanded_subjects(&dir).unwrap();
        let failure = check(&dir).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            subjects,
            Some(vec![
                "docs: split the README".to_string(),
                "Review mend: wrap".to_string()
            ])
        );
        assert!(failure.contains("1 of 2 commit subject(s)"), "{failure}");
        assert!(
            failure.contains("\"Review mend: wrap\": a review fix"),
            "{failure}"
        );
        assert!(!failure.contains("Landed long ago"), "{failure}");
    }

    #[test]
    fn without_origin_main_the_check_is_skipped() {
        let dir = repo_with_commits(&["Not checked"], false);
        let subjects = unlanded_subjects(&dir).unwrap();
        let outcome = check(&dir);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(subjects, None);
        assert!(outcome.is_ok());
    }
}
