//! Each mapping on small inputs: the YAML written and the findings reported.

use super::{import_str, Features};

fn import_with(text: &str, features: Features) -> (String, String) {
    let i = import_str(text, "t.conf", features).unwrap_or_else(|e| panic!("{e}"));
    (i.yaml, i.report)
}

fn import(text: &str) -> (String, String) {
    import_with(text, Features::NONE)
}

#[track_caller]
fn has(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "missing:\n{needle}\n--- in:\n{haystack}"
    );
}

#[track_caller]
fn lacks(haystack: &str, needle: &str) {
    assert!(
        !haystack.contains(needle),
        "unexpected:\n{needle}\n--- in:\n{haystack}"
    );
}

const INSTANCE: &str = "vrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {\n  10.0.0.100/24\n }\n";

#[test]
fn vrrp_instance_keys() {
    let (yaml, report) = import(
        "vrrp_instance VI_1 {\n state BACKUP\n interface eth0\n virtual_router_id 51\n priority 150\n advert_int 2\n nopreempt\n preempt_delay 30\n authentication {\n  auth_type PASS\n  auth_pass secret\n }\n unicast_peer {\n  10.0.0.3\n }\n virtual_ipaddress {\n  10.0.0.100/24 dev eth0\n  10.0.0.101\n }\n track_interface {\n  eth1\n  eth2 weight 10\n }\n garp_master_repeat 3\n garp_master_refresh 60\n}\n",
    );
    has(
        &yaml,
        "  - name: VI_1\n    interface: eth0\n    virtual_router_id: 51\n    priority: 150\n    version: 2  # keepalived's default\n    advert_interval: 2s  # advert_int 2\n    preempt: false  # nopreempt\n    preempt_delay: 30s\n    authentication:\n      type: pass\n      password: secret\n    unicast_peers: [10.0.0.3]\n    virtual_addresses: [10.0.0.100/24, 10.0.0.101]\n    garp:\n      repeat: 3\n      refresh: 1m\n    track_interfaces: [eth1, eth2]\n",
    );
    has(&yaml, "node:\n  interfaces:\n    - name: eth0\n");
    assert_eq!(
        report,
        "t.conf:22: eth2 weight 10: bascule puts the instance in FAULT while the interface is down; keepalived would change its priority by the weight\n"
    );
}

#[test]
fn state_master_means_priority_255_and_no_nopreempt() {
    let (yaml, report) = import(&format!("{INSTANCE} state MASTER\n nopreempt\n}}\n"));
    has(
        &yaml,
        "    priority: 255  # state MASTER without a priority\n",
    );
    lacks(&yaml, "preempt: false");
    has(
        &report,
        "t.conf:8: nopreempt: keepalived ignores nopreempt with state MASTER: preempt stays on\n",
    );
    let (yaml, report) = import(&format!("{INSTANCE} state MASTER\n priority 150\n}}\n"));
    has(&yaml, "    priority: 150\n");
    has(&report, "t.conf:7: state MASTER: bascule starts in BACKUP");
    let (yaml, _) = import(&format!("{INSTANCE}}}\n"));
    has(&yaml, "    priority: 100  # keepalived's default\n");
}

#[test]
fn authentication_pass_is_cut_to_8_bytes_and_ah_is_left_out() {
    let (yaml, report) = import(&format!(
        "{INSTANCE} authentication {{\n  auth_type PASS\n  auth_pass 0123456789\n }}\n}}\n"
    ));
    has(&yaml, "      password: \"01234567\"\n");
    has(&report, "t.conf:7: authentication: a VRRPv2 advert carries 8 bytes of password: keepalived and bascule both use \"01234567\"\n");
    let (yaml, report) = import(&format!(
        "{INSTANCE} authentication {{\n  auth_type AH\n  auth_pass x\n }}\n}}\n"
    ));
    lacks(&yaml, "authentication");
    has(
        &report,
        "t.conf:8: auth_type AH: bascule does not implement AH authentication: left out",
    );
    let (yaml, report) = import(&format!(
        "{INSTANCE} version 3\n authentication {{\n  auth_type PASS\n  auth_pass x\n }}\n}}\n"
    ));
    lacks(&yaml, "authentication");
    has(
        &report,
        "t.conf:9: auth_type PASS: VRRP version 3 has no authentication",
    );
}

