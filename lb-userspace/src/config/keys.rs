//! The keys each mapping of the file accepts: what the parser checks every mapping against,
//! and, as [`SCHEMA`], what the documentation must describe.

use super::schema::CheckType;

pub(super) const ROOT_KEYS: &[&str] = &[
    "node",
    "http",
    "conntrack",
    "services",
    "vrrp",
    "vrrp_scripts",
    "sync_groups",
    "announce",
    "sync",
];
pub(super) const NODE_KEYS: &[&str] = &["interfaces", "tunnel_source", "icmp_echo_rate"];
pub(super) const IFACE_KEYS: &[&str] = &["name", "xdp_mode"];
pub(super) const HTTP_KEYS: &[&str] = &["listen", "token_file"];
pub(super) const CONNTRACK_KEYS: &[&str] = &[
    "max_entries",
    "tcp_timeout",
    "udp_timeout",
    "flood_protection",
];
pub(super) const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "vips",
    "port",
    "ports",
    "protocol",
    "scheduler",
    "forwarding",
    "persistence",
    "sorry_server",
    "maglev_table_size",
    "backends",
    "health_check",
];
pub(super) const BACKEND_KEYS: &[&str] = &[
    "address",
    "port",
    "weight",
    "forwarding",
    "max_connections",
    "min_connections",
];
pub(super) const CHECK_KEYS: &[&str] = &[
    "type",
    "connect_port",
    "interval",
    "timeout",
    "rise",
    "fall",
    "retries",
    "delay_before_retry",
    "inhibit_on_failure",
    "initial_state",
    "method",
    "path",
    "virtualhost",
    "expect_status",
    "body_regex",
    "digest",
    "sni",
    "ca_file",
    "helo_name",
    "query_name",
    "query_type",
    "expect_rcode",
    "expect_answer",
    "payload",
    "expect",
    "require_reply",
    "command",
    "dynamic",
];
/// Keys that only some check types use, with the types (named as in messages).
pub(super) const CHECK_KEYS_BY_TYPE: &[(&str, &[CheckType], &str)] = &[
    (
        "connect_port",
        &[
            CheckType::Tcp,
            CheckType::HttpGet,
            CheckType::SslGet,
            CheckType::Smtp,
            CheckType::Dns,
            CheckType::Udp,
        ],
        "tcp, http_get, ssl_get, smtp, dns or udp",
    ),
    ("method", HTTP_CHECKS, "http_get or ssl_get"),
    ("path", HTTP_CHECKS, "http_get or ssl_get"),
    ("virtualhost", HTTP_CHECKS, "http_get or ssl_get"),
    ("expect_status", HTTP_CHECKS, "http_get or ssl_get"),
    ("body_regex", HTTP_CHECKS, "http_get or ssl_get"),
    ("digest", HTTP_CHECKS, "http_get or ssl_get"),
    ("sni", &[CheckType::SslGet], "ssl_get"),
    ("ca_file", &[CheckType::SslGet], "ssl_get"),
    ("helo_name", &[CheckType::Smtp], "smtp"),
    ("query_name", &[CheckType::Dns], "dns"),
    ("query_type", &[CheckType::Dns], "dns"),
    ("expect_rcode", &[CheckType::Dns], "dns"),
    ("expect_answer", &[CheckType::Dns], "dns"),
    ("payload", &[CheckType::Udp], "udp"),
    ("expect", &[CheckType::Udp], "udp"),
    ("require_reply", &[CheckType::Udp], "udp"),
    ("command", &[CheckType::Misc], "misc"),
    ("dynamic", &[CheckType::Misc], "misc"),
];
pub(super) const HTTP_CHECKS: &[CheckType] = &[CheckType::HttpGet, CheckType::SslGet];
pub(super) const VRRP_KEYS: &[&str] = &[
    "name",
    "interface",
    "virtual_router_id",
    "priority",
    "version",
    "advert_interval",
    "preempt",
    "preempt_delay",
    "authentication",
    "unicast_peers",
    "virtual_addresses",
    "garp",
    "track_interfaces",
    "track_scripts",
    "notify",
];
pub(super) const AUTH_KEYS: &[&str] = &["type", "password"];
pub(super) const GARP_KEYS: &[&str] = &["repeat", "interval", "refresh"];
pub(super) const NOTIFY_KEYS: &[&str] = &["master", "backup", "fault"];
pub(super) const ANNOUNCE_KEYS: &[&str] = &["table", "protocol", "withdraw_grace", "vips"];
pub(super) const SCRIPT_KEYS: &[&str] = &[
    "name", "script", "interval", "timeout", "weight", "rise", "fall",
];
pub(super) const SYNC_GROUP_KEYS: &[&str] = &["name", "instances"];
pub(super) const SYNC_KEYS: &[&str] = &["peers", "port", "key_file", "group", "interface"];

/// Every mapping of the file with the keys it accepts, named as `docs/configuration.md`
/// heads its sections (`services[].health_check`); `[]` marks a list's items. The parser
/// checks each mapping against these lists (a debug build asserts that it uses no other).
pub const SCHEMA: &[(&str, &[&str])] = &[
    ("(top level)", ROOT_KEYS),
    ("node", NODE_KEYS),
    ("node.interfaces[]", IFACE_KEYS),
    ("http", HTTP_KEYS),
    ("conntrack", CONNTRACK_KEYS),
    ("services[]", SERVICE_KEYS),
    ("services[].backends[]", BACKEND_KEYS),
    ("services[].health_check", CHECK_KEYS),
    ("vrrp[]", VRRP_KEYS),
    ("vrrp[].authentication", AUTH_KEYS),
    ("vrrp[].garp", GARP_KEYS),
    ("vrrp[].notify", NOTIFY_KEYS),
    ("vrrp_scripts[]", SCRIPT_KEYS),
    ("sync_groups[]", SYNC_GROUP_KEYS),
    ("announce", ANNOUNCE_KEYS),
    ("sync", SYNC_KEYS),
];
