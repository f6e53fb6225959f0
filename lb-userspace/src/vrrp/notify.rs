//! Notify scripts, called as keepalived calls them: `SCRIPT INSTANCE NAME STATE PRIORITY`
//! (e.g. `/etc/bascule/notify.sh INSTANCE VI_1 MASTER 150`). The configured string is a
//! shell command line, so it may carry its own arguments before those four.
//!
//! Scripts run one at a time per instance, in the order of the transitions, on a task of
//! their own: a slow script delays the next script, never the state machine. At most
//! [`QUEUED`] calls wait: under a flood of transitions the oldest waiting ones are dropped
//! (logged, counted), so the last scripts to run are those of the latest states. Each
//! script runs in a process group of its own, killed whole when the script outlives its
//! timeout (or when the instance stops waiting for it), and without the daemon's
//! capabilities (see [`crate::util::caps`]).

use std::{
    collections::VecDeque,
    process::Stdio,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{process::Command, sync::Notify, task::JoinHandle};

use super::state::State;
use crate::util::caps;

/// A script still running after this is killed, so that one stuck script does not hold
/// back every later notification.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);
/// Calls waiting to run, at most; a newer call pushes out the oldest waiting one.
const QUEUED: usize = 16;

/// A script line and its four arguments.
type Call = (String, Vec<String>);

pub struct Notifier {
    queue: Arc<Queue>,
    worker: Option<JoinHandle<()>>,
}

#[derive(Default)]
struct Queue {
    waiting: Mutex<Waiting>,
    wake: Notify,
}

#[derive(Default)]
struct Waiting {
    calls: VecDeque<Call>,
    /// No call comes any more: the worker ends once `calls` is empty.
    closed: bool,
    dropped: u64,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiting> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// The next call, or `None` once closed and empty.
    async fn next(&self) -> Option<Call> {
        loop {
            {
                let mut waiting = self.lock();
                if let Some(call) = waiting.calls.pop_front() {
                    return Some(call);
                }
                if waiting.closed {
                    return None;
                }
            }
            // A wake-up between the check and here is kept by `Notify` (one permit).
            self.wake.notified().await;
        }
    }
}

impl Notifier {
    pub fn spawn(instance: &str) -> Notifier {
        Notifier::with_timeout(instance, SCRIPT_TIMEOUT)
    }

    /// Scripts still running after `timeout` are killed.
    pub fn with_timeout(instance: &str, timeout: Duration) -> Notifier {
        let queue = Arc::new(Queue::default());
        let instance = instance.to_string();
        let work = queue.clone();
        let worker = tokio::spawn(async move {
            while let Some((script, args)) = work.next().await {
                run(&instance, &script, &args, timeout).await;
            }
        });
        Notifier {
            queue,
            worker: Some(worker),
        }
    }

    /// Queues `script INSTANCE name STATE priority`.
    pub fn call(&self, script: &str, instance: &str, state: State, priority: u8) {
        let args = vec![
            "INSTANCE".to_string(),
            instance.to_string(),
            state.keepalived_name().to_string(),
            priority.to_string(),
        ];
        let mut waiting = self.queue.lock();
        waiting.calls.push_back((script.to_string(), args));
        if waiting.calls.len() > QUEUED {
            waiting.calls.pop_front();
            waiting.dropped += 1;
            let dropped = waiting.dropped;
            if dropped == 1 || dropped.is_multiple_of(100) {
                tracing::warn!(
                    instance,
                    dropped,
                    "more than {QUEUED} notify scripts waiting: the oldest was dropped"
                );
            }
        }
        drop(waiting);
        self.queue.wake.notify_one();
    }

    /// Lets the queued scripts run, for at most `within`.
    pub async fn finish(mut self, within: Duration) {
        self.queue.close();
        let Some(mut worker) = self.worker.take() else {
            return;
        };
        if tokio::time::timeout(within, &mut worker).await.is_err() {
            tracing::warn!("notify scripts still running after {within:?}: stopped");
            worker.abort();
        }
    }
}

impl Drop for Notifier {
    /// The queued scripts still run, on their own.
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Kills a script's whole process group when dropped, unless disarmed once the script
/// has been reaped (its id may then be another process's).
pub(super) struct ProcessGroup(Option<i32>);

impl ProcessGroup {
    /// The group `child` leads (spawned with `process_group(0)`).
    pub(super) fn of(child: &tokio::process::Child) -> ProcessGroup {
        ProcessGroup(child.id().and_then(|pid| i32::try_from(pid).ok()))
    }

    /// The leader was reaped: nothing to kill any more.
    pub(super) fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: kill(2) on the group the script leads; its leader is not reaped yet,
            // so the id is still the script's.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

async fn run(instance: &str, script: &str, args: &[String], timeout: Duration) {
    // `sh -c 'SCRIPT "$@"' SCRIPT ARGS...`: the script line as written, then the arguments,
    // each one word whatever it holds.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{script} \"$@\""))
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    caps::run_without_capabilities(&mut cmd);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            let hint = caps::spawn_hint(&e);
            tracing::warn!(instance, script, "cannot run notify script: {e}{hint}");
            return;
        }
    };
    // Declared after `child`, so dropped first: the group dies before the leader is reaped.
    let mut group = ProcessGroup::of(&child);
    let result = tokio::time::timeout(timeout, child.wait()).await;
    if result.is_ok() {
        group.disarm();
    }
    match result {
        Ok(Ok(status)) if status.success() => {
            tracing::debug!(instance, script, "notify script done")
        }
        Ok(Ok(status)) => {
            tracing::warn!(instance, script, "notify script failed: {status}")
        }
        Ok(Err(e)) => tracing::warn!(instance, script, "cannot run notify script: {e}"),
        Err(_) => {
            drop(group);
            let _ = child.wait().await;
            tracing::warn!(
                instance,
                script,
                "notify script still running after {timeout:?}: killed with its process group"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory of its own under the system's temporary one, removed at the end.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(name: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("bascule-notify-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        /// An executable shell script `name` holding `body`.
        fn script(&self, name: &str, body: &str) -> String {
            use std::os::unix::fs::PermissionsExt;
            let path = self.0.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path.to_str().unwrap().to_string()
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.0.join(name)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Whether `pid` is a live process (not gone, not a zombie waiting for its reaper).
    fn alive(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
            Err(_) => false,
        }
    }

    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {what} within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_script_past_its_timeout_is_killed_with_its_children() {
        let dir = Scratch::new("timeout");
        let pid_file = dir.path("child.pid");
        let script = dir.script(
            "notify.sh",
            &format!("sleep 60 &\necho $! > {}\nwait\n", pid_file.display()),
        );
        let notifier = Notifier::with_timeout("VI_1", Duration::from_millis(300));
        notifier.call(&script, "VI_1", State::Master, 150);
        eventually("started", || {
            std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
        })
        .await;
        let child: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(child));
        let gone = tokio::time::timeout(Duration::from_secs(5), async {
            while alive(child) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if gone.is_err() {
            // SAFETY: kill(2) on the test's own leftover child.
            unsafe { libc::kill(child, libc::SIGKILL) };
            panic!("the script's child {child} outlived the script's timeout by 5 s");
        }
        notifier.finish(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_script_runs_without_the_daemons_capabilities() {
        let eff = |status: &str, set: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(set)?.strip_prefix(':'))
                .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        };
        let ours = std::fs::read_to_string("/proc/self/status").unwrap();
        assert_ne!(
            eff(&ours, "CapEff"),
            Some(0),
            "the test needs capabilities of its own to see them dropped (run as root)"
        );
        let dir = Scratch::new("caps");
        let seen = dir.path("status");
        let script = dir.script(
            "notify.sh",
            &format!("cat /proc/self/status > {}\n", seen.display()),
        );
        let notifier = Notifier::with_timeout("VI_1", Duration::from_secs(5));
        notifier.call(&script, "VI_1", State::Master, 100);
        notifier.finish(Duration::from_secs(10)).await;
        let status = std::fs::read_to_string(&seen).unwrap();
        for set in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(eff(&status, set), Some(0), "{set} of the script:\n{status}");
        }
    }

    #[tokio::test]
    async fn a_flood_of_transitions_keeps_the_latest_scripts() {
        let dir = Scratch::new("flood");
        let log = dir.path("calls");
        let script = dir.script("notify.sh", &format!("echo \"$4\" >> {}\n", log.display()));
        let notifier = Notifier::with_timeout("VI_1", Duration::from_secs(5));
        for priority in 0..=200 {
            notifier.call(&script, "VI_1", State::Master, priority);
        }
        notifier.finish(Duration::from_secs(30)).await;
        let calls = std::fs::read_to_string(&log).unwrap();
        let expected: Vec<String> = (201 - QUEUED as u32..=200).map(|p| p.to_string()).collect();
        assert_eq!(calls.lines().collect::<Vec<_>>(), expected);
    }
}