#[test]
fn versions_and_advert_intervals() {
    let (yaml, report) = import(&format!(
        "global_defs {{\n vrrp_version 3\n}}\n{INSTANCE} advert_int 0.25\n}}\n"
    ));
    has(&yaml, "    version: 3  # vrrp_version in global_defs\n    advert_interval: 250ms  # advert_int 0.25\n");
    assert_eq!(report, "");
    let (yaml, report) = import(&format!("{INSTANCE} advert_int 0.5\n}}\n"));
    has(
        &yaml,
        "    version: 2  # keepalived's default\n    advert_interval: 1s  # advert_int 0.5\n",
    );
    has(
        &report,
        "t.conf:7: advert_int 0.5: VRRP version 2 advertises whole seconds up to 255: 1s is used\n",
    );
    let (yaml, _) = import("vrrp_instance V6 {\n interface eth0\n virtual_router_id 5\n virtual_ipaddress {\n  fd00::5/64\n }\n}\n");
    has(&yaml, "    version: 3  # IPv6 uses version 3\n");
    has(&yaml, "    virtual_addresses: [\"fd00::5/64\"]\n");
}

#[test]
fn addresses_of_the_other_family_get_an_instance_of_their_own() {
    let text = "vrrp_instance tic {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress {\n  193.50.27.132/28\n  2001:660:4503::132/64\n }\n virtual_ipaddress_excluded {\n  193.50.27.133/28\n  2001:660:4503::133/64\n }\n}\n";
    let (yaml, report) = import(text);
    has(&yaml, "  - name: tic\n");
    has(
        &yaml,
        "    virtual_addresses: [193.50.27.132/28, 193.50.27.133/28]\n",
    );
    has(&yaml, "  # the IPv6 addresses of vrrp_instance tic\n  - name: tic-v6\n    interface: eth0\n    virtual_router_id: 1\n    priority: 100  # keepalived's default\n    version: 3  # IPv6 uses version 3\n");
    has(
        &yaml,
        "    virtual_addresses: [\"2001:660:4503::132/64\", \"2001:660:4503::133/64\"]\n",
    );
    has(&report, "t.conf:6: 2001:660:4503::132/64: an IPv6 address in an IPv4 instance: keepalived ignores it; bascule gives it to instance tic-v6");
    has(
        &report,
        "t.conf:8: virtual_ipaddress_excluded: bascule advertises every address it holds",
    );
    has(&report, "t.conf:8: virtual_ipaddress_excluded: the IPv6 addresses go to instance tic-v6 of their own");
    // With sync groups, the two halves move as one.
    let (yaml, _) = import_with(text, Features::ALL);
    has(&yaml, "sync_groups:\n  # vrrp_instance tic (t.conf:1)\n  - name: tic\n    instances: [tic, tic-v6]\n");
}

#[test]
fn address_options_and_names() {
    let (yaml, report) = import(
        "vrrp_instance A {\n interface eth0\n virtual_router_id 2\n virtual_ipaddress {\n  10.0.0.1/24 dev eth1 label eth1:vip brd 10.0.0.255\n  vip.example.com\n  ...\n }\n}\n",
    );
    has(&yaml, "    virtual_addresses: [10.0.0.1/24]\n");
    has(&report, "t.conf:5: 10.0.0.1/24 dev eth1 label eth1:vip brd 10.0.0.255: bascule adds the address with its prefix only: label eth1:vip, brd 10.0.0.255 left out\n");
    has(&report, "t.conf:5: 10.0.0.1/24 dev eth1 label eth1:vip brd 10.0.0.255: bascule adds every address on the instance's interface eth0, not on eth1\n");
    has(&report, "t.conf:6: vip.example.com: a name, not an address: import-keepalived does not resolve names; left out\n");
    has(
        &report,
        "t.conf:7: ...: expected an ADDRESS or ADDRESS/PREFIX: left out\n",
    );
}

#[test]
fn an_instance_without_its_required_keys_is_left_out() {
    let (yaml, report) = import("vrrp_instance iwash1 {\n priority 150\n virtual_ipaddress {\n  ...\n }\n}\nvirtual_server 10.10.10.10 3128 {\n protocol TCP\n}\n");
    lacks(&yaml, "vrrp:");
    has(&yaml, "    - name: EDIT-ME\n");
    has(&report, "t.conf:1: vrrp_instance iwash1: no interface, virtual_router_id, virtual_ipaddress (bascule requires them): the instance is left out\n");
    has(&report, "t.conf:7: virtual_server 10.10.10.10 3128: no vrrp_instance names an interface: node.interfaces is the placeholder EDIT-ME");
}

