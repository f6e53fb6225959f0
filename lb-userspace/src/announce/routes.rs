//! The announcement table in the kernel, through rtnetlink: one blackhole route per
//! announced VIP (`VIP/32`, `VIP/128`) in table `announce.table`, with routing protocol
//! number `announce.protocol`, which a routing daemon learns and announces by BGP.
//!
//! Every route of that protocol in that table is this node's announcement, whoever left
//! it there: [`AnnounceTable::reconcile`] keeps exactly the wanted ones. Routes of other
//! protocols in the table are never touched.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{anyhow, bail, Context, Result};
use futures::TryStreamExt;
use rtnetlink::{
    packet_route::{
        route::{
            RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
            RouteType,
        },
        AddressFamily,
    },
    Handle,
};
use tokio::sync::Mutex;

/// Tables that are not a table of their own: unspecified, default, main, local.
const SHARED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// Protocol numbers up to `static` (4) are the kernel's and the operator's own
/// (`ip route add` uses `boot`, 3): bascule must never remove those.
const HIGHEST_RESERVED_PROTOCOL: u8 = 4;

/// A route of the announcement protocol found in the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpAddr,
    pub prefix_len: u8,
    /// `blackhole`, as bascule adds them; anything else was left by someone else.
    pub blackhole: bool,
    /// The kernel's message, to delete exactly this route.
    message: RouteMessage,
}

impl Route {
    /// Whether this is the route that announces `vip`.
    pub fn announces(&self, vip: IpAddr) -> bool {
        self.blackhole && self.destination == vip && self.prefix_len == host_prefix_len(vip)
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.blackhole { "blackhole " } else { "" };
        write!(f, "{kind}{}/{}", self.destination, self.prefix_len)
    }
}

/// What [`AnnounceTable::reconcile`] changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// VIPs whose route was added, in address order.
    pub added: Vec<IpAddr>,
    /// Routes removed: VIPs no longer wanted, and anything else of the protocol.
    pub removed: Vec<Route>,
}

impl Reconciled {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }
}

/// Table `table`'s routes of protocol `protocol`, in this network namespace.
pub struct AnnounceTable {
    handle: Handle,
    table: u32,
    protocol: u8,
    /// Requests take turns: the kernel refuses a dump on a socket that is still dumping.
    turn: Mutex<()>,
}

impl AnnounceTable {
    /// Opens a netlink socket (its I/O runs as a task on the current tokio runtime).
    /// Refuses the kernel's shared tables and reserved protocol numbers.
    pub fn connect(table: u32, protocol: u8) -> Result<AnnounceTable> {
        if SHARED_TABLES.contains(&table) {
            bail!(
                "announce.table {table} is a table the system shares (0 unspec, 253 default, \
                 254 main, 255 local): give bascule a table of its own, e.g. 200"
            );
        }
        if protocol <= HIGHEST_RESERVED_PROTOCOL {
            bail!(
                "announce.protocol {protocol} is the kernel's or the operator's own (0-4): \
                 choose a number of bascule's own, e.g. 186"
            );
        }
        let (connection, handle, _) =
            rtnetlink::new_connection().context("cannot open a netlink socket")?;
        tokio::spawn(connection);
        Ok(AnnounceTable {
            handle,
            table,
            protocol,
            turn: Mutex::new(()),
        })
    }

    pub fn table(&self) -> u32 {
        self.table
    }

    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// Every IPv4 and IPv6 route of the protocol in the table.
    pub async fn routes(&self) -> Result<Vec<Route>> {
        let _turn = self.turn.lock().await;
        self.routes_locked().await
    }

