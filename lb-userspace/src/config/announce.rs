//! `announce:` (scale-out): the routing table and protocol of the announcement routes, the
//! grace of a stop, and which VIPs; `vips` must name services' VIPs, checked once every
//! service is known ([`Cx::check_announce`]).

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

use super::convert::Cx;
use super::keys::ANNOUNCE_KEYS;
use super::schema::{Announce, Config, DEFAULT_ANNOUNCE_PROTOCOL, DEFAULT_ANNOUNCE_TABLE};
use super::yaml::{pos_of, Pos, Raw, P, Y};

/// Tables the system shares: unspecified, default, main, local.
const SHARED_TABLES: [(u32, &str); 4] = [
    (0, "unspec"),
    (253, "default"),
    (254, "main"),
    (255, "local"),
];
/// Protocol numbers up to 4 (`static`) are the kernel's and the operator's own.
const LOWEST_PROTOCOL: u8 = 5;

impl Cx<'_> {
    /// The section, and the position of each item of `vips`.
    pub(super) fn announce(&mut self, y: &Y, path: &P) -> Option<(Announce, Vec<Pos>)> {
        let o = self.obj(y, path, ANNOUNCE_KEYS)?;
        let d = Announce::default();
        let table = self.field(&o, path, "table", DEFAULT_ANNOUNCE_TABLE, Self::route_table);
        let protocol = self.field(
            &o,
            path,
            "protocol",
            DEFAULT_ANNOUNCE_PROTOCOL,
            |cx, y, p| cx.u8(y, p, LOWEST_PROTOCOL),
        );
        let grace = self.field(&o, path, "withdraw_grace", d.withdraw_grace, Self::duration);
        let vips_path = P::Key(path, "vips");
        let vips = self.list(o.opt("vips"), &vips_path, "addresses", Self::ip);
        let positions: Vec<Pos> = match o.opt("vips").map(|y| &y.value) {
            Some(Raw::Seq(items)) => items.iter().map(pos_of).collect(),
            _ => Vec::new(),
        };
        let vips = vips?;
        let mut seen = HashMap::new();
        let mut ok = true;
        for (i, vip) in vips.iter().enumerate() {
            if let Some(first) = seen.insert(*vip, i) {
                seen.insert(*vip, first);
                self.err(
                    positions.get(i).copied().unwrap_or(o.pos),
                    &P::Idx(&vips_path, i),
                    format!("{vip} is listed twice (also vips[{first}])"),
                );
                ok = false;
            }
        }
        let announce = Announce {
            table: table?,
            protocol: protocol?,
            withdraw_grace: grace?,
            vips,
        };
        ok.then_some((announce, positions))
    }

    fn route_table(&mut self, y: &Y, path: &P) -> Option<u32> {
        let table = self.u32(y, path, 0, u32::MAX)?;
        if let Some((_, name)) = SHARED_TABLES.iter().find(|(t, _)| *t == table) {
            self.err(
                pos_of(y),
                path,
                format!(
                    "{table} is the system's \"{name}\" table (0, 253, 254 and 255 are shared), \
                     expected a table of bascule's own, e.g. 200"
                ),
            );
            return None;
        }
        Some(table)
    }

    /// `announce.vips` names only VIPs of services (after the services are parsed).
    pub(super) fn check_announce(&mut self, config: &Config) {
        let Some(announce) = &config.announce else {
            return;
        };
        let service_vips: BTreeSet<IpAddr> =
            config.services.iter().flat_map(|s| s.addresses()).collect();
        let vips_path = P::Key(&P::Key(&P::Root, "announce"), "vips");
        for (i, vip) in announce.vips.iter().enumerate() {
            if service_vips.contains(vip) {
                continue;
            }
            let at = config
                .origin
                .announce_vips
                .get(i)
                .copied()
                .unwrap_or_default();
            self.err(
                at,
                &P::Idx(&vips_path, i),
                format!("{vip} is not the VIP of any service, expected one of the services' VIPs"),
            );
        }
    }
}