#[test]
fn notify_commands_keep_keepalived_s_arguments() {
    let (yaml, _) = import(&format!("{INSTANCE} notify /etc/k/notify.sh\n}}\n"));
    has(&yaml, "    notify:\n      master: /etc/k/notify.sh\n      backup: /etc/k/notify.sh\n      fault: /etc/k/notify.sh\n");
    let (yaml, report) = import(&format!(
        "{INSTANCE} notify_master \"/usr/bin/systemctl start haproxy\" root\n notify_fault \"/bin/alert &\"\n notify /etc/k/all.sh\n notify_stop /bin/x\n}}\n"
    ));
    has(&yaml, "      master: \"/usr/bin/systemctl start haproxy; /etc/k/all.sh\"\n      backup: /etc/k/all.sh\n      fault: \"/bin/alert & /etc/k/all.sh\"\n");
    has(&report, "t.conf:7: notify_master \"/usr/bin/systemctl start haproxy\" root: bascule runs notify commands as its own user");
    has(&report, "t.conf:10: notify_stop /bin/x: bascule runs commands on MASTER, BACKUP and FAULT only: left out\n");
    let (yaml, _) = import(&format!(
        "{INSTANCE} notify_master \"/bin/alert &\"\n notify_backup /bin/b\n}}\n"
    ));
    has(&yaml, "    # keepalived runs notify_master/backup/fault without arguments: \"; :\" takes the four bascule adds\n    notify:\n      master: \"/bin/alert & :\"\n      backup: \"/bin/b; :\"\n");
}

const SCRIPTS: &str = "vrrp_script chk_haproxy {\n script \"/usr/bin/killall -0 haproxy\"\n interval 2\n weight -20\n rise 2\n}\nvrrp_instance VI_1 {\n interface eth0\n virtual_router_id 51\n virtual_ipaddress {\n  10.0.0.100/24\n }\n track_script {\n  chk_haproxy\n  chk_other weight 5\n }\n}\n";

#[test]
fn vrrp_scripts_behind_the_switch() {
    let (yaml, report) = import_with(SCRIPTS, Features::ALL);
    has(&yaml, "    track_scripts: [chk_haproxy]\n");
    has(&yaml, "vrrp_scripts:\n  # vrrp_script chk_haproxy (t.conf:1)\n  - name: chk_haproxy\n    script: \"/usr/bin/killall -0 haproxy\"\n    interval: 2s\n    timeout: 2s\n    weight: -20\n    rise: 2\n    fall: 1\n");
    assert_eq!(report, "t.conf:15: chk_other weight 5: the contract's track_scripts take the script's own weight: this instance's weight is left out\nt.conf:15: chk_other weight 5: no vrrp_script of that name: left out\n");
    let (yaml, report) = import(SCRIPTS);
    has(&yaml, "    # track_scripts: not supported by this bascule yet (the contract's key, kept for when it is)\n    # track_scripts: [chk_haproxy]\n");
    has(
        &yaml,
        "# vrrp_scripts:\n#   # vrrp_script chk_haproxy (t.conf:1)\n#   - name: chk_haproxy\n",
    );
    has(&report, "t.conf:1: vrrp_script chk_haproxy: not supported by this bascule yet: written as a YAML comment\n");
    has(&report, "t.conf:14: chk_haproxy: not supported by this bascule yet: the instance does not follow the script");
}

#[test]
fn sync_groups_behind_the_switch() {
    let text = format!("vrrp_sync_group G {{\n group {{\n  VI_1\n  VI_9\n }}\n notify_master /bin/x\n}}\n{INSTANCE}}}\n");
    let (yaml, report) = import_with(&text, Features::ALL);
    has(
        &yaml,
        "sync_groups:\n  # vrrp_sync_group G (t.conf:1)\n  - name: G\n    instances: [VI_1]\n",
    );
    has(
        &report,
        "t.conf:4: VI_9: no vrrp_instance VI_9 was imported: left out of the group\n",
    );
    has(
        &report,
        "t.conf:6: notify_master /bin/x: the contract's sync_groups run no commands",
    );
    let (yaml, report) = import(&text);
    has(
        &yaml,
        "# sync_groups:\n#   # vrrp_sync_group G (t.conf:1)\n#   - name: G\n",
    );
    has(&report, "t.conf:1: vrrp_sync_group G: not supported by this bascule yet: its instances fail over independently");
}

