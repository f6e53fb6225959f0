//! `bascule run` and `bascule decap`: the processes. Wiring and signals only; the state
//! lives in the controller (`control`), the HTTP side in `api`, health checks in
//! `health` and VRRP in `vrrp`, all on one tokio runtime.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, mpsc, Arc, Mutex},
};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{
    config::{Config, ParseCache},
    control::{
        self,
        snapshot::{self, VrrpSource},
        Controller, Request,
    },
    health::HealthSupervisor,
    host::interfaces,
    vrrp::{StatusBoard, Vrrp},
};

use super::api::Api;

/// `bascule run`: the daemon. Its main owns no logic: it checks the config, binds the
/// HTTP listener, starts the health checks, the controller (`control`, on its own
/// thread), then the VRRP instances once the datapath is attached, and the API (`api`),
/// then turns signals into controller requests. SIGHUP reloads; SIGTERM/SIGINT stop: VRRP
/// masters hand over first, then the datapath goes unless `keep_datapath`.
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
    let vrrp = Vrrp::start(&config.vrrp).await?;
    tracing::info!(instances = config.vrrp.len(), "VRRP instances started");
    Ok(Some(vrrp))
}

/// After a reload: unchanged instances keep running; changed, new and removed ones
/// restart, start, stop.
async fn reconfigure_vrrp(vrrp: &mut Option<Vrrp>, new: &Config) -> Result<()> {
    match vrrp {
        Some(running) => running.reconfigure(&new.vrrp).await,
        None => {
            *vrrp = start_vrrp(new).await?;
            Ok(())
        }
    }
}

async fn serve(
    path: PathBuf,
    config: Config,
    parse_cache: ParseCache,
    token: Option<String>,
    keep_datapath: bool,
) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let listen = config.http.listen;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| {
            format!("cannot listen on {listen} (http.listen): is another daemon using it?")
        })?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;

    // Health checks run on this runtime from the start; the controller plans with their
    // map and gets every change of it as a `Request::Health`.
    let supervisor = HealthSupervisor::start(tokio::runtime::Handle::current(), &config.services);
    if supervisor.checked() > 0 {
        tracing::info!(backends = supervisor.checked(), "health checks started");
    }
    let mut health_changes = supervisor.subscribe();
    let (reloaded_tx, mut reloaded) = tokio::sync::mpsc::unbounded_channel::<Arc<Config>>();

    let ready = Arc::new(AtomicBool::new(false));
    let (requests, inbox) = mpsc::channel();
    let (started_tx, started) = tokio::sync::oneshot::channel::<()>();
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<Result<()>>();
    let board = VrrpBoard::default();
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
    };
    std::thread::Builder::new()
        .name("bascule-control".into())
        .spawn(move || {
            let result = Controller::start(start).map(|c| {
                let _ = started_tx.send(());
                c.run(inbox)
            });
            let _ = done_tx.send(result);
        })
        .context("cannot start the controller thread")?;
    let api = Arc::new(Api {
        control: requests.clone(),
        token,
        ready,
    });
    let server = tokio::spawn(super::api::serve(listener, api));
    tracing::info!(%listen, "HTTP API listening");
    // The datapath is attached (or the controller failed) before VRRP starts.
    if started.await.is_err() {
        server.abort();
        return match done.await {
            Ok(result) => result,
            Err(_) => bail!("the controller thread died; the datapath is left as it was"),
        };
    }
    let mut vrrp = match start_vrrp(&config).await {
        Ok(v) => v,
        Err(e) => {
            server.abort();
            stop_controller(&requests, false).await;
            let _ = done.await;
            return Err(e);
        }
    };
    board.set(&vrrp);

    // Every change of what the datapath should do (a backend up or down, a check's
    // weight) goes to the controller as the whole map.
    let to_controller = requests.clone();
    let forward_health = tokio::spawn(async move {
        while health_changes.changed().await.is_ok() {
            let map = health_changes.borrow_and_update().clone();
            if to_controller.send(Request::Health(map)).is_err() {
                break;
            }
        }
    });

    let ended = loop {
        tokio::select! {
            _ = hangup.recv() => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if requests.send(Request::Reload(tx)).is_ok() {
                    // The controller logs the outcome.
                    tokio::spawn(async move { let _ = rx.await; });
                }
            }
            Some(new) = reloaded.recv() => {
                supervisor.update(&new.services);
                if let Err(e) = reconfigure_vrrp(&mut vrrp, &new).await {
                    tracing::error!("VRRP: {e:#}");
                }
                board.set(&vrrp);
            }
            _ = terminate.recv() => break None,
            _ = interrupt.recv() => break None,
            ended = &mut done => break Some(ended),
        }
    };
    server.abort();
    forward_health.abort();
    tracing::info!("stopping");
    // Masters hand over (priority 0) and release their addresses before the datapath goes.
    if let Some(v) = vrrp.take() {
        v.stop().await;
    }
    board.set(&None);
    drop(supervisor);
    if let Some(ended) = ended {
        return match ended {
            Ok(result) => result,
            Err(_) => bail!("the controller thread died; the datapath is left as it was"),
        };
    }
    stop_controller(&requests, keep_datapath).await;
    match done.await {
        Ok(result) => result,
        Err(_) => bail!("the controller thread died while stopping"),
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

fn signal_channel() -> Result<mpsc::Receiver<i32>> {
    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    Ok(rx)
}

/// `bascule decap`: attach and wait for SIGINT/SIGTERM.
pub fn decap(interface: &str, vips: &[IpAddr]) -> Result<()> {
    let vips = if vips.is_empty() {
        interfaces::loopback_vips()?
    } else {
        vips.to_vec()
    };
    let decap = crate::datapath::decap::Decap::attach(interface, &vips)?;
    tracing::info!(interface, vips = ?vips, "decap attached");
    let signals = signal_channel()?;
    while let Ok(SIGHUP) = signals.recv() {}
    tracing::info!(
        decapsulated = decap.decapsulated().unwrap_or(0),
        "decap detached"
    );
    Ok(())
}
