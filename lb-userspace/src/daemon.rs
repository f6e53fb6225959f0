//! `bascule run` and `bascule decap`: the processes. Wiring and signals only; the state
//! lives in the controller (`control.rs`), the HTTP side in `api.rs`. Also the small I/O
//! helpers the controller and the fixture tests share (tunnel sources, neighbour lookups,
//! forwarding sysctls).

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{atomic::AtomicBool, mpsc, Arc},
};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{
    api::Api,
    config::{Config, Forwarding},
    control::{self, Controller, Request},
    metrics::HealthCheckTimings,
    netinfo,
    plan::{MacTable, TunnelSources},
    snapshot,
};

/// Loads a config and refuses what this build cannot do yet, with every error located.
pub fn load_config(path: &Path) -> Result<Config> {
    let config = Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let unsupported = config.unsupported();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(|e| e.to_string()).collect();
        bail!("{}", lines.join("\n"));
    }
    Ok(config)
}

/// Where tunnels start: the configured `tunnel_source` for its family, else the first
/// global address of that family on the first XDP interface.
pub fn tunnel_sources(config: &Config) -> Result<TunnelSources> {
    let mut t = TunnelSources::default();
    if let Some(iface) = config.node.interfaces.first() {
        for a in netinfo::interface_addresses(&iface.name)? {
            match a {
                IpAddr::V4(v4) if t.v4.is_none() => t.v4 = Some(v4),
                IpAddr::V6(v6) if t.v6.is_none() && !is_link_local(v6) => t.v6 = Some(v6),
                _ => {}
            }
        }
    }
    match config.node.tunnel_source {
        Some(IpAddr::V4(v4)) => t.v4 = Some(v4),
        Some(IpAddr::V6(v6)) => t.v6 = Some(v6),
        None => {}
    }
    Ok(t)
}

fn is_link_local(a: std::net::Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// Addresses of `dr` backends: their MACs are needed to forward to them. (`tun` and `nat`
/// next hops are looked up per packet by the kernel's FIB; `local` is this node.)
pub fn dr_backend_addresses(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
        })
        .map(|b| b.address)
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `tun` and `nat` backends: their neighbour entries are warmed (not waited for), so that
/// the first packets find the next hop resolved.
pub fn warm_routed_backends(config: &Config) {
    for s in &config.services {
        for b in &s.backends {
            if matches!(b.effective_forwarding(s), Forwarding::Tun | Forwarding::Nat) {
                netinfo::provoke_resolution(b.address);
            }
        }
    }
}

pub fn missing_dr_macs(config: &Config, macs: &MacTable) -> Vec<IpAddr> {
    config
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
        })
        .map(|b| b.address)
        .filter(|a| !macs.contains_key(a))
        .collect()
}

/// `tun` and `nat` find their next hop with `bpf_fib_lookup`, which needs forwarding on
/// the XDP interfaces for the families they route (see `netinfo::enable_forwarding`).
pub fn prepare_interfaces(config: &Config) -> Result<()> {
    let routed = |v6: bool| {
        config.services.iter().any(|s| {
            s.backends.iter().any(|b| {
                matches!(b.effective_forwarding(s), Forwarding::Tun | Forwarding::Nat)
                    && b.address.is_ipv6() == v6
            })
        })
    };
    let (v4, v6) = (routed(false), routed(true));
    for iface in &config.node.interfaces {
        for change in netinfo::enable_forwarding(&iface.name, v4, v6)? {
            tracing::info!(interface = %iface.name, "tun/nat next hops need forwarding: set {change}");
        }
    }
    Ok(())
}

/// `bascule run`: the daemon. Its main owns no logic: it checks the config, binds the
/// HTTP listener, starts the controller (`control.rs`) on its own thread and the API
/// (`api.rs`) on a small tokio runtime, then turns signals into controller requests.
/// SIGHUP reloads; SIGTERM/SIGINT stop, removing the datapath unless `keep_datapath`.
pub fn run(path: &Path, keep_datapath: bool) -> Result<()> {
    let config = load_config(path)?;
    control::check_host(&config, &netinfo::host_facts()?)?;
    let token = read_token(&config.http)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bascule-io")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(path.to_path_buf(), config, token, keep_datapath))
}

async fn serve(
    path: PathBuf,
    config: Config,
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

    let ready = Arc::new(AtomicBool::new(false));
    let timings = HealthCheckTimings::default();
    let (requests, inbox) = mpsc::channel();
    let (done_tx, mut done) = tokio::sync::oneshot::channel::<Result<()>>();
    // The seams (ARCHITECTURE.md): VRRP instances will provide their status here, and
    // health checks will send `Request::Health` on a clone of `requests`.
    let vrrp = snapshot::no_vrrp();
    let start = control::Start {
        path,
        config,
        pinned: true,
        vrrp,
        timings: timings.clone(),
        ready: ready.clone(),
    };
    std::thread::Builder::new()
        .name("bascule-control".into())
        .spawn(move || {
            let result = Controller::start(start).map(|c| c.run(inbox));
            let _ = done_tx.send(result);
        })
        .context("cannot start the controller thread")?;
    let api = Arc::new(Api {
        control: requests.clone(),
        token,
        timings,
        ready,
    });
    let server = tokio::spawn(crate::api::serve(listener, api));
    tracing::info!(%listen, "HTTP API listening");

    let keep = loop {
        tokio::select! {
            _ = hangup.recv() => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                if requests.send(Request::Reload(tx)).is_ok() {
                    // The controller logs the outcome.
                    tokio::spawn(async move { let _ = rx.await; });
                }
            }
            _ = terminate.recv() => break keep_datapath,
            _ = interrupt.recv() => break keep_datapath,
            ended = &mut done => {
                server.abort();
                return match ended {
                    Ok(result) => result,
                    Err(_) => bail!("the controller thread died; the datapath is left as it was"),
                };
            }
        }
    };
    server.abort();
    let (tx, rx) = tokio::sync::oneshot::channel();
    if requests
        .send(Request::Stop {
            keep_datapath: keep,
            reply: tx,
        })
        .is_ok()
    {
        let _ = rx.await;
    }
    match done.await {
        Ok(result) => result,
        Err(_) => bail!("the controller thread died while stopping"),
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
        netinfo::loopback_vips()?
    } else {
        vips.to_vec()
    };
    let decap = crate::decap::Decap::attach(interface, &vips)?;
    tracing::info!(interface, vips = ?vips, "decap attached");
    let signals = signal_channel()?;
    while let Ok(SIGHUP) = signals.recv() {}
    tracing::info!(
        decapsulated = decap.decapsulated().unwrap_or(0),
        "decap detached"
    );
    Ok(())
}

pub fn config_path(p: &Option<PathBuf>) -> PathBuf {
    p.clone()
        .unwrap_or_else(|| PathBuf::from("/etc/bascule/bascule.yaml"))
}
