//! Notify scripts, called as keepalived calls them: `SCRIPT INSTANCE NAME STATE PRIORITY`
//! (e.g. `/etc/bascule/notify.sh INSTANCE VI_1 MASTER 150`). The configured string is a
//! shell command line, so it may carry its own arguments before those four.
//!
//! Scripts run one at a time per instance, in the order of the transitions, on a task of
//! their own: a slow script delays the next script, never the state machine.

use std::{process::Stdio, time::Duration};

use tokio::{process::Command, sync::mpsc, task::JoinHandle};

use super::state::State;

/// A script still running after this is killed, so that one stuck script does not hold
/// back every later notification.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Notifier {
    tx: mpsc::UnboundedSender<(String, Vec<String>)>,
    worker: JoinHandle<()>,
}

impl Notifier {
    pub fn spawn(instance: &str) -> Notifier {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, Vec<String>)>();
        let instance = instance.to_string();
        let worker = tokio::spawn(async move {
            while let Some((script, args)) = rx.recv().await {
                run(&instance, &script, &args).await;
            }
        });
        Notifier { tx, worker }
    }

    /// Queues `script INSTANCE name STATE priority`.
    pub fn call(&self, script: &str, instance: &str, state: State, priority: u8) {
        let args = vec![
            "INSTANCE".to_string(),
            instance.to_string(),
            state.keepalived_name().to_string(),
            priority.to_string(),
        ];
        // The worker lives as long as `self`: sending cannot fail before `finish`.
        let _ = self.tx.send((script.to_string(), args));
    }

    /// Lets the queued scripts run, for at most `within`.
    pub async fn finish(self, within: Duration) {
        drop(self.tx);
        let mut worker = self.worker;
        if tokio::time::timeout(within, &mut worker).await.is_err() {
            tracing::warn!("notify scripts still running after {within:?}: stopped");
            worker.abort();
        }
    }
}

async fn run(instance: &str, script: &str, args: &[String]) {
    // `sh -c 'SCRIPT "$@"' SCRIPT ARGS...`: the script line as written, then the arguments,
    // each one word whatever it holds.
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(format!("{script} \"$@\""))
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let result = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.status()).await;
    match result {
        Ok(Ok(status)) if status.success() => {
            tracing::debug!(instance, script, "notify script done")
        }
        Ok(Ok(status)) => {
            tracing::warn!(instance, script, "notify script failed: {status}")
        }
        Ok(Err(e)) => tracing::warn!(instance, script, "cannot run notify script: {e}"),
        Err(_) => tracing::warn!(
            instance,
            script,
            "notify script still running after {SCRIPT_TIMEOUT:?}: killed"
        ),
    }
}
