//! `bascule run`: load the config, program and attach the datapath, keep it fed (MACs of
//! `dr` backends, reloads on SIGHUP) until SIGINT/SIGTERM, then detach.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{
    config::{Config, Forwarding, XdpMode},
    datapath::{AttachMode, Datapath},
    netinfo,
    plan::{plan, MacTable, Plan, TunnelSources},
    vrrp::VrrpRuntime,
};

/// How long to wait for the kernel to resolve backends' MACs at start.
const RESOLVE_WAIT: Duration = Duration::from_secs(3);
/// How often MACs are re-read (faster while some `dr` backend still has none).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
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

/// Backend addresses whose neighbour entries matter: `dr` needs their MAC; for `tun`,
/// resolving warms the entry `bpf_fib_lookup` will need.
fn backend_addresses(config: &Config) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = config
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(|b| b.address))
        .collect();
    v.sort();
    v.dedup();
    v
}

fn missing_dr_macs(config: &Config, macs: &MacTable) -> Vec<IpAddr> {
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

fn current_plan(
    config: &Config,
    wait: Duration,
    previous: Option<&Plan>,
) -> Result<(Plan, Vec<IpAddr>)> {
    let macs: MacTable = netinfo::resolve_macs(&backend_addresses(config), wait)?
        .into_iter()
        .collect();
    let missing = missing_dr_macs(config, &macs);
    Ok((
        plan(config, &macs, tunnel_sources(config)?, previous)?,
        missing,
    ))
}

/// `tun` needs forwarding on the XDP interfaces for the families it tunnels over (see
/// `netinfo::enable_forwarding`).
pub fn prepare_interfaces(config: &Config) -> Result<()> {
    let tunnelled = |v6: bool| {
        config.services.iter().any(|s| {
            s.backends
                .iter()
                .any(|b| b.effective_forwarding(s) == Forwarding::Tun && b.address.is_ipv6() == v6)
        })
    };
    let (v4, v6) = (tunnelled(false), tunnelled(true));
    for iface in &config.node.interfaces {
        for change in netinfo::enable_forwarding(&iface.name, v4, v6)? {
            tracing::info!(interface = %iface.name, "tun next hops need forwarding: set {change}");
        }
    }
    Ok(())
}

pub fn run(path: &Path) -> Result<()> {
    let mut config = load_config(path)?;
    prepare_interfaces(&config)?;
    let mut datapath = Datapath::load(config.conntrack.max_entries)?;
    let (mut current, mut missing) = current_plan(&config, RESOLVE_WAIT, None)?;
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

    let signals = signal_channel()?;
    loop {
        let wait = if missing.is_empty() {
            REFRESH_EVERY
        } else {
            REFRESH_MISSING_EVERY
        };
        match signals.recv_timeout(wait) {
            Ok(SIGHUP) => match reload(path, &config) {
                Ok(new) => {
                    prepare_interfaces(&new)?;
                    if let Err(e) = reconfigure_vrrp(&mut vrrp, &new) {
                        tracing::error!("VRRP: {e:#}");
                    }
                    config = new;
                    tracing::info!(file = %path.display(), "configuration reloaded");
                }
                Err(e) => tracing::error!("reload refused, the running configuration stays: {e:#}"),
            },
            Ok(_) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let (next, still) = current_plan(&config, Duration::ZERO, Some(&current))?;
        if next != current {
            datapath
                .apply(&next)
                .context("cannot update the datapath maps")?;
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
