//! A service's addresses and ports: `vip` and `vips`, `port` and `ports` (single ports and
//! ranges such as `"8000-8099"`), and the rules between them (one address family, no
//! address or port twice, no port 0 among several).

use std::net::IpAddr;

use super::convert::Cx;
use super::scalars::family;
use super::schema::PortRange;
use super::yaml::{pos_of, Obj, Pos, Raw, P, Y};

/// Where a service is reached, as `Service` holds it: `vip`/`port` first, the rest in
/// `vips`/`ports`.
pub(super) struct Endpoints {
    pub(super) vip: IpAddr,
    pub(super) vips: Vec<IpAddr>,
    pub(super) port: u16,
    pub(super) ports: Vec<PortRange>,
}

impl Cx<'_> {
    /// The service's addresses and ports; `None` when one is missing or broken (reported).
    pub(super) fn endpoints(&mut self, o: &Obj, path: &P) -> Option<Endpoints> {
        let vip = self.opt_field(o, path, "vip", Self::ip);
        let vips_path = P::Key(path, "vips");
        let vips = self.list(o.opt("vips"), &vips_path, "addresses", |cx, y, p| {
            Some((cx.ip(y, p)?, pos_of(y)))
        });
        let port = self.opt_field(o, path, "port", |cx, y, p| cx.u16(y, p, 0));
        let ports_path = P::Key(path, "ports");
        let ports = self.list(o.opt("ports"), &ports_path, "ports", |cx, y, p| {
            Some((cx.port_range(y, p)?, pos_of(y)))
        });
        let (vip, vips, port, ports) = (vip?, vips?, port?, ports?);
        let addresses = self.addresses(o, path, vip, vips);
        let ports = self.ports(o, path, port, ports);
        let ((vip, vips), (port, ports)) = (addresses?, ports?);
        Some(Endpoints {
            vip,
            vips,
            port,
            ports,
        })
    }

    /// `vip` and `vips`: at least one address, one family, each once.
    fn addresses(
        &mut self,
        o: &Obj,
        path: &P,
        vip: Option<IpAddr>,
        vips: Vec<(IpAddr, Pos)>,
    ) -> Option<(IpAddr, Vec<IpAddr>)> {
        let mut all: Vec<(IpAddr, String)> =
            vip.map(|v| (v, "vip".to_string())).into_iter().collect();
        let mut ok = true;
        let vips_path = P::Key(path, "vips");
        for (i, (addr, pos)) in vips.into_iter().enumerate() {
            let why = if let Some((_, at)) = all.iter().find(|(a, _)| *a == addr) {
                Some(format!("{addr} is listed twice (also {at})"))
            } else {
                all.first().filter(|(a, _)| a.is_ipv4() != addr.is_ipv4()).map(|(first, at)| {
                    format!(
                        "{addr} is {} but {at} {first} is {}; the addresses of a service share one family",
                        family(addr),
                        family(*first)
                    )
                })
            };
            if let Some(why) = why {
                self.err(pos, &P::Idx(&vips_path, i), why);
                ok = false;
            }
            all.push((addr, format!("vips[{i}]")));
        }
        if all.is_empty() {
            // Reports the missing key ("vip"; `vips` is the alternative).
            self.req(o, path, "vip");
            return None;
        }
        let mut addrs = all.into_iter().map(|(a, _)| a);
        ok.then(|| (addrs.next().expect("not empty"), addrs.collect()))
    }

    /// `port` and `ports`: at least one, none twice, port 0 (all ports) alone.
    fn ports(
        &mut self,
        o: &Obj,
        path: &P,
        port: Option<u16>,
        ranges: Vec<(PortRange, Pos)>,
    ) -> Option<(u16, Vec<PortRange>)> {
        let ports_path = P::Key(path, "ports");
        if port == Some(0) && !ranges.is_empty() {
            self.err(
                o.pos("ports"),
                &ports_path,
                "ports cannot be combined with port 0 (all ports)",
            );
            return None;
        }
        let mut seen: Vec<(PortRange, String)> = port
            .map(|p| (PortRange { lo: p, hi: p }, format!("port ({p})")))
            .into_iter()
            .collect();
        let mut ok = true;
        for (i, (r, pos)) in ranges.into_iter().enumerate() {
            if let Some((_, at)) = seen.iter().find(|(s, _)| s.overlaps(&r)) {
                self.err(pos, &P::Idx(&ports_path, i), format!("{r} overlaps {at}"));
                ok = false;
            }
            seen.push((r, format!("ports[{i}] ({r})")));
        }
        let mut all = seen.into_iter().map(|(r, _)| r);
        let Some(first) = all.next() else {
            // Reports the missing key ("port"; `ports` is the alternative).
            self.req(o, path, "port");
            return None;
        };
        // Without `port`, the first port of `ports` is the service's port.
        let rest = (first.hi > first.lo).then_some(PortRange {
            lo: first.lo + 1,
            hi: first.hi,
        });
        ok.then(|| (first.lo, rest.into_iter().chain(all).collect()))
    }

    /// A port (1..=65535) or a range `"LOW-HIGH"` of them.
    fn port_range(&mut self, y: &Y, path: &P) -> Option<PortRange> {
        if let Raw::Int(_) = y.value {
            let p = self.u16(y, path, 1)?;
            return Some(PortRange { lo: p, hi: p });
        }
        self.parsed(
            y,
            path,
            "a port (1..=65535) or a range LOW-HIGH of them (e.g. 443 or \"8000-8099\")",
            |s| {
                let (lo, hi) = s.split_once('-').unwrap_or((s, s));
                let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
                (lo >= 1 && lo <= hi).then_some(PortRange { lo, hi })
            },
        )
    }
}