    async fn routes_locked(&self) -> Result<Vec<Route>> {
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut query = RouteMessage::default();
            query.header.address_family = family;
            let messages: Vec<RouteMessage> = self
                .handle
                .route()
                .get(query)
                .execute()
                .try_collect()
                .await
                .with_context(|| format!("cannot list the routes of table {}", self.table))?;
            routes.extend(messages.into_iter().filter_map(|m| self.ours(m)));
        }
        Ok(routes)
    }

    /// `message` as a [`Route`] if it is in the table and of the protocol.
    fn ours(&self, message: RouteMessage) -> Option<Route> {
        if table_of(&message) != self.table || u8::from(message.header.protocol) != self.protocol {
            return None;
        }
        let destination = match (message.header.address_family, destination_of(&message)) {
            (_, Some(addr)) => addr,
            // A default route carries no destination attribute.
            (AddressFamily::Inet, None) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            (AddressFamily::Inet6, None) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            _ => return None,
        };
        Some(Route {
            destination,
            prefix_len: message.header.destination_prefix_length,
            blackhole: message.header.kind == RouteType::BlackHole,
            message,
        })
    }

    /// Adds the blackhole route announcing `vip`. Fails if the table already has a route
    /// to that destination (of this protocol or another).
    pub async fn add(&self, vip: IpAddr) -> Result<()> {
        let _turn = self.turn.lock().await;
        self.add_locked(vip).await
    }

    async fn add_locked(&self, vip: IpAddr) -> Result<()> {
        let route = format!("blackhole {vip}/{}", host_prefix_len(vip));
        match self.handle.route().add(self.blackhole(vip)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => bail!(
                "cannot add {route} to table {}: the table already has a route to {vip} \
                 (see `ip route show table {} {vip}`); remove it or choose another \
                 announce.table",
                self.table,
                self.table
            ),
            Err(e) => Err(anyhow!(e)).with_context(|| {
                format!(
                    "cannot add {route} to table {} (protocol {})",
                    self.table, self.protocol
                )
            }),
        }
    }

    /// Removes the route announcing `vip`; returns whether it was there.
    pub async fn remove(&self, vip: IpAddr) -> Result<bool> {
        let _turn = self.turn.lock().await;
        let routes = self.routes_locked().await?;
        let mut removed = false;
        for route in routes.iter().filter(|r| r.announces(vip)) {
            removed |= self.delete_locked(route).await?;
        }
        Ok(removed)
    }

    /// Deletes exactly `route`; false if it was gone already.
    async fn delete_locked(&self, route: &Route) -> Result<bool> {
        match self
            .handle
            .route()
            .del(deletion(&route.message))
            .execute()
            .await
        {
            Ok(()) => Ok(true),
            Err(rtnetlink::Error::NetlinkError(e))
                if [-libc::ESRCH, -libc::ENOENT].contains(&e.raw_code()) =>
            {
                Ok(false)
            }
            Err(e) => Err(anyhow!(e)).with_context(|| {
                format!(
                    "cannot remove {route} from table {} (protocol {})",
                    self.table, self.protocol
                )
            }),
        }
    }

    /// Makes the table hold exactly one blackhole route of the protocol per VIP in
    /// `wanted`, and no other route of the protocol (a dead daemon's, a VIP no longer
    /// wanted, one of another type or prefix). Removals come first.
    pub async fn reconcile(&self, wanted: &BTreeSet<IpAddr>) -> Result<Reconciled> {
        let _turn = self.turn.lock().await;
        let routes = self.routes_locked().await?;
        let mut done = Reconciled::default();
        let mut present = BTreeSet::new();
        for route in routes {
            let keep = wanted.contains(&route.destination)
                && route.announces(route.destination)
                && present.insert(route.destination);
            if !keep && self.delete_locked(&route).await? {
                done.removed.push(route);
            }
        }
        for &vip in wanted.difference(&present) {
            self.add_locked(vip).await?;
            done.added.push(vip);
        }
        Ok(done)
    }

    /// The route announcing `vip`.
    fn blackhole(&self, vip: IpAddr) -> RouteMessage {
        let mut m = RouteMessage::default();
        m.header.address_family = match vip {
            IpAddr::V4(_) => AddressFamily::Inet,
            IpAddr::V6(_) => AddressFamily::Inet6,
        };
        m.header.destination_prefix_length = host_prefix_len(vip);
        m.header.protocol = RouteProtocol::from(self.protocol);
        m.header.scope = RouteScope::Universe;
        m.header.kind = RouteType::BlackHole;
        set_table(&mut m, self.table);
        m.attributes.push(RouteAttribute::Destination(vip.into()));
        m
    }
}

/// 32 or 128.
fn host_prefix_len(vip: IpAddr) -> u8 {
    match vip {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

/// The header's 8-bit table field holds ids up to 255; `RTA_TABLE` holds any. Both are
/// set, the header to "unspecified" above 255, as iproute2 does.
fn set_table(m: &mut RouteMessage, table: u32) {
    m.header.table = u8::try_from(table).unwrap_or(RouteHeader::RT_TABLE_UNSPEC);
    m.attributes
        .retain(|a| !matches!(a, RouteAttribute::Table(_)));
    m.attributes.push(RouteAttribute::Table(table));
}

fn table_of(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table))
}

