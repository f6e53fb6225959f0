//! Every error message of the parser, exactly as printed (`FILE:LINE:COLUMN: path: message`):
//! one row per mistake, the document and the first error it gives.

use super::{err, with_node};

/// A case's document.
#[derive(Clone, Copy, Debug)]
enum Doc {
    /// The whole file.
    File(&'static str),
    /// What follows `node:` with the interface eth0 (`NODE`, three lines).
    AfterNode(&'static str),
    /// The body of `services[0].health_check`, a service web at 10.0.0.1:80.
    Check(&'static str),
    /// More keys of `vrrp[0]`, VI_1 on eth0 with router id 51 and 10.0.0.1/24.
    Vrrp(&'static str),
    /// The body of `announce`, after a service web at 10.0.0.1:80.
    Announce(&'static str),
}

use Doc::{AfterNode, Announce, Check, File, Vrrp};

impl Doc {
    fn text(self) -> String {
        match self {
            File(text) => text.to_owned(),
            AfterNode(rest) => with_node(rest),
            Check(body) => with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check:\n{body}"
            )),
            Vrrp(keys) => with_node(&format!(
                "vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n{keys}"
            )),
            Announce(body) => with_node(&format!(
                "services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\nannounce:\n{body}"
            )),
        }
    }
}

#[rustfmt::skip]
const CASES: &[(Doc, &str)] = &[
    // sync:
    (AfterNode("sync:\n  peers: [10.0.0.3]\n"), "bascule.yaml:5:3: sync: missing required key \"key_file\""),
    (AfterNode("sync:\n  peers: []\n  key_file: /k\n"), "bascule.yaml:5:10: sync.peers: expected at least one peer address (peers: [10.0.0.3])"),
    (AfterNode("sync:\n  key_file: /k\n"), "bascule.yaml:5:3: sync: expected peers (unicast: peers: [10.0.0.3]) or group (multicast: group: 239.0.0.81 with interface: eth0)"),
    (AfterNode("sync:\n  peers: [10.0.0.3]\n  key_file: /k\n  group: 239.0.0.81\n  interface: eth0\n"), "bascule.yaml:7:10: sync.group: both peers and group: sync goes to unicast peers or to a multicast group, not both; remove one"),
    (AfterNode("sync:\n  group: 10.0.0.3\n  interface: eth0\n  key_file: /k\n"), "bascule.yaml:5:10: sync.group: 10.0.0.3 is not a multicast address, expected one in 224.0.0.0/4 or ff00::/8 (e.g. 239.0.0.81)"),
    (AfterNode("sync:\n  group: 239.0.0.81\n  key_file: /k\n"), "bascule.yaml:5:3: sync: missing required key \"interface\" (the interface to join the multicast group on)"),
    (AfterNode("sync:\n  peers: [10.0.0.3]\n  key_file: /k\n  interface: eth0\n"), "bascule.yaml:7:14: sync.interface: only used with group (the interface multicast sync joins the group on); add group or remove interface"),
    (AfterNode("sync:\n  group: ff02::81\n  interface: eth/0\n  key_file: /k\n"), "bascule.yaml:6:14: sync.interface: \"eth/0\" is not a valid interface name, expected 1 to 15 characters without '/', ':', spaces or control characters"),
    (AfterNode("sync:\n  peers: [10.0.0.3]\n  key_file: /k\n  port: 0\n"), "bascule.yaml:7:9: sync.port: 0 is out of range, expected 1..=65535"),
    // Unknown keys, with "did you mean" when a key is close.
    (AfterNode("foo: 1\n"), "bascule.yaml:4:1: foo: unknown key, expected one of: node, http, conntrack, services, vrrp, vrrp_scripts, sync_groups, announce, sync"),
    (File("node:\n  interfaces:\n    - name: eth0\n      xdp_mod: native\n"), "bascule.yaml:4:7: node.interfaces[0].xdp_mod: unknown key (did you mean \"xdp_mode\"?), expected one of: name, xdp_mode"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    health_check: {type: tcp, intervall: 2s}\n"), "bascule.yaml:8:31: services[0].health_check.intervall: unknown key (did you mean \"interval\"?), expected one of: type, connect_port, interval, timeout, rise, fall, retries, delay_before_retry, inhibit_on_failure, initial_state, method, path, virtualhost, expect_status, body_regex, digest, sni, ca_file, helo_name, query_name, query_type, expect_rcode, expect_answer, payload, expect, require_reply, command, dynamic"),

    // A value of the wrong type.
    (AfterNode("conntrack:\n  max_entries: lots\n"), "bascule.yaml:5:16: conntrack.max_entries: expected an integer in 1..=4294967295, found the string \"lots\""),
    (File("node:\n  interfaces: eth0\n"), "bascule.yaml:2:15: node.interfaces: expected a list of interfaces, found the string \"eth0\""),
    (File("node:\n  interfaces:\n    - eth0\n"), "bascule.yaml:3:7: node.interfaces[0]: expected a mapping with the keys name, xdp_mode, found the string \"eth0\""),
    (File("node:\n  - eth0\n"), "bascule.yaml:2:3: node: expected a mapping with the keys interfaces, tunnel_source, icmp_echo_rate, found a list"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/24]\n    preempt: sometimes\n"), "bascule.yaml:9:14: vrrp[0].preempt: expected true or false, found the string \"sometimes\""),
    (File("- node\n"), "bascule.yaml:1:1: the configuration must be a mapping with the keys node, http, conntrack, services, vrrp, vrrp_scripts, sync_groups, announce, sync, found a list"),

    // Durations.
    (AfterNode("conntrack:\n  tcp_timeout: 10\n"), "bascule.yaml:5:16: conntrack.tcp_timeout: \"10\" is not a valid duration (missing unit), expected e.g. 100ms, 1s, 5m or 1h"),
    (AfterNode("conntrack:\n  tcp_timeout: -5s\n"), "bascule.yaml:5:16: conntrack.tcp_timeout: \"-5s\" is not a valid duration (negative), expected e.g. 100ms, 1s, 5m or 1h"),
    (AfterNode("conntrack:\n  tcp_timeout: 5x\n"), "bascule.yaml:5:16: conntrack.tcp_timeout: \"5x\" is not a valid duration (unknown unit \"x\"; units are us, ms, s, m, h, d), expected e.g. 100ms, 1s, 5m or 1h"),
    (AfterNode("conntrack:\n  tcp_timeout: 0s\n"), "bascule.yaml:5:16: conntrack.tcp_timeout: 0s is not allowed, expected a duration greater than 0"),

    // Addresses.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.300\n    port: 80\n"), "bascule.yaml:6:10: services[0].vip: \"10.0.0.300\" is not valid, expected an IPv4 or IPv6 address (e.g. 10.0.0.1 or fd00::1)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    sorry_server: fd00::9\n"), "bascule.yaml:8:19: services[0].sorry_server: \"fd00::9\" is not valid, expected ADDRESS:PORT (e.g. 10.0.0.1:80 or [fd00::1]:80)"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n    virtual_addresses: [10.0.0.1/33]\n"), "bascule.yaml:8:25: vrrp[0].virtual_addresses[0]: \"10.0.0.1/33\" is not valid (prefix \"33\" is not in 0..=32), expected ADDRESS/PREFIX (e.g. 10.0.0.100/24 or fd00::100/64)"),

    // Keywords.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    scheduler: fast\n"), "bascule.yaml:8:16: services[0].scheduler: \"fast\" is not a valid scheduler, expected one of: rr, wrr, lc, wlc, lblc, lblcr, dh, sh, sed, nq, mh"),
    (File("node:\n  interfaces:\n    - name: eth0\n      xdp_mode: turbo\n"), "bascule.yaml:4:17: node.interfaces[0].xdp_mode: \"turbo\" is not a valid XDP mode, expected one of: auto, native, generic"),

    // Duplicates are reported at the second occurrence.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.1\n    port: 80\n"), "bascule.yaml:8:5: services[1]: duplicate service 10.0.0.1:80/tcp, already defined by services[0] (\"web\") at line 5"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web\n    vip: 10.0.0.1\n    port: 81\n"), "bascule.yaml:8:11: services[1].name: duplicate service name \"web\", already used by services[0] at line 5"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n      - address: 10.0.0.11\n        weight: 3\n"), "bascule.yaml:10:18: services[0].backends[1].address: backend 10.0.0.11 is listed twice (also backends[0] at line 9)"),
    // With NAT the destination port is part of the backend: an explicit port equal to the
    // service's is the same backend.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: nat\n    backends:\n      - address: 10.0.0.11\n      - {address: 10.0.0.11, port: 80}\n"), "bascule.yaml:11:19: services[0].backends[1].address: backend 10.0.0.11:80 is listed twice (also backends[0] at line 10)"),

    // Integers out of range.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vip: 10.0.0.2\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: 70000\n"), "bascule.yaml:13:17: services[1].backends[0].weight: 70000 is out of range, expected 0..=65535"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        weight: -1\n"), "bascule.yaml:10:17: services[0].backends[0].weight: -1 is out of range, expected 0..=65535"),
    // Several addresses and ports (`vips`, `ports`).
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    vips: [10.0.0.2, 10.0.0.1]\n    port: 80\n"), "bascule.yaml:7:22: services[0].vips[1]: 10.0.0.1 is listed twice (also vip)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    vips: [\"fd00::2\"]\n    port: 80\n"), "bascule.yaml:7:12: services[0].vips[0]: fd00::2 is IPv6 but vip 10.0.0.1 is IPv4; the addresses of a service share one family"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    ports: [443, \"8000-8002\", 8001]\n"), "bascule.yaml:8:31: services[0].ports[2]: 8001 overlaps ports[1] (8000-8002)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    ports: [\"8002-8000\"]\n"), "bascule.yaml:7:13: services[0].ports[0]: \"8002-8000\" is not valid, expected a port (1..=65535) or a range LOW-HIGH of them (e.g. 443 or \"8000-8099\")"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    ports: [80]\n"), "bascule.yaml:8:12: services[0].ports: ports cannot be combined with port 0 (all ports)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n  - name: web2\n    vips: [10.0.0.2, 10.0.0.1]\n    ports: [\"79-81\"]\n"), "bascule.yaml:8:5: services[1]: duplicate service 10.0.0.1:80/tcp, already defined by services[0] (\"web\") at line 5"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    ports: [80, 81]\n    forwarding: nat\n    backends:\n      - address: 10.0.0.11\n        port: 8080\n"), "bascule.yaml:11:15: services[0].backends[0].port: backend port cannot be used when the service has several ports: NAT then keeps the client's destination port; remove it"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    ports: [\"1-65535\"]\n"), "bascule.yaml:5:5: services[0]: the services up to this one have 65535 (address, port) pairs; this build holds at most 16384: list fewer ports, or use port 0 for every port of a VIP"),
    // Connection thresholds.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        min_connections: 3\n"), "bascule.yaml:10:26: services[0].backends[0].min_connections: min_connections needs max_connections (the threshold it is the lower end of)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        max_connections: 5\n        min_connections: 8\n"), "bascule.yaml:11:26: services[0].backends[0].min_connections: 8 is above max_connections (5), expected at most 5"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        max_connections: 0\n"), "bascule.yaml:10:26: services[0].backends[0].max_connections: 0 is out of range, expected 1..=4294967295"),

    // The Maglev table size must be a prime.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: 65536\n"), "bascule.yaml:8:24: services[0].maglev_table_size: 65536 is not prime, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"),
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    maglev_table_size: 65539\n"), "bascule.yaml:8:24: services[0].maglev_table_size: 65539 is too large, expected a prime number up to 65537 (e.g. 251, 4093, 65521, 65537)"),

    // Backends of another address family than the VIP.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: fd00::11\n"), "bascule.yaml:9:18: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding dr needs the same address family (only tun can carry IPv4 in IPv6)"),
    (AfterNode("services:\n  - name: web\n    vip: fd00::1\n    port: 80\n    forwarding: tun\n    backends:\n      - address: 10.0.0.11\n"), "bascule.yaml:10:18: services[0].backends[0].address: 10.0.0.11 is IPv4 but the VIP fd00::1 is IPv6; forwarding tun cannot carry IPv6 in IPv4 (only IPv4 in IPv6)"),
    // A backend's own forwarding decides.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    forwarding: tun\n    backends:\n      - {address: fd00::11, forwarding: nat}\n"), "bascule.yaml:10:19: services[0].backends[0].address: fd00::11 is IPv6 but the VIP 10.0.0.1 is IPv4; forwarding nat needs the same address family (only tun can carry IPv4 in IPv6)"),

    // A backend port only with NAT.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 80\n    backends:\n      - address: 10.0.0.11\n        port: 8080\n"), "bascule.yaml:10:15: services[0].backends[0].port: backend port is only used with forwarding: nat; dr and tun keep the VIP port"),

    // A listener that is not on loopback needs a token.
    (AfterNode("http:\n  listen: 0.0.0.0:9469\n"), "bascule.yaml:5:11: http.listen: 0.0.0.0:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"),
    (AfterNode("http:\n  listen: \"[fd00::1]:9469\"\n  token_file: \"\"\n"), "bascule.yaml:5:11: http.listen: [fd00::1]:9469 is not a loopback address, so http.token_file is required (a file holding the API bearer token)"),

    // Missing `node`.
    (File("http:\n  listen: 127.0.0.1:9469\n"), "bascule.yaml:1:1: missing required top-level key \"node\""),
    (File(""), "bascule.yaml:1:1: the configuration is empty: missing required top-level key \"node\""),
    (File("node:\n  interfaces: []\n"), "bascule.yaml:2:15: node.interfaces: expected at least one interface (- name: eth0), found an empty list"),
    (File("node:\n  tunnel_source: 10.0.0.2\n"), "bascule.yaml:2:3: node: missing required key \"interfaces\""),

    // Missing and repeated keys.
    (AfterNode("services:\n  - name: web\n    port: 80\n"), "bascule.yaml:5:5: services[0]: missing required key \"vip\""),
    (File("node:\n  interfaces: [{name: eth0}]\n  interfaces: [{name: eth1}]\n"), "bascule.yaml:3:3: node.interfaces: duplicate key, already given at line 2"),
    (File("node:\n  interfaces:\n    - name: eth0\n    - name: eth0\n"), "bascule.yaml:4:13: node.interfaces[1].name: interface \"eth0\" is listed twice (also interfaces[0])"),

    // YAML syntax.
    (File("node:\n  interfaces: [eth0\n"), "bascule.yaml:2:15: invalid YAML: unclosed bracket '['"),

    // VRRP instances.
    (Vrrp("    priority: 0\n"), "bascule.yaml:9:15: vrrp[0].priority: 0 is out of range, expected 1..=255"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 256\n    virtual_addresses: [10.0.0.1/24]\n"), "bascule.yaml:7:24: vrrp[0].virtual_router_id: 256 is out of range, expected 1..=255"),
    (Vrrp("    version: 4\n"), "bascule.yaml:9:14: vrrp[0].version: expected 2 (RFC 3768) or 3 (RFC 5798), found the number 4"),
    (Vrrp("    advert_interval: 15ms\n"), "bascule.yaml:9:22: vrrp[0].advert_interval: 15ms: VRRP version 3 advertises centiseconds, expected a multiple of 10ms up to 40.95s"),
    (Vrrp("    authentication: {type: pass, password: x}\n"), "bascule.yaml:9:21: vrrp[0].authentication: only exists in VRRP version 2 (RFC 3768); remove it or set version: 2"),
    (Vrrp("    version: 2\n    authentication: {type: pass, password: toolongpassword}\n"), "bascule.yaml:10:44: vrrp[0].authentication.password: 15 bytes is not allowed, expected 1 to 8 bytes (what a VRRPv2 packet carries)"),
    (Vrrp("    unicast_peers: [10.0.0.2, fd00::3]\n"), "bascule.yaml:9:31: vrrp[0].unicast_peers[1]: fd00::3 is IPv6 but the virtual addresses are IPv4"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24, fd00::1/64]\n"), "bascule.yaml:8:38: vrrp[0].virtual_addresses[1]: fd00::1/64 is IPv6 but virtual_addresses[0] is IPv4; an instance carries one address family (use a second instance)"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    version: 2\n    virtual_addresses: [fd00::1/64]\n"), "bascule.yaml:9:25: vrrp[0].virtual_addresses[0]: fd00::1/64: VRRP version 2 is IPv4 only, expected version: 3 for IPv6"),
    (AfterNode("vrrp:\n  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.1/24]\n  - name: VI_2\n    interface: eth0\n    virtual_router_id: 51\n    virtual_addresses: [10.0.0.2/24]\n"), "bascule.yaml:11:24: vrrp[1].virtual_router_id: 51 is already used on eth0 for IPv4 by vrrp[0] (\"VI_1\") at line 7"),

    // VRRP scripts and sync groups.
    (Vrrp("    track_scripts: [chk_x]\n"), "bascule.yaml:9:21: vrrp[0].track_scripts[0]: no vrrp_scripts entry is named \"chk_x\" (there is none)"),
    (Vrrp("    track_scripts: [chk, chk_x]\nvrrp_scripts:\n  - {name: chk, script: x}\n"), "bascule.yaml:9:26: vrrp[0].track_scripts[1]: no vrrp_scripts entry is named \"chk_x\" (defined: chk)"),
    (Vrrp("    track_scripts: [chk, chk]\nvrrp_scripts:\n  - {name: chk, script: x}\n"), "bascule.yaml:9:26: vrrp[0].track_scripts[1]: \"chk\" is listed twice"),
    (Vrrp("    track_scripts: [chk]\nvrrp_scripts:\n  - {name: chk, script: x, weight: -10}\nsync_groups:\n  - {name: G1, instances: [VI_1]}\n"), "bascule.yaml:9:21: vrrp[0].track_scripts[0]: \"chk\" has weight -10, but VI_1 is in sync group G1, whose members must prefer the same node: track only scripts of weight 0 (FAULT while failing) in a group (keepalived ignores weighted ones)"),
    (Vrrp("    priority: 255\n    track_scripts: [chk]\nvrrp_scripts:\n  - {name: chk, script: x, weight: 10}\n"), "bascule.yaml:10:21: vrrp[0].track_scripts[0]: \"chk\" has weight 10, but the address owner's priority (255) never changes: use a script of weight 0 or a priority below 255"),
    (AfterNode("vrrp_scripts:\n  - {name: chk, script: x, weight: 254}\n"), "bascule.yaml:5:36: vrrp_scripts[0].weight: 254 is out of range, expected -253..=253"),
    (AfterNode("vrrp_scripts:\n  - {name: chk, script: x, rise: 0}\n"), "bascule.yaml:5:34: vrrp_scripts[0].rise: 0 is out of range, expected 1..=65535"),
    (AfterNode("vrrp_scripts:\n  - {name: chk, script: x, timeout: 0s}\n"), "bascule.yaml:5:37: vrrp_scripts[0].timeout: 0s is not allowed, expected a duration greater than 0"),
    (AfterNode("vrrp_scripts:\n  - {name: chk, script: \" \"}\n"), "bascule.yaml:5:25: vrrp_scripts[0].script: expected a command line, found an empty string"),
    (AfterNode("vrrp_scripts:\n  - {name: chk, script: x}\n  - {name: chk, script: y}\n"), "bascule.yaml:6:12: vrrp_scripts[1].name: duplicate script name \"chk\", already used by vrrp_scripts[0] at line 5"),
    (AfterNode("vrrp_scripts:\n  - {name: chk web, script: x}\n"), "bascule.yaml:5:12: vrrp_scripts[0].name: \"chk web\" is not a valid script name, expected letters, digits, '.', '_' or '-'"),
    (Vrrp("sync_groups:\n  - {name: G1, instances: [VI_1, VI_9]}\n"), "bascule.yaml:10:34: sync_groups[0].instances[1]: no vrrp instance is named \"VI_9\" (defined: VI_1)"),
    (Vrrp("sync_groups:\n  - {name: G1, instances: [VI_1]}\n  - {name: G2, instances: [VI_1]}\n"), "bascule.yaml:11:28: sync_groups[1].instances[0]: \"VI_1\" is already in sync group G1 (sync_groups[0]) at line 10; an instance is in at most one group"),
    (Vrrp("sync_groups:\n  - {name: G1, instances: [VI_1, VI_1]}\n"), "bascule.yaml:10:34: sync_groups[0].instances[1]: \"VI_1\" is listed twice"),
    (Vrrp("sync_groups:\n  - {name: G1, instances: []}\n"), "bascule.yaml:10:27: sync_groups[0].instances: expected at least one instance name, found an empty list"),
    (Vrrp("sync_groups:\n  - {name: G1, instances: [VI_1]}\n  - {name: G1, instances: []}\n"), "bascule.yaml:11:27: sync_groups[1].instances: expected at least one instance name, found an empty list"),
    (Vrrp("sync_groups:\n  - {name: G1}\n"), "bascule.yaml:10:5: sync_groups[0]: missing required key \"instances\""),
    // Announcements.
    (Announce("  table: 254\n"), "bascule.yaml:9:10: announce.table: 254 is the system's \"main\" table (0, 253, 254 and 255 are shared), expected a table of bascule's own, e.g. 200"),
    (Announce("  table: 0\n"), "bascule.yaml:9:10: announce.table: 0 is the system's \"unspec\" table (0, 253, 254 and 255 are shared), expected a table of bascule's own, e.g. 200"),
    (Announce("  protocol: 4\n"), "bascule.yaml:9:13: announce.protocol: 4 is out of range, expected 5..=255"),
    (Announce("  protocol: 256\n"), "bascule.yaml:9:13: announce.protocol: 256 is out of range, expected 5..=255"),
    (Announce("  withdraw_grace: soon\n"), "bascule.yaml:9:19: announce.withdraw_grace: \"soon\" is not a valid duration (expected a number before \"soon\"), expected e.g. 100ms, 1s, 5m or 1h"),
    (Announce("  vips: [10.0.0.1, 10.0.0.9]\n"), "bascule.yaml:9:20: announce.vips[1]: 10.0.0.9 is not the VIP of any service, expected one of the services' VIPs"),
    (Announce("  vips: [10.0.0.1, 10.0.0.1]\n"), "bascule.yaml:9:20: announce.vips[1]: 10.0.0.1 is listed twice (also vips[0])"),
    (Announce("  vip: [10.0.0.1]\n"), "bascule.yaml:9:3: announce.vip: unknown key (did you mean \"vips\"?), expected one of: table, protocol, withdraw_grace, vips"),

    // Health checks.
    (Check("      type: tcp\n      interval: 0s\n"), "bascule.yaml:10:17: services[0].health_check.interval: 0s is not allowed, expected a duration greater than 0"),
    (Check("      type: tcp\n      fall: 0\n"), "bascule.yaml:10:13: services[0].health_check.fall: 0 is out of range, expected 1..=65535"),
    (Check("      type: tcp\n      path: /x\n"), "bascule.yaml:10:13: services[0].health_check.path: only used with type http_get or ssl_get, not tcp"),
    (Check("      type: misc\n"), "bascule.yaml:9:7: services[0].health_check: missing required key \"command\" (type misc runs it)"),
    (Check("      interval: 1s\n"), "bascule.yaml:9:7: services[0].health_check: missing required key \"type\""),
    // Statuses.
    (Check("      type: http_get\n      expect_status: \"299-200\"\n"), "bascule.yaml:10:22: services[0].health_check.expect_status: \"299-200\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""),
    (Check("      type: http_get\n      expect_status: [200, 700]\n"), "bascule.yaml:10:28: services[0].health_check.expect_status[1]: \"700\" is not valid, expected an HTTP status (100..=599) or a range such as \"200-299\""),
    // Digest and body regex.
    (Check("      type: http_get\n      digest: abc\n"), "bascule.yaml:10:15: services[0].health_check.digest: \"abc\" is not valid, expected an MD5 digest of 32 hex digits (as printed by md5sum)"),
    (Check("      type: http_get\n      method: HEAD\n      digest: 9a0364b9e99bb480dd25e1f0284c8555\n"), "bascule.yaml:11:15: services[0].health_check.digest: a HEAD response has no body to check; use method GET"),
    // TLS keys.
    (Check("      type: http_get\n      sni: www.example.com\n"), "bascule.yaml:10:12: services[0].health_check.sni: only used with type ssl_get, not http_get"),
    (Check("      type: ssl_get\n      sni: 10.0.0.1\n"), "bascule.yaml:10:12: services[0].health_check.sni: \"10.0.0.1\" is not valid, expected a DNS name such as www.example.com"),
    // DNS keys.
    (Check("      type: dns\n      query_type: A\n      expect_answer: www.example.com\n"), "bascule.yaml:11:22: services[0].health_check.expect_answer: \"www.example.com\": query_type A answers an IPv4 address, expected e.g. 192.0.2.1"),
    (Check("      type: dns\n      query_name: a..b\n"), "bascule.yaml:10:19: services[0].health_check.query_name: \"a..b\" is not a valid DNS name (empty label), expected e.g. example.com or ."),
    (Check("      type: dns\n      query_type: AXFR\n"), "bascule.yaml:10:19: services[0].health_check.query_type: \"AXFR\" is not a valid DNS record type, expected one of: A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, ANY"),
    // UDP payloads.
    (Check("      type: udp\n      payload: \"hex:0d0\"\n"), "bascule.yaml:10:16: services[0].health_check.payload: \"hex:0d0\" is not valid (an odd number of hex digits), expected text or hex: followed by hex digits (e.g. hex:0d0a)"),
    // A check needs a port when the service has none.
    (AfterNode("services:\n  - name: web\n    vip: 10.0.0.1\n    port: 0\n    health_check: {type: tcp}\n"), "bascule.yaml:8:19: services[0].health_check: type tcp needs a port but the service's port is 0 (all ports): set health_check.connect_port"),
    (Check("      type: ping\n      connect_port: 80\n"), "bascule.yaml:10:21: services[0].health_check.connect_port: only used with type tcp, http_get, ssl_get, smtp, dns or udp, not ping"),
];

#[test]
fn each_mistake_gives_its_message() {
    let wrong: Vec<String> = CASES
        .iter()
        .filter_map(|(doc, expected)| {
            let got = err(&doc.text());
            (got != *expected).then(|| format!("{doc:?}\n   got: {got}\n  want: {expected}"))
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} cases differ:\n{}",
        wrong.len(),
        CASES.len(),
        wrong.join("\n")
    );
}

/// Messages that end with another library's or the system's words are checked up to them.
#[test]
fn messages_that_quote_the_regex_library_or_the_system() {
    assert!(err(&Check("      type: http_get\n      body_regex: \"(unclosed\"\n").text())
        .starts_with("bascule.yaml:10:19: services[0].health_check.body_regex: \"(unclosed\" is not a valid regular expression: "));
    assert!(err(&Check("      type: ssl_get\n      ca_file: /nonexistent/ca.pem\n").text())
        .starts_with("bascule.yaml:10:16: services[0].health_check.ca_file: \"/nonexistent/ca.pem\": cannot read it: "));
}