#[test]
fn virtual_server_defaults_are_keepalived_s() {
    let (yaml, report) = import("virtual_server 10.0.0.1 0 {\n real_server 10.0.0.11 {\n }\n}\n");
    has(&yaml, "  - name: vs-10.0.0.1-0-udp\n    vip: 10.0.0.1\n    port: 0\n    protocol: udp  # keepalived's default when none is given\n    scheduler: wlc  # keepalived's default\n    forwarding: nat  # keepalived's default (NAT)\n    persistence: 6m  # keepalived's for a port-0 service\n");
    has(&report, "t.conf:1: virtual_server 10.0.0.1 0: no protocol: keepalived uses UDP (and warns), so does this import");
}

#[test]
fn virtual_server_keys() {
    let (yaml, report) = import(
        "virtual_server 10.0.0.1 80 {\n protocol TCP\n lb_algo mh\n lb_kind DR\n persistence_timeout 600\n sorry_server 10.0.0.250 8080\n quorum 2\n hysteresis 1\n ha_suspend\n real_server 10.0.0.11 80 {\n  weight 70000\n }\n real_server 10.0.0.12 8080 {\n  weight 0\n  lvs_method TUN\n }\n real_server www.example.com 80 {\n }\n real_server fd00::1 80 {\n }\n}\nvirtual_server fwmark 7 {\n}\n",
    );
    has(&yaml, "    scheduler: mh  # lb_algo mh\n    forwarding: dr  # lb_kind DR\n    persistence: 10m  # persistence_timeout 600\n    sorry_server: \"10.0.0.250:8080\"\n    backends:\n      # real_server 10.0.0.11 80 (t.conf:10)\n      - address: 10.0.0.11\n        weight: 65535\n      # real_server 10.0.0.12 8080 (t.conf:13)\n      - address: 10.0.0.12\n        weight: 0\n        forwarding: tun\n");
    lacks(&yaml, "fd00::1");
    for line in [
        "t.conf:7: quorum 2: bascule has no quorum",
        "t.conf:8: hysteresis 1: bascule has no quorum",
        "t.conf:9: ha_suspend: bascule checks backends whether or not this node holds the address",
        "t.conf:11: weight 70000: bascule's weights go up to 65535: 65535 is used",
        "t.conf:13: real_server 10.0.0.12 8080: IPVS keeps the virtual server's port with DR and TUN",
        "t.conf:17: real_server www.example.com 80: a name, not an address",
        "t.conf:19: real_server fd00::1 80: its address family differs from the virtual server's",
        "t.conf:22: virtual_server fwmark 7: bascule matches addresses and ports, not firewall marks",
    ] {
        has(&report, line);
    }
}

#[test]
fn nat_ports_and_connection_thresholds() {
    let text = "virtual_server 10.0.0.1 8443 {\n protocol TCP\n lb_kind NAT\n real_server 10.1.0.11 443 {\n  uthreshold 500\n  lthreshold 400\n }\n real_server 10.1.0.12 8443 {\n }\n}\n";
    let (yaml, report) = import_with(text, Features::ALL);
    has(&yaml, "      - address: 10.1.0.11\n        port: 443\n        weight: 1\n        max_connections: 500\n        min_connections: 400\n      # real_server 10.1.0.12 8443 (t.conf:8)\n      - address: 10.1.0.12\n        weight: 1\n");
    assert_eq!(report, "t.conf:1: virtual_server 10.0.0.1 8443: no vrrp_instance names an interface: node.interfaces is the placeholder EDIT-ME, replace it with the interface that receives the services' traffic\n");
    let (yaml, report) = import(text);
    has(&yaml, "        # max_connections: not supported by this bascule yet\n        # max_connections: 500\n");
    has(&report, "t.conf:5: uthreshold 500: max_connections is not supported by this bascule yet: written as a YAML comment\n");
}

const GROUP: &str = "virtual_server_group WEB {\n 192.0.2.10-11 80\n 192.0.2.10-11 8000\n 192.0.2.10-11 8001\n 2001:db8::10 80\n fwmark 3\n}\nvirtual_server group WEB {\n protocol TCP\n lb_kind DR\n real_server 192.0.2.101 {\n  TCP_CHECK {\n   connect_port 80\n  }\n }\n}\n";

