//! `bascule run`: the daemon's process. Wiring and signals only; the state
//! lives in the controller (`control`), the HTTP side in `api`, health checks in
//! `health` and VRRP in `vrrp`, all on one tokio runtime.

use std::{
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, Arc, Mutex},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use tokio::{
    signal::unix::{signal, Signal, SignalKind},
    sync::{oneshot, watch},
};

use crate::{
    config::{Config, ParseCache},
    control::{
        self,
        snapshot::{self, VrrpSource},
        Controller, Request,
    },
    health::{HealthMap, HealthSupervisor},
    vrrp::{StatusBoard, Vrrp},
};

use super::{
    api::Api,
    systemd::{self, ServiceManager},
};
/// `bascule run`: the daemon. Its main owns no logic: it checks the config, binds the
/// HTTP listener, starts the health checks, the controller (`control`, on its own
/// thread), then the VRRP instances once the datapath is attached, and the API (`api`),
/// then turns signals into controller requests. SIGHUP reloads; SIGTERM/SIGINT stop: with
/// `announce:` (and without `keep_datapath`) every VIP is withdrawn and the datapath
/// forwards for `announce.withdraw_grace`; then VRRP masters hand over, then the datapath
/// goes unless `keep_datapath`.
pub fn run(path: &Path, keep_datapath: bool) -> Result<()> {
    let mut parse_cache = ParseCache::default();
    let config = control::load_config_cached(path, &mut parse_cache)?;
    control::check_host(&config, &control::host_facts()?)?;
    let token = read_token(&config.http)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bascule-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(
        path.to_path_buf(),
        config,
        parse_cache,
        token,
        keep_datapath,
    ));
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// The running VRRP instances and where their status is read (the `VrrpSource` seam).
#[derive(Clone, Default)]
struct VrrpBoard(Arc<Mutex<Option<StatusBoard>>>);

impl VrrpBoard {
    fn source(&self) -> VrrpSource {
        let board = self.clone();
        Arc::new(move || {
            let guard = board.0.lock().unwrap_or_else(|e| e.into_inner());
            guard
                .as_ref()
                .map(|b| b.snapshot().iter().map(snapshot::vrrp_status).collect())
                .unwrap_or_default()
        })
    }

    fn set(&self, vrrp: &Option<Vrrp>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = vrrp.as_ref().map(Vrrp::board);
    }
}

/// Starts the instances of `config`, if any. Call once the datapath is attached, so that a
/// new master balances at once.
async fn start_vrrp(config: &Config) -> Result<Option<Vrrp>> {
    if config.vrrp.is_empty() {
        return Ok(None);
    }
    let vrrp = Vrrp::start(config).await?;
    tracing::info!(instances = config.vrrp.len(), "VRRP instances started");
    Ok(Some(vrrp))
}

/// After a reload: unchanged instances keep running; changed, new and removed ones
/// restart, start, stop.
async fn reconfigure_vrrp(vrrp: &mut Option<Vrrp>, new: &Config) -> Result<()> {
    match vrrp {
        Some(running) => running.reconfigure(new).await,
        None => {
            *vrrp = start_vrrp(new).await?;
            Ok(())
        }
    }
}

