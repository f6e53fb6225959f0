//! The conversion from the YAML tree to the public types, with validation: the converter
//! and the document's root with its small sections (`node`, `http`, `conntrack`). Services,
//! health checks and VRRP instances have their own files.

use std::collections::HashMap;
use std::path::PathBuf;

use super::errors::ConfigError;
use super::keys::{CONNTRACK_KEYS, HTTP_KEYS, IFACE_KEYS, NODE_KEYS, ROOT_KEYS};
use super::scalars::{is_loopback, valid_ifname};
use super::schema::{
    Config, Conntrack, Http, Interface, Node, Origin, XdpMode, DEFAULT_HTTP_LISTEN,
    DEFAULT_ICMP_ECHO_RATE,
};
use super::yaml::{o_pos_of_key, pos_of, Pos, Raw, P, Y};

/// The converter: reads the tree into the public types, collecting every error it finds.
pub(super) struct Cx<'t> {
    /// The file's text, for values as written (`describe`, `source_text`).
    pub(super) text: &'t str,
    pub(super) file: &'t str,
    pub(super) errors: Vec<ConfigError>,
    /// Positions of `node.interfaces[i].name`, for [`Config::check_host`].
    pub(super) interfaces: Vec<Pos>,
}

impl Cx<'_> {
    pub(super) fn root(&mut self, y: &Y) -> Option<Config> {
        let path = P::Root;
        if matches!(y.value, Raw::Null) {
            self.err(
                pos_of(y),
                &path,
                "the configuration is empty: missing required top-level key \"node\"",
            );
            return None;
        }
        let o = self.obj(y, &path, ROOT_KEYS)?;
        let node = self.req_field(&o, &path, "node", Self::node);
        let http = self.field(&o, &path, "http", Http::default(), Self::http);
        let conntrack = self.field(
            &o,
            &path,
            "conntrack",
            Conntrack::default(),
            Self::conntrack,
        );
        let services_path = P::Key(&path, "services");
        let services = self.list(o.opt("services"), &services_path, "services", Self::service);
        let vrrp_path = P::Key(&path, "vrrp");
        let vrrp = self.list(o.opt("vrrp"), &vrrp_path, "VRRP instances", Self::vrrp);
        let announce = self.opt_field(&o, &path, "announce", Self::announce);

        let scripts_path = P::Key(&path, "vrrp_scripts");
        let scripts = self.list(
            o.opt("vrrp_scripts"),
            &scripts_path,
            "VRRP scripts",
            Self::vrrp_script,
        );
        let groups_path = P::Key(&path, "sync_groups");
        let groups = self.list(
            o.opt("sync_groups"),
            &groups_path,
            "sync groups",
            Self::sync_group,
        );

        let sync = self.opt_field(&o, &path, "sync", Self::sync);

        let services = services.map(|s| self.check_services(s));
        let vrrp = vrrp.map(|v| self.check_vrrp(v));
        if let (Some(v), Some(s), Some(g)) = (&vrrp, &scripts, &groups) {
            self.check_tracking(v, s, g);
        }

        let (node, http, conntrack, services, vrrp) = (node?, http?, conntrack?, services?, vrrp?);
        let (announce, announce_vips) = match announce? {
            Some((a, positions)) => (Some(a), positions),
            None => (None, Vec::new()),
        };
        let (scripts, groups) = (scripts?, groups?);
        let (sync, sync_interface) = match sync? {
            Some((s, at)) => (Some(s), at),
            None => (None, Pos::default()),
        };
        let origin = Origin {
            file: self.file.to_owned(),
            services: services.iter().map(|d| d.loc.clone()).collect(),
            vrrp: vrrp.iter().map(|d| d.item).collect(),
            interfaces: std::mem::take(&mut self.interfaces),
            vrrp_auth: vrrp.iter().map(|d| d.auth_pos).collect(),
            announce_vips,
            sync_interface,
        };
        Some(Config {
            node,
            http,
            conntrack,
            services: services.into_iter().map(|d| d.svc).collect(),
            vrrp: vrrp.into_iter().map(|d| d.inst).collect(),
            announce,
            vrrp_scripts: scripts.into_iter().map(|d| d.script).collect(),
            sync_groups: groups.into_iter().map(|d| d.group).collect(),
            sync,
            origin,
        })
    }

    fn node(&mut self, y: &Y, path: &P) -> Option<Node> {
        let o = self.obj(y, path, NODE_KEYS)?;
        let ifaces_path = P::Key(path, "interfaces");
        let interfaces = match self.req(&o, path, "interfaces") {
            Some(list) => {
                let v = self.list(Some(list), &ifaces_path, "interfaces", Self::interface);
                if let Some(v) = &v {
                    if v.is_empty() {
                        self.err(
                            pos_of(list),
                            &ifaces_path,
                            "expected at least one interface (- name: eth0), found an empty list",
                        );
                        return None;
                    }
                    // Duplicate names: report the second one.
                    if let Raw::Seq(items) = &list.value {
                        self.interfaces = items.iter().map(|i| o_pos_of_key(i, "name")).collect();
                        let mut seen: HashMap<&str, usize> = HashMap::new();
                        for (i, (iface, item)) in v.iter().zip(items).enumerate() {
                            if let Some(first) = seen.insert(iface.name.as_str(), i) {
                                seen.insert(iface.name.as_str(), first);
                                let at = o_pos_of_key(item, "name");
                                self.err(
                                    at,
                                    &P::Key(&P::Idx(&ifaces_path, i), "name"),
                                    format!(
                                        "interface \"{}\" is listed twice (also interfaces[{first}])",
                                        iface.name
                                    ),
                                );
                            }
                        }
                    }
                }
                v
            }
            None => None,
        };
        let tunnel_source = self.opt_field(&o, path, "tunnel_source", Self::ip);
        let icmp_echo_rate = self.field(
            &o,
            path,
            "icmp_echo_rate",
            DEFAULT_ICMP_ECHO_RATE,
            |cx, y, p| cx.u32(y, p, 0, 1_000_000_000),
        );
        Some(Node {
            interfaces: interfaces?,
            tunnel_source: tunnel_source?,
            icmp_echo_rate: icmp_echo_rate?,
        })
    }

    fn interface(&mut self, y: &Y, path: &P) -> Option<Interface> {
        let o = self.obj(y, path, IFACE_KEYS)?;
        let name = self.req_field(&o, path, "name", Self::ifname);
        let xdp_mode = self.field(&o, path, "xdp_mode", XdpMode::Auto, Self::keyword);
        Some(Interface {
            name: name?,
            xdp_mode: xdp_mode?,
        })
    }

    pub(super) fn ifname(&mut self, y: &Y, path: &P) -> Option<String> {
        let s = self.string(y, path)?;
        if !valid_ifname(&s) {
            self.err(
                pos_of(y),
                path,
                format!("{s:?} is not a valid interface name, expected 1 to 15 characters without '/', ':', spaces or control characters"),
            );
            return None;
        }
        Some(s)
    }

    fn http(&mut self, y: &Y, path: &P) -> Option<Http> {
        let o = self.obj(y, path, HTTP_KEYS)?;
        let listen = self.field(&o, path, "listen", DEFAULT_HTTP_LISTEN, Self::socket_addr)?;
        let token_file = self.field(&o, path, "token_file", String::new(), Self::string)?;
        let token_file = (!token_file.is_empty()).then(|| PathBuf::from(token_file));
        if token_file.is_none() && !is_loopback(listen.ip()) {
            self.err(
                o.pos("listen"),
                &P::Key(path, "listen"),
                format!("{listen} is not a loopback address, so http.token_file is required (a file holding the API bearer token)"),
            );
            return None;
        }
        Some(Http { listen, token_file })
    }

    fn conntrack(&mut self, y: &Y, path: &P) -> Option<Conntrack> {
        let o = self.obj(y, path, CONNTRACK_KEYS)?;
        let d = Conntrack::default();
        let max_entries = self.field(&o, path, "max_entries", d.max_entries, |cx, y, p| {
            cx.u32(y, p, 1, u32::MAX)
        });
        let tcp = self.field(
            &o,
            path,
            "tcp_timeout",
            d.tcp_timeout,
            Self::positive_duration,
        );
        let udp = self.field(
            &o,
            path,
            "udp_timeout",
            d.udp_timeout,
            Self::positive_duration,
        );
        let flood_protection = self.field(
            &o,
            path,
            "flood_protection",
            d.flood_protection,
            Self::boolean,
        );
        Some(Conntrack {
            max_entries: max_entries?,
            tcp_timeout: tcp?,
            udp_timeout: udp?,
            flood_protection: flood_protection?,
        })
    }
}