#[test]
fn virtual_server_groups_behind_the_switch() {
    let (yaml, report) = import(GROUP);
    for name in [
        "WEB-192.0.2.10-80",
        "WEB-192.0.2.11-80",
        "WEB-192.0.2.10-8000",
        "WEB-192.0.2.11-8001",
        "WEB-2001-db8--10-80",
    ] {
        has(&yaml, &format!("  - name: {name}\n"));
    }
    has(
        &report,
        "t.conf:6: fwmark 3: bascule matches addresses and ports, not firewall marks: left out\n",
    );
    has(&report, "t.conf:8: virtual_server group WEB: vips and ports are not supported by this bascule yet: one service per address and port (7 services, each with its own table and counters)\n");
    has(&report, "t.conf:11: real_server 192.0.2.101: its address family differs from the virtual server's, which only tun carries (IPv4 in IPv6): left out of [2001:db8::10]:80\n");
    let (yaml, _) = import_with(GROUP, Features::ALL);
    has(
        &yaml,
        "  - name: WEB\n    vips: [192.0.2.10, 192.0.2.11]\n    ports: [80, 8000-8001]\n",
    );
    has(
        &yaml,
        "  - name: WEB-2\n    vip: \"2001:db8::10\"\n    port: 80\n",
    );
    // The check's port is written: the service has several.
    has(&yaml, "      type: tcp\n      connect_port: 80\n");
}

#[test]
fn a_duplicate_virtual_server_is_reported_once() {
    let vs = "virtual_server 10.0.0.1 80 {\n protocol TCP\n real_server tic 80 {\n }\n}\n";
    let (yaml, report) = import(&format!("{vs}{vs}"));
    assert_eq!(yaml.matches("- name: vs-10.0.0.1-80").count(), 1);
    has(&report, "t.conf:6: virtual_server 10.0.0.1 80: the same address, port and protocol as the virtual_server at line 1: left out\n");
    lacks(&report, "t.conf:8:");
}

fn check_of(real_servers: &str) -> (String, String) {
    import(&format!(
        "virtual_server 10.0.0.1 80 {{\n protocol TCP\n lb_kind DR\n{real_servers}}}\n"
    ))
}

#[test]
fn http_and_ssl_checks() {
    let (yaml, report) = check_of(" delay_loop 6\n real_server 10.0.0.11 80 {\n  SSL_GET {\n   url {\n    path /health?x=1\n    digest 9B3A0C85A887A256D6939DA88AABD8CD\n    status_code 200-299 301 404\n    virtualhost www.example.com\n    regex ^ok\n   }\n   url {\n    path /second\n   }\n   sni_name www.example.com\n   connect_port 8443\n   connect_timeout 2\n   nb_get_retry 2\n   delay_before_retry 0.5\n   bindto 10.0.0.2\n  }\n  TCP_CHECK {\n  }\n }\n");
    has(&yaml, "    health_check:\n      # SSL_GET (t.conf:6)\n      type: ssl_get\n      connect_port: 8443\n      interval: 6s  # delay_loop\n      timeout: 2s  # connect_timeout\n      rise: 1  # keepalived: one success brings a server back\n      fall: 1  # keepalived: one failed check (after its retries) takes it out\n      retries: 2  # retry\n      delay_before_retry: 500ms  # delay_before_retry\n      initial_state: up  # keepalived starts servers up unless alpha\n      path: \"/health?x=1\"\n      virtualhost: www.example.com\n      expect_status: [200-299, 301, 404]\n      body_regex: \"^ok\"\n      digest: 9b3a0c85a887a256d6939da88aabd8cd\n      sni: www.example.com\n");
    has(
        &report,
        "t.conf:14: url: bascule checks one path per backend: this url is left out",
    );
    has(&report, "t.conf:22: bindto 10.0.0.2: bascule checks from the node's own address and a free port: left out\n");
    has(
        &report,
        "t.conf:24: TCP_CHECK: bascule runs one check per backend: this checker is left out",
    );
    let (yaml, _) = check_of(
        " real_server 10.0.0.11 80 {\n  HTTP_GET {\n   url {\n    path /\n   }\n  }\n }\n",
    );
    has(&yaml, "      interval: 1m  # keepalived's default delay_loop\n      timeout: 5s  # keepalived's default connect_timeout\n");
    has(&yaml, "      retries: 1  # keepalived's default retry\n      delay_before_retry: 3s  # keepalived's default delay_before_retry\n");
    has(
        &yaml,
        "      expect_status: 200-299  # keepalived's default: any 2xx\n",
    );
}