/// The daemon on its runtime: listener, signals, health checks, the controller's thread,
/// the API, VRRP once the datapath is attached; then signals and reloads until a stop.
async fn serve(
    path: PathBuf,
    config: Config,
    parse_cache: ParseCache,
    token: Option<String>,
    keep_datapath: bool,
) -> Result<()> {
    let listen = config.http.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (http.listen): is another daemon using it?")
        })?;
    let mut signals = Signals::new()?;

    // Health checks run on this runtime from the start; the controller plans with their
    // map and gets every change of it as a `Request::Health`.
    let supervisor = HealthSupervisor::start(tokio::runtime::Handle::current(), &config.services);
    if supervisor.checked() > 0 {
        tracing::info!(backends = supervisor.checked(), "health checks started");
    }
    let health_changes = supervisor.subscribe();
    let (reloaded_tx, reloaded) = tokio::sync::mpsc::unbounded_channel::<Arc<Config>>();

    let ready = Arc::new(AtomicBool::new(false));
    let board = VrrpBoard::default();
    let service_manager = ServiceManager::from_env();
    let shared_sync = config.sync.as_ref().map(|_| control::sync_shared());
    let start = control::Start {
        path,
        config: config.clone(),
        parse_cache,
        pinned: true,
        vrrp: board.source(),
        health: Some(supervisor.subscribe()),
        on_reload: Some(Box::new(move |c: &Arc<Config>| {
            let _ = reloaded_tx.send(Arc::clone(c));
        })),
        ready: ready.clone(),
        heartbeat: service_manager.heartbeat(),
        io: Some(tokio::runtime::Handle::current()),
        sync: shared_sync.clone(),
    };
    let ControllerThread {
        requests,
        started,
        mut done,
    } = ControllerThread::spawn(start)?;
    let api = Arc::new(Api {
        control: requests.clone(),
        limits: super::api::Limits::default(),
        token,
        ready,
        systemd: service_manager.clone(),
    });
    let server = tokio::spawn(super::api::serve(listener, api));
    tracing::info!(%listen, "HTTP API listening");
    // The datapath is attached (or the controller failed) before VRRP starts.
    if started.await.is_err() {
        server.abort();
        return controller_ended(done.await);
    }
    service_manager.set_summary(systemd::summary(
        &config,
        &supervisor.subscribe().borrow(),
        &[],
    ));
    service_manager.ready();
    let forward_health = tokio::spawn(forward_health(health_changes, requests.clone()));
    // Sync runs before VRRP: a backup takes its peers' flows before it can be master,
    // and a node that starts asks its peers for their whole table first (bounded), once
    // its health checks have a first verdict (a peer's flow on a backend still down here
    // is ignored).
    let started_vrrp = match start_sync(&config, shared_sync, &requests) {
        Ok(s) => {
            if let Some(running) = &s {
                first_verdicts(&supervisor, &config, FIRST_VERDICTS_LIMIT).await;
                running.bulk(BULK_SYNC_LIMIT).await;
            }
            start_vrrp(&config).await.map(|v| (v, s))
        }
        Err(e) => Err(e),
    };
    let (vrrp, sync) = match started_vrrp {
        Ok(v) => v,
        Err(e) => {
            server.abort();
            stop_controller(&requests, false).await;
            let _ = done.await;
            return Err(e);
        }
    };
    board.set(&vrrp);

    let health = supervisor.subscribe();
    let withdraw_grace = config.announce.as_ref().map(|a| a.withdraw_grace);
    let mut running = Running {
        requests,
        supervisor,
        vrrp,
        board,
        service_manager,
        config: Arc::new(config),
        health,
        withdraw_grace,
        sync,
    };
    let ended = running
        .until_stopped(&mut signals, reloaded, &mut done)
        .await;
    server.abort();
    forward_health.abort();
    running.stop(ended, keep_datapath, done).await
}