fn destination_of(m: &RouteMessage) -> Option<IpAddr> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        RouteAttribute::Destination(RouteAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })
}

/// A delete request naming a listed route: its header (family, prefix, type, protocol,
/// scope, tos), destination, table and, for IPv6, metric. Next hops are left out, so
/// the kernel matches the route whatever they are.
fn deletion(listed: &RouteMessage) -> RouteMessage {
    let mut m = RouteMessage::default();
    m.header = listed.header.clone();
    m.attributes = listed
        .attributes
        .iter()
        .filter(|a| {
            matches!(
                a,
                RouteAttribute::Destination(_) | RouteAttribute::Priority(_)
            )
        })
        .cloned()
        .collect();
    set_table(&mut m, table_of(listed));
    m
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    const PROTOCOL: u8 = 186;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Runs `f` on a thread of its own inside a new network namespace (loopback up), with
    /// a tokio runtime: the kernel tables it changes are nobody else's.
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        // SAFETY: geteuid(2) cannot fail.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "the routing-table tests create a network namespace: run them as root"
        );
        std::thread::spawn(move || {
            // SAFETY: unshare(2) moves only this thread (CLONE_NEWNET); the processes it
            // starts (`ip`) inherit its namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
            run_ip(&["link", "set", "lo", "up"]);
            f()
        })
        .join()
        .expect("the namespace thread panicked")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn run_ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            out.status.success(),
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Table `table` as `ip -j route show table T` (both families) shows it: `TYPE DST
    /// proto N` per route, sorted (protocols as numbers: `ip -N`).
    fn table_as_seen(table: u32) -> Vec<String> {
        let table = table.to_string();
        let mut seen = Vec::new();
        for family in ["-4", "-6"] {
            let args = ["-N", "-j", family, "route", "show", "table", &table];
            let out = Command::new("ip").args(args).output().expect("run ip");
            let stderr = String::from_utf8_lossy(&out.stderr);
            if stderr.contains("FIB table does not exist") {
                continue; // the kernel creates a table with its first route
            }
            assert!(out.status.success(), "ip {}: {stderr}", args.join(" "));
            let json = String::from_utf8_lossy(&out.stdout);
            let routes: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap();
            for r in routes {
                let kind = match r["type"].as_str() {
                    None | Some("1") => "unicast",
                    Some("6") => "blackhole",
                    Some("7") => "unreachable",
                    Some(other) => other,
                };
                // iproute2 leaves out `boot` (3), the protocol of its own `ip route add`.
                let protocol = r["protocol"].as_str().unwrap_or("3");
                seen.push(format!(
                    "{kind} {} proto {protocol}",
                    r["dst"].as_str().unwrap()
                ));
            }
        }
        seen.sort();
        seen
    }

    fn owned(routes: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = routes.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    }

    fn add(args: &str) {
        let args: Vec<&str> = args.split_whitespace().collect();
        run_ip(&args);
    }

    /// A dead daemon's routes, routes of other kinds of the protocol, and routes of other
    /// protocols and tables; then reconciled to {10.0.0.1, 10.0.0.2, fd00::1}.
    fn reconcile_in_table(table: u32) {
        let t = table.to_string();
        let other = (table + 1).to_string();
        for route in [
            format!("blackhole 10.0.0.2/32 table {t} proto 186"),
            format!("blackhole 10.9.9.9/32 table {t} proto 186"),
            format!("unreachable 10.2.0.0/24 table {t} proto 186"),
            format!("10.3.0.1/32 dev lo table {t} proto 186"),
            format!("blackhole 10.1.1.1/32 table {t} proto static"),
            format!("blackhole 10.0.0.1/32 table {other} proto 186"),
            "blackhole 10.0.0.1/32 proto 186".to_string(),
        ] {
            add(&format!("route add {route}"));
        }
        add(&format!(
            "-6 route add blackhole fd00::9/128 table {t} proto 186"
        ));
        let before_other = table_as_seen(table + 1);
        let before_main = table_as_seen(254);

        let rt = runtime();
        let wanted = BTreeSet::from([ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")]);
        let announce = rt
            .block_on(async { AnnounceTable::connect(table, PROTOCOL) })
            .unwrap();
        let done = rt.block_on(announce.reconcile(&wanted)).unwrap();
        assert_eq!(done.added, [ip("10.0.0.1"), ip("fd00::1")]);
        let mut removed: Vec<String> = done.removed.iter().map(Route::to_string).collect();
        removed.sort();
        assert_eq!(
            removed,
            owned(&[
                "10.2.0.0/24",
                "10.3.0.1/32",
                "blackhole 10.9.9.9/32",
                "blackhole fd00::9/128"
            ])
        );
        let expected = owned(&[
            "blackhole 10.0.0.1 proto 186",
            "blackhole 10.0.0.2 proto 186",
            "blackhole 10.1.1.1 proto 4",
            "blackhole fd00::1 proto 186",
        ]);
        assert_eq!(table_as_seen(table), expected, "table {table}");
        assert_eq!(table_as_seen(table + 1), before_other);
        assert_eq!(table_as_seen(254), before_main);

        // Again: nothing to do, nothing changes.
        let again = rt.block_on(announce.reconcile(&wanted)).unwrap();
        assert!(again.is_empty(), "{again:?}");
        assert_eq!(table_as_seen(table), expected);

        // Nothing wanted: only the other protocol's route stays.
        let none = rt.block_on(announce.reconcile(&BTreeSet::new())).unwrap();
        assert_eq!(none.removed.len(), 3);
        assert_eq!(table_as_seen(table), owned(&["blackhole 10.1.1.1 proto 4"]));
        assert_eq!(table_as_seen(254), before_main);
    }

    #[test]
    fn reconcile_keeps_exactly_the_wanted_routes_in_table_200() {
        in_private_netns(|| reconcile_in_table(200));
    }

    /// Above 255 the table id travels in RTA_TABLE only.
    #[test]
    fn reconcile_keeps_exactly_the_wanted_routes_in_table_1000() {
        in_private_netns(|| reconcile_in_table(1000));
    }

    #[test]
    fn add_and_remove_one_vip() {
        in_private_netns(|| {
            let rt = runtime();
            let announce = rt
                .block_on(async { AnnounceTable::connect(1000, PROTOCOL) })
                .unwrap();
            for vip in [ip("10.0.0.5"), ip("fd00::5")] {
                rt.block_on(announce.add(vip)).unwrap();
                let twice = rt.block_on(announce.add(vip)).unwrap_err().to_string();
                assert!(twice.contains("already has a route to"), "{twice}");
                assert!(rt.block_on(announce.remove(vip)).unwrap());
                assert!(!rt.block_on(announce.remove(vip)).unwrap());
            }
            rt.block_on(announce.add(ip("10.0.0.6"))).unwrap();
            assert_eq!(
                table_as_seen(1000),
                owned(&["blackhole 10.0.0.6 proto 186"])
            );
            let listed = rt.block_on(announce.routes()).unwrap();
            assert_eq!(listed.len(), 1);
            assert!(listed[0].announces(ip("10.0.0.6")));
        });
    }

    #[test]
    fn a_foreign_route_to_a_wanted_vip_is_reported() {
        in_private_netns(|| {
            add("route add blackhole 10.0.0.1/32 table 200 proto static");
            let rt = runtime();
            let announce = rt
                .block_on(async { AnnounceTable::connect(200, PROTOCOL) })
                .unwrap();
            let err = rt
                .block_on(announce.reconcile(&BTreeSet::from([ip("10.0.0.1")])))
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                "cannot add blackhole 10.0.0.1/32 to table 200: the table already has a route \
                 to 10.0.0.1 (see `ip route show table 200 10.0.0.1`); remove it or choose \
                 another announce.table"
            );
            assert_eq!(table_as_seen(200), owned(&["blackhole 10.0.0.1 proto 4"]));
        });
    }

    #[test]
    fn shared_tables_and_reserved_protocols_are_refused() {
        for table in [0, 253, 254, 255] {
            let err = AnnounceTable::connect(table, PROTOCOL).err().unwrap();
            assert!(err.to_string().contains("a table of its own"), "{err}");
        }
        for protocol in [0, 2, 3, 4] {
            let err = AnnounceTable::connect(200, protocol).err().unwrap();
            assert!(err.to_string().contains("(0-4)"), "{err}");
        }
    }
}