#[test]
fn smtp_dns_udp_ping_and_unknown_checks() {
    let (yaml, _) = check_of(
        " real_server 10.0.0.11 25 {\n  SMTP_CHECK {\n   helo_name lb.example.com\n  }\n }\n",
    );
    has(&yaml, "      type: smtp\n      connect_port: 25\n");
    has(&yaml, "      helo_name: lb.example.com\n");
    let (yaml, _) = check_of(" alpha\n real_server 10.0.0.11 80 {\n  DNS_CHECK {\n   type mx\n   name example.com\n  }\n }\n");
    has(&yaml, "      retries: 3  # keepalived's default retry\n      delay_before_retry: 1m  # keepalived's default delay_before_retry\n      initial_state: down  # alpha\n      query_name: example.com\n      query_type: MX\n");
    let (yaml, _) = check_of(" real_server 10.0.0.11 80 {\n  UDP_CHECK {\n   payload Ab12f 3\n   require_reply\n  }\n }\n");
    has(
        &yaml,
        "      payload: \"hex:ab120f03\"\n      require_reply: true\n",
    );
    let (yaml, report) = check_of(" real_server 10.0.0.11 80 {\n  PING_CHECK {\n   connect_port 80\n  }\n  BFD_CHECK {\n  }\n }\n");
    has(&yaml, "      type: ping\n      interval: 1m");
    has(
        &report,
        "t.conf:6: connect_port 80: a PING_CHECK runs no connection of its own: left out\n",
    );
    has(&report, "t.conf:8: BFD_CHECK: bascule has no such check");
}

#[test]
fn misc_checks_share_one_command() {
    let (yaml, report) = check_of(" delay_loop 4\n real_server 10.0.0.11 3306 {\n  MISC_CHECK {\n   misc_path \"/bin/mysql_weight 10.0.0.11 3306\"\n   misc_dynamic\n  }\n }\n real_server 10.0.0.12 3306 {\n  MISC_CHECK {\n   misc_path \"/bin/mysql_weight 10.0.0.12 3306\"\n   misc_dynamic\n   user nobody\n  }\n }\n");
    has(&yaml, "      type: misc\n      interval: 4s  # delay_loop\n      timeout: 4s  # keepalived's default misc_timeout: the virtual server's delay_loop\n      rise: 1");
    has(&yaml, "      retries: 0  # keepalived's default retry\n");
    has(
        &yaml,
        "      command: \"/bin/mysql_weight $BASCULE_BACKEND_ADDRESS 3306\"\n      dynamic: true\n",
    );
    has(
        &report,
        "t.conf:15: user nobody: bascule runs check commands as the user it runs as: left out\n",
    );
    lacks(&report, "MISC_CHECK");
    let (_, report) = check_of(" real_server 10.0.0.11 80 {\n  MISC_CHECK {\n   misc_path /bin/a\n  }\n }\n real_server 10.0.0.12 80 {\n  MISC_CHECK {\n   misc_path /bin/b\n   misc_timeout 3\n  }\n }\n real_server 10.0.0.13 80 {\n }\n");
    has(&report, "t.conf:10: MISC_CHECK: bascule checks every backend of a service alike: this checker differs (timeout, command) from the one of real_server 10.0.0.11 80 at line 5, which is used\n");
    has(&report, "t.conf:15: real_server 10.0.0.13 80: no checker: keepalived keeps it up, bascule checks it as the service's other backends\n");
}

#[test]
fn inherited_settings_follow_keepalived_s_order() {
    // The virtual server's settings may come after its real servers; the checker's win.
    let (yaml, _) = check_of(" real_server 10.0.0.11 80 {\n  retry 4\n  TCP_CHECK {\n   delay_before_retry 2\n  }\n  inhibit_on_failure\n }\n delay_loop 3\n connect_timeout 1\n retry 9\n");
    has(&yaml, "      interval: 3s  # delay_loop\n      timeout: 1s  # connect_timeout\n      rise: 1  # keepalived: one success brings a server back\n      fall: 1  # keepalived: one failed check (after its retries) takes it out\n      retries: 4  # retry\n      delay_before_retry: 2s  # delay_before_retry\n      inhibit_on_failure: true\n");
}