/// How often the status line (`STATUS=`) is recomputed; it is sent only when it changed.
const STATUS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// The signals the daemon answers: SIGHUP reloads, SIGTERM and SIGINT stop.
struct Signals {
    hangup: Signal,
    terminate: Signal,
    interrupt: Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        Ok(Signals {
            hangup: signal(SignalKind::hangup())?,
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }
}

/// The controller's thread: its request channel, and what it says when attached and when
/// it ends.
struct ControllerThread {
    requests: control::Handle,
    /// Sent once the datapath is attached (dropped if the start failed).
    started: oneshot::Receiver<()>,
    /// The controller's end: its start's error, or `Ok` after a stop.
    done: oneshot::Receiver<Result<()>>,
}

impl ControllerThread {
    fn spawn(start: control::Start) -> Result<ControllerThread> {
        let (requests, inbox) = control::inbox::channel();
        let (started_tx, started) = oneshot::channel::<()>();
        let (done_tx, done) = oneshot::channel::<Result<()>>();
        std::thread::Builder::new()
            .name("bascule-control".into())
            // Reloads parse the file on this thread: room for the parser's recursion.
            .stack_size(8 << 20)
            .spawn(move || {
                let result = Controller::start(start).map(|c| {
                    let _ = started_tx.send(());
                    c.run(inbox)
                });
                let _ = done_tx.send(result);
            })
            .context("cannot start the controller thread")?;
        Ok(ControllerThread {
            requests,
            started,
            done,
        })
    }
}

/// What the controller's thread ended with, when it ended on its own.
fn controller_ended(ended: Result<Result<()>, oneshot::error::RecvError>) -> Result<()> {
    match ended {
        Ok(result) => result,
        Err(_) => bail!("the controller thread died; the datapath is left as it was"),
    }
}

/// Every change of what the datapath should do (a backend up or down, a check's weight)
/// goes to the controller as the whole map.
async fn forward_health(mut changes: watch::Receiver<HealthMap>, to_controller: control::Handle) {
    while changes.changed().await.is_ok() {
        let map = changes.borrow_and_update().clone();
        if to_controller.send(Request::Health(map)).is_err() {
            break;
        }
    }
}

/// How long a starting node waits for a peer's whole table before VRRP starts.
const BULK_SYNC_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);
/// How long a starting node with sync waits for its health checks' first verdicts.
const FIRST_VERDICTS_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Waits (at most `limit`) until every checked backend has a first verdict: up, or
/// `rise` attempts made without coming up.
async fn first_verdicts(
    supervisor: &HealthSupervisor,
    config: &Config,
    limit: std::time::Duration,
) {
    let rise = config
        .services
        .iter()
        .filter_map(|s| s.health_check.as_ref())
        .map(|h| u64::from(h.rise))
        .max()
        .unwrap_or(1);
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if supervisor
            .snapshot()
            .values()
            .all(|h| h.up || h.attempts >= rise)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `sync:`'s sender and receiver, started once the controller has put the datapath's
/// report ring in `shared`; peers' entries go to the controller.
fn start_sync(
    config: &Config,
    shared: Option<Arc<crate::sync::Shared>>,
    requests: &control::Handle,
) -> Result<Option<crate::sync::Running>> {
    let (Some(c), Some(shared)) = (&config.sync, shared) else {
        return Ok(None);
    };
    let to_controller = requests.clone();
    let ask_controller = requests.clone();
    let table: crate::sync::TableSource = Box::new(move || {
        let (tx, rx) = oneshot::channel();
        let _ = ask_controller.send(Request::SyncTable(tx));
        rx
    });
    let running = crate::sync::start(
        c,
        shared,
        move |_from, entries| {
            let _ = to_controller.send(Request::Sync(entries));
        },
        table,
    )?;
    Ok(Some(running))
}

/// The daemon once the controller and VRRP run.
struct Running {
    requests: control::Handle,
    supervisor: HealthSupervisor,
    vrrp: Option<Vrrp>,
    board: VrrpBoard,
    service_manager: Arc<ServiceManager>,
    /// The configuration running now, and the health checks' map: the status line's.
    config: Arc<Config>,
    health: watch::Receiver<HealthMap>,
    /// `announce.withdraw_grace` of the running configuration; `None` without `announce:`.
    withdraw_grace: Option<Duration>,
    sync: Option<crate::sync::Running>,
}

impl Running {
    /// Reloads on SIGHUP, and follows each reload with the health checks and VRRP, until
    /// SIGTERM or SIGINT (`None`) or the controller's end.
    async fn until_stopped(
        &mut self,
        signals: &mut Signals,
        mut reloaded: tokio::sync::mpsc::UnboundedReceiver<Arc<Config>>,
        done: &mut oneshot::Receiver<Result<()>>,
    ) -> Option<Result<Result<()>, oneshot::error::RecvError>> {
        let mut status_tick = tokio::time::interval(STATUS_EVERY);
        loop {
            tokio::select! {
                _ = signals.hangup.recv() => self.reload(),
                Some(new) = reloaded.recv() => {
                    self.supervisor.update(&new.services);
                    self.withdraw_grace = new.announce.as_ref().map(|a| a.withdraw_grace);
                    if let Err(e) = reconfigure_vrrp(&mut self.vrrp, &new).await {
                        tracing::error!("VRRP: {e:#}");
                    }
                    self.board.set(&self.vrrp);
                    self.config = new;
                }
                _ = status_tick.tick() => {
                    let vrrp = (self.board.source())();
                    let line = systemd::summary(&self.config, &self.health.borrow(), &vrrp);
                    self.service_manager.set_summary(line);
                }
                _ = signals.terminate.recv() => return None,
                _ = signals.interrupt.recv() => return None,
                ended = &mut *done => return Some(ended),
            }
        }
    }

    /// SIGHUP: the controller reloads (and logs the outcome); systemd is told when it
    /// starts and ends.
    fn reload(&self) {
        self.service_manager.reloading();
        let (tx, rx) = oneshot::channel();
        if self.requests.send(Request::Reload(tx)).is_err() {
            self.service_manager.reloaded(None);
            return;
        }
        let service_manager = self.service_manager.clone();
        tokio::spawn(async move {
            let outcome = rx.await;
            service_manager.reloaded(outcome.as_ref().ok());
        });
    }

    /// Stops: VRRP masters hand over (priority 0) and release their addresses before the
    /// datapath goes; then the health checks, then the controller (unless it `ended`).
    async fn stop(
        mut self,
        ended: Option<Result<Result<()>, oneshot::error::RecvError>>,
        keep_datapath: bool,
        done: oneshot::Receiver<Result<()>>,
    ) -> Result<()> {
        tracing::info!("stopping");
        self.service_manager.stopping();
        if ended.is_none() && !keep_datapath {
            if let Some(grace) = self.withdraw_grace {
                self.withdraw_for(grace).await;
            }
        }
        if let Some(v) = self.vrrp.take() {
            v.stop().await;
        }
        self.board.set(&None);
        if let Some(s) = self.sync.take() {
            s.stop();
        }
        drop(self.supervisor);
        if let Some(ended) = ended {
            return controller_ended(ended);
        }
        stop_controller(&self.requests, keep_datapath).await;
        match done.await {
            Ok(result) => result,
            Err(_) => bail!("the controller thread died while stopping"),
        }
    }
}

impl Running {
    /// A stop with `announce:`: every VIP is withdrawn first, and the datapath keeps
    /// forwarding for `grace` while the routers move the flows to the other nodes.
    async fn withdraw_for(&self, grace: Duration) {
        let (tx, rx) = oneshot::channel();
        let drain = Request::Drain {
            drain: true,
            reply: tx,
        };
        if self.requests.send(drain).is_err() {
            return;
        }
        match rx.await {
            Ok(Ok(_)) => {
                tracing::info!(
                    grace = %crate::config::format_duration(grace),
                    "every VIP withdrawn; forwarding during announce.withdraw_grace before stopping"
                );
                tokio::time::sleep(grace).await;
            }
            Ok(Err(e)) => tracing::error!("cannot withdraw before stopping: {e}"),
            Err(_) => {}
        }
    }
}

/// Asks the controller to stop, and waits for its answer.
async fn stop_controller(requests: &control::Handle, keep_datapath: bool) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests
        .send(Request::Stop {
            keep_datapath,
            reply: tx,
        })
        .is_ok()
    {
        let _ = rx.await;
    }
}

