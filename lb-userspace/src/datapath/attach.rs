//! Attaching the program to interfaces: a new XDP link (native or generic), or a pinned
//! link adopted from a previous daemon with the program replaced in one update; detaching,
//! or leaving pinned links attached when the daemon goes.

use std::path::Path;

use anyhow::{anyhow, Context, Result};
use aya::{
    maps::Array,
    programs::{
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
        XdpMode,
    },
};
use lb_common::{LocalMacs, MAX_LOCAL_MACS};

use super::{AttachMode, Attachment, Datapath};

/// Why native XDP on a veth needs help (the warning of `xdp_mode: native` there).
const NATIVE_ON_VETH: &str = "xdp_mode native on a veth: XDP_TX and redirects into a veth are dropped unless its peer runs an XDP program too, and frames sent by this host's own namespaces arrive with their TCP/UDP checksums not yet computed (checksum offload) and are forwarded so: turn the senders' offload off (`ethtool -K IF tx off`) or use xdp_mode auto or generic";

/// The modes to try on an interface with `driver`, in order, and why (for the log).
///
/// `auto` takes generic mode on a veth: native XDP there forwards frames from the host's
/// own namespaces with their checksums unfilled (the receiver drops them), and XDP_TX into
/// a veth needs an XDP program on its peer. Elsewhere native if the driver has it.
pub(super) fn attempts(
    mode: AttachMode,
    driver: Option<&str>,
) -> (&'static [XdpMode], &'static str) {
    match (mode, driver) {
        (AttachMode::Auto, Some("veth")) => (
            &[XdpMode::Skb],
            "xdp_mode auto on a veth: generic, as native XDP there would forward frames of local senders with unfilled checksums, and XDP_TX would need an XDP program on the peer",
        ),
        (AttachMode::Auto, _) => (
            &[XdpMode::Driver, XdpMode::Skb],
            "xdp_mode auto: native where the driver has it, else generic",
        ),
        (AttachMode::Native, _) => (&[XdpMode::Driver], "xdp_mode native"),
        (AttachMode::Generic, _) => (&[XdpMode::Skb], "xdp_mode generic"),
    }
}

impl Datapath {
    pub fn attach(&mut self, interface: &str, mode: AttachMode) -> Result<()> {
        // Before the program runs there: it balances only frames sent to the node's MACs.
        self.add_local_mac(crate::host::interfaces::interface_mac(interface)?)?;
        let Some(links_dir) = self.pins.as_ref().map(|p| p.links.clone()) else {
            let link = self.attach_new(interface, mode)?;
            self.links
                .push((interface.to_string(), Attachment::Owned(link)));
            return Ok(());
        };
        let pin = links_dir.join(interface);
        if pin.exists() {
            match self.adopt_link(&pin) {
                Ok(link) => {
                    let mode =
                        crate::host::interfaces::xdp_attach_mode(interface).unwrap_or("unknown");
                    tracing::info!(
                        interface,
                        mode,
                        "XDP link adopted from {}: program replaced atomically (its mode kept)",
                        pin.display()
                    );
                    self.links
                        .push((interface.to_string(), Attachment::Pinned { link, pin }));
                    return Ok(());
                }
                Err(e) => {
                    tracing::warn!(
                        interface,
                        "cannot adopt the pinned XDP link ({e:#}); attaching anew"
                    );
                    let _ = std::fs::remove_file(&pin);
                }
            }
        }
        let id = self.attach_new(interface, mode)?;
        let link = self.program().take_link(id)?;
        let fd = FdLink::try_from(link).with_context(|| {
            format!(
                "cannot pin the XDP link of {interface}: the kernel attached it without a BPF link"
            )
        })?;
        let link: FdLink = fd
            .pin(&pin)
            .with_context(|| format!("cannot pin the XDP link at {}", pin.display()))?
            .into();
        self.links
            .push((interface.to_string(), Attachment::Pinned { link, pin }));
        Ok(())
    }

    /// Takes over a pinned XDP link: its program is replaced by ours in one update, so
    /// the interface never runs without one.
    fn adopt_link(&mut self, pin: &Path) -> Result<FdLink> {
        let fd: FdLink = PinnedLink::from_pin(pin)?.into();
        let link = XdpLink::try_from(fd)?;
        let id = self.program().attach_to_link(link)?;
        Ok(FdLink::try_from(self.program().take_link(id)?)?)
    }

