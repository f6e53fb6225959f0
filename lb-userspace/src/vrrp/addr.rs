//! The kernel side of an instance, through rtnetlink: interface lookups, the virtual
//! addresses added and removed, and link state watched for `track_interfaces`.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use anyhow::{anyhow, Context, Result};
use futures::{StreamExt, TryStreamExt};
use rtnetlink::{
    packet_core::NetlinkPayload,
    packet_route::{
        address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, CacheInfo},
        link::{LinkAttribute, LinkFlags, LinkMessage},
        RouteNetlinkMessage,
    },
    Handle, MulticastGroup,
};
use tokio::sync::{watch, Mutex};

use crate::config::IpPrefix;

/// An interface as the instance needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    /// Administratively up and with carrier (IFF_UP and IFF_RUNNING).
    pub up: bool,
}

fn link_of(msg: &LinkMessage) -> Option<Link> {
    let mut name = None;
    let mut mac = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Address(bytes) => mac = <[u8; 6]>::try_from(bytes.as_slice()).ok(),
            _ => {}
        }
    }
    let flags = msg.header.flags;
    Some(Link {
        index: msg.header.index,
        name: name?,
        mac,
        up: flags.contains(LinkFlags::Up) && flags.contains(LinkFlags::Running),
    })
}

/// A netlink connection (its I/O runs as a task on the current tokio runtime), shared by
/// the instances. Its requests take turns: the kernel refuses a dump on a socket that is
/// still dumping (EBUSY), and listing addresses is a dump.
#[derive(Clone)]
pub struct Netlink {
    handle: Handle,
    turn: Arc<Mutex<()>>,
}

impl Netlink {
    pub fn connect() -> Result<Netlink> {
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(connection);
        Ok(Netlink {
            handle,
            turn: Arc::default(),
        })
    }

    /// Every interface of this network namespace.
    pub async fn links(&self) -> Result<Vec<Link>> {
        let _turn = self.turn.lock().await;
        let msgs: Vec<LinkMessage> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .context("cannot list interfaces")?;
        Ok(msgs.iter().filter_map(link_of).collect())
    }

    pub async fn link(&self, name: &str) -> Result<Link> {
        self.links()
            .await?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| anyhow!("interface {name} does not exist (see `ip link`)"))
    }

    /// The kernel's address messages for interface `index` (the caller holds `turn`).
    async fn address_messages(&self, index: u32) -> Result<Vec<AddressMessage>> {
        self.handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .context("cannot list addresses")
    }

    /// Addresses on interface `index` with their prefix lengths.
    pub async fn addresses(&self, index: u32) -> Result<Vec<IpPrefix>> {
        let _turn = self.turn.lock().await;
        let msgs = self.address_messages(index).await?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                address_of(m).map(|addr| IpPrefix {
                    addr,
                    prefix_len: m.header.prefix_len,
                })
            })
            .collect())
    }

    /// Adds `prefix` to interface `index` (IPv6 without duplicate address detection, so it
    /// is usable at once, as the VRRP master must, and deprecated from the start: never
    /// chosen as a source address). Already there: fine.
    pub async fn add_address(&self, index: u32, prefix: IpPrefix) -> Result<()> {
        let _turn = self.turn.lock().await;
        let mut req = self
            .handle
            .address()
            .add(index, prefix.addr, prefix.prefix_len);
        if prefix.addr.is_ipv6() {
            let msg = req.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
            // Preferred lifetime 0 (valid forever): the address answers and is the source
            // of replies to it, but the kernel never picks it as the source of the node's
            // own new connections (health checks, tunnels), which must not depend on
            // which node holds the VIP.
            let mut lifetimes = CacheInfo::default();
            lifetimes.ifa_preferred = 0;
            lifetimes.ifa_valid = u32::MAX;
            msg.attributes.push(AddressAttribute::CacheInfo(lifetimes));
        }
        match req.execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(anyhow!(e)).with_context(|| format!("cannot add {prefix}")),
        }
    }

    /// Removes `addr` from interface `index`, whatever its prefix; returns whether it was
    /// there.
    pub async fn remove_address(&self, index: u32, addr: IpAddr) -> Result<bool> {
        let _turn = self.turn.lock().await;
        let msgs = self.address_messages(index).await?;
        let mut removed = false;
        for m in msgs.into_iter().filter(|m| address_of(m) == Some(addr)) {
            match self.handle.address().del(m).execute().await {
                Ok(()) => removed = true,
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EADDRNOTAVAIL => {}
                Err(e) => return Err(anyhow!(e)).with_context(|| format!("cannot remove {addr}")),
            }
        }
        Ok(removed)
    }
}

fn address_of(m: &AddressMessage) -> Option<IpAddr> {
    // IFA_LOCAL is the interface's own address where both exist (point-to-point links).
    let local = m.attributes.iter().find_map(|a| match a {
        AddressAttribute::Local(a) => Some(*a),
        _ => None,
    });
    local.or_else(|| {
        m.attributes.iter().find_map(|a| match a {
            AddressAttribute::Address(a) => Some(*a),
            _ => None,
        })
    })
}

/// Link state of every interface by name, kept current from the kernel's link events.
pub type LinkStates = watch::Receiver<BTreeMap<String, bool>>;

/// Subscribes to link events, then reads the current state (in that order, so no change
/// falls between), and keeps the returned map current from a background task.
pub async fn watch_links(netlink: &Netlink) -> Result<LinkStates> {
    let (connection, _handle, mut events) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link])
            .context("cannot subscribe to netlink link events")?;
    tokio::spawn(connection);
    let initial: BTreeMap<String, bool> = netlink
        .links()
        .await?
        .into_iter()
        .map(|l| (l.name, l.up))
        .collect();
    let (tx, rx) = watch::channel(initial);
    tokio::spawn(async move {
        while let Some((msg, _)) = events.next().await {
            let NetlinkPayload::InnerMessage(inner) = msg.payload else {
                continue;
            };
            let change = match inner {
                RouteNetlinkMessage::NewLink(m) => link_of(&m).map(|l| (l.name, l.up)),
                RouteNetlinkMessage::DelLink(m) => link_of(&m).map(|l| (l.name, false)),
                _ => None,
            };
            if let Some((name, up)) = change {
                tx.send_if_modified(|states| states.insert(name, up) != Some(up));
            }
        }
        tracing::warn!("netlink link events ended: tracked interfaces are no longer watched");
    });
    Ok(rx)
}
