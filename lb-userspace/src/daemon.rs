//! `bascule run`: load the config, program and attach the datapath, keep it fed (MACs of
//! `dr` backends, reloads on SIGHUP) until SIGINT/SIGTERM, then detach.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{
    config::{Config, Forwarding, XdpMode},
    datapath::{AttachMode, Datapath},
    health::{self, plan_with_health, HealthMap, HealthSupervisor},
    netinfo,
    plan::{MacTable, Plan, TunnelSources},
    vrrp::VrrpRuntime,
};

/// How long to wait for the kernel to resolve backends' MACs at start.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How often MACs are re-read (faster while some `dr` backend still has none).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// How often the connection table is walked: idle flows expire, active-connection
/// counts are rewritten (see `Datapath::reconcile`).
const RECONCILE_EVERY: Duration = Duration::from_secs(5);
const REFRESH_MISSING_EVERY: Duration = Duration::from_secs(2);

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

/// Addresses whose MACs are needed: `dr` backends and sorry servers (a sorry server is
/// reached like its service's backends). (`tun` and `nat` next hops are looked up per
/// packet by the kernel's FIB; `local` is this node.)
fn dr_backend_addresses(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| {
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
                .map(|b| b.address)
                .chain(s.sorry_server.map(|a| a.ip()))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `tun` and `nat` backends: their neighbour entries are warmed (not waited for), so that
/// the first packets find the next hop resolved.
fn warm_routed_backends(config: &Config) {
    for s in &config.services {
        for b in &s.backends {
            if matches!(b.effective_forwarding(s), Forwarding::Tun | Forwarding::Nat) {
                netinfo::provoke_resolution(b.address);
            }
        }
    }
}

fn missing_dr_macs(config: &Config, macs: &MacTable) -> Vec<IpAddr> {
    config
        .services
        .iter()
        .flat_map(|s| {
            let sorry = s
                .sorry_server
                .filter(|_| s.forwarding == Forwarding::Dr)
                .map(|a| a.ip());
            s.backends
                .iter()
                .filter(move |b| b.effective_forwarding(s) == Forwarding::Dr)
                .map(|b| b.address)
                .chain(sorry)
        })
        .filter(|a| !macs.contains_key(a))
        .collect()
}

fn current_plan(
    config: &Config,
    wait: Duration,
    previous: Option<&Plan>,
    health: &HealthMap,
) -> Result<(Plan, Vec<IpAddr>)> {
    if !wait.is_zero() {
        warm_routed_backends(config);
    }
    let macs: MacTable = netinfo::resolve_macs(&dr_backend_addresses(config), wait)?
        .into_iter()
        .collect();
    let missing = missing_dr_macs(config, &macs);
    Ok((
        plan_with_health(config, &macs, tunnel_sources(config)?, previous, health)?,
        missing,
    ))
}

// ---- Health checks (issue 5): a minimal bridge for this synchronous daemon. -------------
// The supervisor runs on its own tokio runtime thread; when what the datapath should do
// changes (a backend up or down, a dynamic weight), it wakes the loop in `run` through the
// same channel as signals, with `HEALTH_CHANGED`, and the loop re-plans with the new
// health. The tokio daemon (issue 4) replaces this with a task awaiting
// `HealthSupervisor::subscribe()` on its own runtime.

/// Not a signal number: "health changed" on the daemon's wake-up channel.
const HEALTH_CHANGED: i32 = -1;

struct Health {
    supervisor: HealthSupervisor,
    /// A wake-up is queued and not yet handled (so a burst of changes queues one).
    pending: Arc<AtomicBool>,
    /// Last, so the supervisor's tasks stop before their runtime does.
    runtime: tokio::runtime::Runtime,
}

impl Health {
    fn start(config: &Config, wake: mpsc::Sender<i32>) -> Result<Health> {
        let runtime = health::runtime().context("cannot start the health-check runtime")?;
        let supervisor = HealthSupervisor::start(runtime.handle().clone(), &config.services);
        let pending = Arc::new(AtomicBool::new(false));
        let mut changes = supervisor.subscribe();
        let queued = pending.clone();
        runtime.spawn(async move {
            while changes.changed().await.is_ok() {
                if !queued.swap(true, Ordering::SeqCst) && wake.send(HEALTH_CHANGED).is_err() {
                    break;
                }
            }
        });
        if supervisor.checked() > 0 {
            tracing::info!(backends = supervisor.checked(), "health checks started");
        }
        Ok(Health {
            supervisor,
            pending,
            runtime,
        })
    }

    /// The health to plan with; clears the queued wake-up first, so a change that lands
    /// while planning wakes the loop again.
    fn current(&self) -> HealthMap {
        self.pending.store(false, Ordering::SeqCst);
        self.supervisor.snapshot()
    }

    fn stop(self) {
        drop(self.supervisor);
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}
// ---- end of the health-check bridge -------------------------------------------------------

/// `tun` and `nat` find their next hop with `bpf_fib_lookup`, which needs forwarding on
/// the XDP interfaces for the families they route (see `netinfo::enable_forwarding`).
pub fn prepare_interfaces(config: &Config) -> Result<()> {
    let uses = |modes: &[Forwarding], v6: bool| {
        config.services.iter().any(|s| {
            s.backends
                .iter()
                .any(|b| modes.contains(&b.effective_forwarding(s)) && b.address.is_ipv6() == v6)
        })
    };
    let routed = [Forwarding::Tun, Forwarding::Nat];
    let (v4, v6) = (uses(&routed, false), uses(&routed, true));
    let (nat4, nat6) = (
        uses(&[Forwarding::Nat], false),
        uses(&[Forwarding::Nat], true),
    );
    for iface in &config.node.interfaces {
        for change in netinfo::enable_forwarding(&iface.name, v4, v6)? {
            tracing::info!(interface = %iface.name, "tun/nat next hops need forwarding: set {change}");
        }
        for change in netinfo::enable_nat_fallback(&iface.name, nat4, nat6)? {
            tracing::info!(interface = %iface.name, "nat replies to unresolved neighbours go through the kernel: set {change}");
        }
    }
    Ok(())
}

pub fn run(path: &Path) -> Result<()> {
    let mut config = load_config(path)?;
    prepare_interfaces(&config)?;
    let mut datapath = Datapath::load(config.conntrack.max_entries)?;
    let (wake, signals) = mpsc::channel();
    forward_signals(wake.clone())?;
    let health = Health::start(&config, wake)?;
    let (mut current, mut missing) = current_plan(&config, RESOLVE_WAIT, None, &health.current())?;
    report_missing(&missing);
    datapath.apply(&current)?;
    for iface in &config.node.interfaces {
        let mode = match iface.xdp_mode {
            XdpMode::Auto => AttachMode::Auto,
            XdpMode::Native => AttachMode::Native,
            XdpMode::Generic => AttachMode::Generic,
        };
        datapath.attach(&iface.name, mode)?;
    }
    // VRRP (issue 6) on a tokio runtime of its own while this daemon is synchronous; once
    // the daemon runs on tokio (issue 4) it calls `vrrp::Vrrp` directly. Started after the
    // datapath is attached, so that a new master balances at once.
    let mut vrrp = start_vrrp(&config)?;
    tracing::info!(
        services = current.services.len(),
        backends = current.backends.len(),
        vrrp_instances = config.vrrp.len(),
        "bascule ready"
    );

    let mut last_reconcile = std::time::Instant::now();
    loop {
        let wait = if missing.is_empty() {
            REFRESH_EVERY
        } else {
            REFRESH_MISSING_EVERY
        }
        .min(RECONCILE_EVERY);
        let woken = signals.recv_timeout(wait);
        match woken {
            Ok(SIGHUP) => match reload(path, &config) {
                Ok(new) => {
                    prepare_interfaces(&new)?;
                    health.supervisor.update(&new.services);
                    if let Err(e) = reconfigure_vrrp(&mut vrrp, &new) {
                        tracing::error!("VRRP: {e:#}");
                    }
                    config = new;
                    tracing::info!(file = %path.display(), "configuration reloaded");
                }
                Err(e) => tracing::error!("reload refused, the running configuration stays: {e:#}"),
            },
            Ok(HEALTH_CHANGED) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if last_reconcile.elapsed() >= RECONCILE_EVERY {
            let c = &config.conntrack;
            match datapath.reconcile(
                c.tcp_timeout.as_nanos() as u64,
                c.udp_timeout.as_nanos() as u64,
            ) {
                Ok(r) if r.expired > 0 => tracing::debug!(
                    live = r.live,
                    expired = r.expired,
                    "connection table reconciled"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!("cannot reconcile the connection table: {e:#}"),
            }
            last_reconcile = std::time::Instant::now();
        }
        let (next, still) =
            current_plan(&config, Duration::ZERO, Some(&current), &health.current())?;
        let changed = next != current;
        if changed {
            datapath
                .apply(&next)
                .context("cannot update the datapath maps")?;
        }
        // Only when no newer health change came in while planning: the line then means
        // "the datapath holds every health change logged before it" (tests wait for it).
        if woken == Ok(HEALTH_CHANGED) && !health.pending.load(Ordering::SeqCst) {
            tracing::info!("datapath updated for backend health");
        }
        if changed {
            if still.len() < missing.len() {
                tracing::info!(
                    "learnt MAC addresses of {} backend(s)",
                    missing.len() - still.len()
                );
            }
            current = next;
        }
        missing = still;
    }
    tracing::info!("stopping");
    // Masters hand over (priority 0) and release their addresses before the datapath goes.
    if let Some(vrrp) = vrrp {
        vrrp.stop();
    }
    health.stop();
    datapath.detach_all();
    Ok(())
}

fn start_vrrp(config: &Config) -> Result<Option<VrrpRuntime>> {
    if config.vrrp.is_empty() {
        return Ok(None);
    }
    VrrpRuntime::start(&config.vrrp).map(Some)
}

/// Unchanged instances keep running; changed, new and removed ones restart, start, stop.
fn reconfigure_vrrp(vrrp: &mut Option<VrrpRuntime>, new: &Config) -> Result<()> {
    match vrrp {
        Some(running) => running.reconfigure(&new.vrrp),
        None => {
            *vrrp = start_vrrp(new)?;
            Ok(())
        }
    }
}

fn reload(path: &Path, running: &Config) -> Result<Config> {
    let new = load_config(path)?;
    if new.node != running.node || new.conntrack != running.conntrack {
        bail!("node and conntrack settings change only with a restart");
    }
    Ok(new)
}

fn report_missing(missing: &[IpAddr]) {
    for a in missing {
        tracing::warn!(backend = %a, "no MAC address for dr backend yet (not on this L2 segment?); it takes no flows until it answers ARP/NDP");
    }
}

fn signal_channel() -> Result<mpsc::Receiver<i32>> {
    let (tx, rx) = mpsc::channel();
    forward_signals(tx)?;
    Ok(rx)
}

/// Sends SIGINT, SIGTERM and SIGHUP, as they arrive, into `tx`.
fn forward_signals(tx: mpsc::Sender<i32>) -> Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::spawn(move || {
        for s in signals.forever() {
            if tx.send(s).is_err() {
                break;
            }
        }
    });
    Ok(())
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