    fn attach_new(&mut self, interface: &str, mode: AttachMode) -> Result<XdpLinkId> {
        let driver = match crate::host::interfaces::driver(interface) {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::debug!(interface, "cannot read the interface's driver: {e:#}");
                None
            }
        };
        let (attempts, why) = attempts(mode, driver.as_deref());
        if mode == AttachMode::Native && driver.as_deref() == Some("veth") {
            tracing::warn!(interface, "{NATIVE_ON_VETH}");
        }
        let mut last = None;
        for &m in attempts {
            match self.program().attach(interface, m) {
                Ok(link) => {
                    let mode = if m == XdpMode::Skb {
                        "generic"
                    } else {
                        "native"
                    };
                    tracing::info!(
                        interface,
                        mode,
                        driver = driver.as_deref().unwrap_or("unknown"),
                        "XDP program attached ({why})"
                    );
                    return Ok(link);
                }
                Err(e) => last = Some(e),
            }
        }
        let hint = match mode {
            AttachMode::Native => "; the driver may lack native XDP: set xdp_mode: generic",
            _ => "",
        };
        Err(anyhow!(last.expect("at least one attempt")))
            .with_context(|| format!("cannot attach XDP to {interface}{hint}"))
    }

    /// Detaches the program from every interface, pinned links included.
    pub fn detach_all(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (interface, attachment) in links {
            let result = match attachment {
                Attachment::Owned(link) => self.program().detach(link).map_err(anyhow::Error::from),
                // The link goes when its last reference does: the pin, then this fd.
                Attachment::Pinned { link, pin } => {
                    let removed = std::fs::remove_file(&pin)
                        .with_context(|| format!("cannot unpin {}", pin.display()));
                    drop(link);
                    removed
                }
            };
            match result {
                Ok(()) => tracing::info!(interface, "XDP program detached"),
                Err(e) => tracing::warn!(interface, "cannot detach XDP program: {e:#}"),
            }
        }
    }

    /// Leaves pinned links attached when this `Datapath` goes (the program keeps running
    /// with the pinned maps, without the daemon). Returns the interfaces left so.
    pub fn keep_attached(&mut self) -> Vec<String> {
        let links = std::mem::take(&mut self.links);
        let mut kept = Vec::new();
        for (interface, attachment) in links {
            match attachment {
                Attachment::Pinned { link, .. } => {
                    drop(link);
                    kept.push(interface);
                }
                Attachment::Owned(link) => {
                    tracing::warn!(interface, "XDP link is not pinned: detaching it");
                    let _ = self.program().detach(link);
                }
            }
        }
        kept
    }

    /// Unpins (so detaches) pinned links of interfaces not in `keep`: what a previous
    /// daemon attached to an interface the configuration no longer names.
    pub fn prune_links(&mut self, keep: &[&str]) -> Result<()> {
        let Some(dir) = self.pins.as_ref().map(|p| p.links.clone()) else {
            return Ok(());
        };
        for entry in std::fs::read_dir(&dir)?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                std::fs::remove_file(entry.path())
                    .with_context(|| format!("cannot unpin {}", entry.path().display()))?;
                tracing::info!(interface = %name, "XDP program detached (interface no longer configured)");
            }
        }
        Ok(())
    }

    /// Records an interface's MAC for the datapath's "addressed to us" check (past
    /// `MAX_LOCAL_MACS` interfaces, frames are not checked, and a warning says so).
    pub fn add_local_mac(&mut self, mac: [u8; 6]) -> Result<()> {
        let mut m: Array<_, LocalMacs> = Array::try_from(self.map("LOCAL_MACS")?)?;
        let mut local = m.get(&0, 0)?;
        if local.add(mac) {
            if local.count == MAX_LOCAL_MACS as u64 + 1 {
                tracing::warn!(
                    "more than {MAX_LOCAL_MACS} interfaces: frames for other MACs are balanced too (attach to at most {MAX_LOCAL_MACS} to keep them out)"
                );
            }
            m.set(0, local, 0)?;
        }
        Ok(())
    }
}

impl Drop for Datapath {
    /// Owned links are detached; pinned ones stay with their pins (the daemon decides,
    /// with `detach_all` or `keep_attached`, before this).
    fn drop(&mut self) {
        let links = std::mem::take(&mut self.links);
        for (interface, attachment) in links {
            if let Attachment::Owned(link) = attachment {
                match self.program().detach(link) {
                    Ok(()) => tracing::info!(interface, "XDP program detached"),
                    Err(e) => tracing::warn!(interface, "cannot detach XDP program: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_takes_generic_on_a_veth_and_says_why() {
        let (modes, why) = attempts(AttachMode::Auto, Some("veth"));
        assert_eq!(modes, [XdpMode::Skb]);
        assert!(why.contains("veth") && why.contains("generic"), "{why}");
        for driver in [Some("virtio_net"), Some("mlx5_core"), None] {
            let (modes, _) = attempts(AttachMode::Auto, driver);
            assert_eq!(modes, [XdpMode::Driver, XdpMode::Skb], "{driver:?}");
        }
        // An explicit mode is taken as written, veth or not.
        assert_eq!(
            attempts(AttachMode::Native, Some("veth")).0,
            [XdpMode::Driver]
        );
        assert_eq!(
            attempts(AttachMode::Generic, Some("ixgbe")).0,
            [XdpMode::Skb]
        );
    }
}