/// The API token from `http.token_file`, if configured.
fn read_token(http: &crate::config::Http) -> Result<Option<String>> {
    let Some(file) = &http.token_file else {
        return Ok(None);
    };
    check_token_file(file)?;
    let token = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read http.token_file {}", file.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!(
            "http.token_file {} is empty: put the API bearer token in it",
            file.display()
        );
    }
    Ok(Some(token))
}

/// The token file may be read only by its owner, root or the daemon's user: anyone who
/// reads the token can reload, drain and reweight.
fn check_token_file(file: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(file)
        .with_context(|| format!("cannot read http.token_file {}", file.display()))?;
    let mode = m.mode() & 0o7777;
    if mode & 0o077 != 0 {
        bail!(
            "http.token_file {}: its mode {mode:04o} lets other users read or change the API token; run `chmod 600 {}`",
            file.display(),
            file.display()
        );
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != 0 && m.uid() != me {
        bail!(
            "http.token_file {}: it is owned by uid {}, neither root nor the daemon's user (uid {me}); run `chown {me} {}`",
            file.display(),
            m.uid(),
            file.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        let dir = std::env::temp_dir().join(format!("bascule-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let http = |f: &Path| crate::config::Http {
            listen: ([127, 0, 0, 1], 9469).into(),
            token_file: Some(f.to_path_buf()),
        };
        for mode in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = read_token(&http(&file)).unwrap_err();
            assert_eq!(
                e.to_string(),
                format!(
                    "http.token_file {0}: its mode {mode:04o} lets other users read or change the API token; run `chmod 600 {0}`",
                    file.display()
                )
            );
        }
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_token(&http(&file)).unwrap().as_deref(), Some("s3cret"));
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(read_token(&http(&file)).unwrap().as_deref(), Some("s3cret"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
