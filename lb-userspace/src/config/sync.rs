//! `sync:` connection state shared with the other LB nodes: unicast `peers`, or a
//! multicast `group` joined on `interface`.

use std::net::IpAddr;
use std::path::PathBuf;

use super::keys::SYNC_KEYS;
use super::schema::{StateSync, SyncMulticast, DEFAULT_SYNC_PORT};
use super::yaml::{Obj, Pos, P, Y};
use super::Cx;

impl Cx<'_> {
    /// `sync:`, and where its `interface` is (for the checks against the node).
    pub(super) fn sync(&mut self, y: &Y, path: &P) -> Option<(StateSync, Pos)> {
        let o = self.obj(y, path, SYNC_KEYS)?;
        let peers_path = P::Key(path, "peers");
        let peers = self.list(o.opt("peers"), &peers_path, "addresses", Self::ip);
        let port = self.field(&o, path, "port", DEFAULT_SYNC_PORT, |cx, y, p| {
            cx.u16(y, p, 1)
        });
        let key_file = self.req_field(&o, path, "key_file", Self::string);
        let group = self.opt_field(&o, path, "group", Self::ip);
        let interface = self.opt_field(&o, path, "interface", Self::ifname);
        let (peers, port, key_file) = (peers?, port?, key_file?);
        let group = self.sync_multicast(&o, path, &peers, group?, interface?)?;
        if group.is_none() && peers.is_empty() {
            let message = match o.opt("peers") {
                Some(_) => "expected at least one peer address (peers: [10.0.0.3])",
                None => "expected peers (unicast: peers: [10.0.0.3]) or group (multicast: group: 239.0.0.81 with interface: eth0)",
            };
            let at = if o.opt("peers").is_some() {
                &peers_path
            } else {
                path
            };
            self.err(o.pos("peers"), at, message);
            return None;
        }
        if key_file.is_empty() {
            self.err(
                o.pos("key_file"),
                &P::Key(path, "key_file"),
                "expected the path of the file holding the shared key",
            );
            return None;
        }
        let sync = StateSync {
            peers,
            group,
            port,
            key_file: PathBuf::from(key_file),
        };
        Some((sync, o.pos("interface")))
    }

    /// `group` and `interface` checked together and against `peers`: `Some(None)` for
    /// unicast, `None` after an error.
    fn sync_multicast(
        &mut self,
        o: &Obj<'_>,
        path: &P,
        peers: &[IpAddr],
        group: Option<IpAddr>,
        interface: Option<String>,
    ) -> Option<Option<SyncMulticast>> {
        let (group, interface) = match (group, interface) {
            (None, None) => return Some(None),
            (None, Some(_)) => {
                self.err(
                    o.pos("interface"),
                    &P::Key(path, "interface"),
                    "only used with group (the interface multicast sync joins the group on); add group or remove interface",
                );
                return None;
            }
            (Some(_), None) => {
                self.err(
                    o.pos,
                    path,
                    "missing required key \"interface\" (the interface to join the multicast group on)",
                );
                return None;
            }
            (Some(g), Some(i)) => (g, i),
        };
        let group_path = P::Key(path, "group");
        if !group.is_multicast() {
            self.err(
                o.pos("group"),
                &group_path,
                format!("{group} is not a multicast address, expected one in 224.0.0.0/4 or ff00::/8 (e.g. 239.0.0.81)"),
            );
            return None;
        }
        if !peers.is_empty() {
            self.err(
                o.pos("group"),
                &group_path,
                "both peers and group: sync goes to unicast peers or to a multicast group, not both; remove one",
            );
            return None;
        }
        Some(Some(SyncMulticast {
            address: group,
            interface,
        }))
    }
}
