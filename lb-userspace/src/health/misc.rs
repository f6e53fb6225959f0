//! `misc`: runs `command` with `/bin/sh -c`, killed (with its process group) after
//! `timeout`. Exit 0: up; 1: down; with `dynamic: true`, 2..=255: up with weight
//! `code - 2` (keepalived's `misc_dynamic`); anything else: down.
//!
//! The command learns which backend it checks from its environment: `BASCULE_SERVICE`,
//! `BASCULE_BACKEND_ADDRESS`, `BASCULE_BACKEND_PORT` (and `BASCULE_BACKEND`, the two
//! together as `ADDRESS:PORT`). It runs without the daemon's capabilities (see
//! [`crate::util::caps`]).

use std::{os::unix::process::ExitStatusExt, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::Command,
};

use crate::{
    config::{format_duration, HealthCheck},
    util::caps,
};

use super::{BackendKey, Outcome};

/// Output kept for the log (the rest is read and dropped, so the command never blocks).
const KEPT_OUTPUT: usize = 1024;

pub(super) struct MiscCheck {
    command: String,
    dynamic: bool,
    env: Vec<(&'static str, String)>,
}

impl MiscCheck {
    pub fn new(hc: &HealthCheck, key: &BackendKey) -> MiscCheck {
        MiscCheck {
            command: hc.command.clone().unwrap_or_default(),
            dynamic: hc.dynamic,
            env: vec![
                ("BASCULE_SERVICE", key.service.clone()),
                ("BASCULE_BACKEND_ADDRESS", key.address.to_string()),
                ("BASCULE_BACKEND_PORT", key.port.to_string()),
                ("BASCULE_BACKEND", key.socket_addr().to_string()),
            ],
        }
    }

    pub async fn attempt(&self, timeout: Duration) -> Outcome {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&self.command)
            .envs(self.env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        caps::run_without_capabilities(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                return Outcome::Down(format!(
                    "cannot run `{}`: {e}{}",
                    self.command,
                    caps::spawn_hint(&e)
                ))
            }
        };
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let run = async {
            let (out, err, status) = tokio::join!(kept(stdout), kept(stderr), child.wait());
            (out, err, status)
        };
        match tokio::time::timeout(timeout, run).await {
            Ok((out, err, Ok(status))) => {
                let output = if out.trim().is_empty() { err } else { out };
                judge_exit(
                    &self.command,
                    status.code(),
                    status.signal(),
                    self.dynamic,
                    &output,
                )
            }
            Ok((_, _, Err(e))) => Outcome::Down(format!("`{}`: {e}", self.command)),
            Err(_) => {
                if let Some(pid) = child.id() {
                    // SAFETY: kill(2) on the process group the command leads.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
                let _ = child.kill().await;
                Outcome::Down(format!(
                    "`{}` did not finish within {} (killed)",
                    self.command,
                    format_duration(timeout)
                ))
            }
        }
    }
}

/// Reads a pipe to its end, keeping the first [`KEPT_OUTPUT`] bytes.
async fn kept(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = pipe.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = KEPT_OUTPUT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// The outcome of a finished command.
pub(super) fn judge_exit(
    command: &str,
    code: Option<i32>,
    signal: Option<i32>,
    dynamic: bool,
    output: &str,
) -> Outcome {
    let said = output
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(|l| {
            let cut: String = l.chars().take(200).collect();
            format!(": {cut}")
        })
        .unwrap_or_default();
    match (code, signal) {
        (Some(0), _) => Outcome::Up,
        (Some(c @ 2..=255), _) if dynamic => Outcome::UpWithWeight(c as u32 - 2),
        (Some(c), _) => Outcome::Down(format!("`{command}` exited with {c}{said}")),
        (None, Some(s)) => Outcome::Down(format!("`{command}` was killed by signal {s}{said}")),
        (None, None) => Outcome::Down(format!("`{command}` ended without an exit code")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        let j = |code, dynamic| judge_exit("check-x", Some(code), None, dynamic, "");
        assert_eq!(j(0, false), Outcome::Up);
        assert_eq!(j(0, true), Outcome::Up);
        assert_eq!(j(1, true), Outcome::Down("`check-x` exited with 1".into()));
        assert_eq!(j(2, true), Outcome::UpWithWeight(0));
        assert_eq!(j(12, true), Outcome::UpWithWeight(10));
        assert_eq!(j(255, true), Outcome::UpWithWeight(253));
        assert_eq!(
            j(12, false),
            Outcome::Down("`check-x` exited with 12".into())
        );
        assert_eq!(
            judge_exit("c", Some(1), None, false, "\n  disk full  \nmore\n"),
            Outcome::Down("`c` exited with 1: disk full".into())
        );
        assert_eq!(
            judge_exit("c", None, Some(9), true, ""),
            Outcome::Down("`c` was killed by signal 9".into())
        );
    }

    /// The capability sets of `/proc/self/status` text, by name (`CapEff`, ...).
    fn capabilities(status: &str) -> Vec<(String, u64)> {
        status
            .lines()
            .filter_map(|l| {
                let (name, value) = l.split_once(':')?;
                let value = u64::from_str_radix(value.trim(), 16).ok()?;
                name.starts_with("Cap").then(|| (name.to_string(), value))
            })
            .collect()
    }

    #[tokio::test]
    async fn a_command_runs_without_the_daemons_capabilities() {
        let ours = capabilities(&std::fs::read_to_string("/proc/self/status").unwrap());
        assert!(
            ours.iter().any(|(n, v)| n == "CapEff" && *v != 0),
            "the test needs capabilities of its own to see them dropped (run as root): {ours:?}"
        );
        let file = std::env::temp_dir().join(format!("bascule-misc-caps-{}", std::process::id()));
        let check = MiscCheck {
            command: format!("cat /proc/self/status > {}", file.display()),
            dynamic: false,
            env: Vec::new(),
        };
        let outcome = check.attempt(Duration::from_secs(10)).await;
        let status = std::fs::read_to_string(&file).unwrap_or_default();
        let _ = std::fs::remove_file(&file);
        assert_eq!(outcome, Outcome::Up);
        let seen = capabilities(&status);
        let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]);
        assert!(
            seen.iter().all(|(_, v)| *v == 0),
            "the command kept capabilities: {seen:x?}"
        );
    }
}
