//! `bascule decap`: the backend side of `tun` forwarding, as a process: the tc program
//! attached (`datapath::decap`) until SIGINT or SIGTERM.

use std::{net::IpAddr, sync::mpsc};

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::{datapath::decap::Decap, host::interfaces};

/// SIGINT, SIGTERM and SIGHUP, read on a thread of their own (no async runtime here).
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
pub fn run(interface: &str, vips: &[IpAddr]) -> Result<()> {
    let vips = if vips.is_empty() {
        interfaces::loopback_vips()?
    } else {
        vips.to_vec()
    };
    let decap = Decap::attach(interface, &vips)?;
    tracing::info!(interface, vips = ?vips, "decap attached");
    let signals = signal_channel()?;
    while let Ok(SIGHUP) = signals.recv() {}
    tracing::info!(
        decapsulated = decap.decapsulated().unwrap_or(0),
        "decap detached"
    );
    Ok(())
}