#[test]
fn top_level_and_global_statements() {
    let (yaml, report) = import(
        "global_defs {\n router_id LB1\n vrrp_garp_master_repeat 2\n vrrp_strict\n}\n@lb2 vrrp_instance X {\n}\n$VIP=10.0.0.1\nstatic_routes {\n}\nvrrp_instanse typo {\n}\nSSL {\n ca /etc/ca.pem\n}\n",
    );
    has(&yaml, "    - name: EDIT-ME\n");
    assert_eq!(
        report,
        "t.conf:1: global_defs: no vrrp_instance names an interface: node.interfaces is the placeholder EDIT-ME, replace it with the interface that receives the services' traffic\n\
         t.conf:2: router_id LB1: bascule has no router id (instances and services are named in the file): left out\n\
         t.conf:4: vrrp_strict: bascule adds no firewall rules and accepts unicast peers and pass authentication: left out\n\
         t.conf:6: @lb2 vrrp_instance X: conditional configuration (@ID) is not evaluated: left out\n\
         t.conf:8: $VIP=10.0.0.1: keepalived parameters ($NAME) are not expanded: left out\n\
         t.conf:9: static_routes: static addresses, routes and rules are the system's network configuration, not bascule's: left out\n\
         t.conf:11: vrrp_instanse typo: unknown top-level block: left out\n\
         t.conf:13: SSL: bascule's ssl_get sends no client certificate; to verify the backends' certificates set health_check.ca_file: left out\n"
    );
}

#[test]
fn names_are_made_valid_and_unique() {
    let (yaml, _) = import(
        "vrrp_instance \"VI 1\" {\n interface eth0\n virtual_router_id 1\n virtual_ipaddress {\n  10.0.0.1\n }\n}\nvrrp_instance VI_1 {\n interface eth0\n virtual_router_id 2\n virtual_ipaddress {\n  10.0.0.2\n }\n}\nvirtual_server 10.0.0.1 80 {\n protocol TCP\n snmp_name web\n}\nvirtual_server 10.0.0.2 80 {\n protocol TCP\n snmp_name web\n}\n",
    );
    has(
        &yaml,
        "  - name: VI_1\n    interface: eth0\n    virtual_router_id: 1\n",
    );
    has(
        &yaml,
        "  - name: VI_1-2\n    interface: eth0\n    virtual_router_id: 2\n",
    );
    has(&yaml, "  - name: web\n    vip: 10.0.0.1\n");
    has(&yaml, "  - name: web-2\n    vip: 10.0.0.2\n");
}

#[test]
fn thresholds_read_as_ipvs_does_and_nat_over_several_ports_keeps_the_port() {
    let text = "virtual_server_group G {\n 10.0.0.1 80\n 10.0.0.1 81\n 10.0.0.2\n}\nvirtual_server group G {\n protocol TCP\n lb_kind NAT\n real_server 10.1.0.11 8080 {\n  uthreshold 0\n  lthreshold 5\n }\n real_server 10.1.0.12 8080 {\n  uthreshold 10\n  lthreshold 20\n }\n}\n";
    let (yaml, report) = import_with(text, Features::ALL);
    // Port 0 (every port) is a service of its own beside the group's ports.
    has(
        &yaml,
        "  - name: G\n    vip: 10.0.0.1\n    ports: [80-81]\n",
    );
    has(&yaml, "  - name: G-2\n    vip: 10.0.0.2\n    port: 0\n");
    // uthreshold 0 is no threshold; an lthreshold above the uthreshold is IPVS's effect.
    has(
        &yaml,
        "      - address: 10.1.0.11\n        weight: 1\n      # real_server",
    );
    has(
        &yaml,
        "        max_connections: 10\n        min_connections: 10\n",
    );
    has(&report, "t.conf:11: lthreshold 5: an lthreshold without uthreshold has no effect (in IPVS either): left out\n");
    has(
        &report,
        "t.conf:15: lthreshold 20: above uthreshold (10): min_connections is 10",
    );
    has(&report, "t.conf:9: real_server 10.1.0.11 8080: NAT keeps the client's destination port on a service of several ports (IPVS rewrote each to the real server's): the real server's port is left out\n");
    lacks(&yaml, "port: 8080");
}
