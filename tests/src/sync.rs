//! `sync:` in the labs: the shared key file, the `sync:` section of a node's config
//! (unicast peers or a multicast group), and what `GET /api/v1/sync` says was applied.

use std::{
    fmt::Write as _,
    fs,
    net::IpAddr,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// The key every node of a lab reads from `sync.key_file`.
pub const KEY: &[u8] = b"a secret shared by the LB nodes only";

/// How the nodes of a lab reach each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// `sync.peers`: each node names the others.
    Unicast,
    /// `sync.group` joined on `sync.interface` (`eth0` in the labs): one section for all.
    Multicast(IpAddr),
}

/// Writes [`KEY`] to `sync.key` in `dir`, readable by its owner only (as bascule demands).
pub fn write_key(dir: &Path) -> Result<PathBuf> {
    let key = dir.join("sync.key");
    fs::write(&key, [KEY, b"\n"].concat())
        .with_context(|| format!("cannot write {}", key.display()))?;
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600))?;
    Ok(key)
}

/// The `sync:` section of a node whose peers are `peers` (unused with a group).
pub fn section(transport: Transport, peers: &[IpAddr], key: &Path) -> String {
    let mut yaml = String::from("sync:\n");
    match transport {
        Transport::Unicast => {
            let list: Vec<String> = peers.iter().map(IpAddr::to_string).collect();
            let _ = writeln!(yaml, "  peers: [{}]", list.join(", "));
        }
        Transport::Multicast(group) => {
            let _ = write!(yaml, "  group: {group}\n  interface: eth0\n");
        }
    }
    let _ = writeln!(yaml, "  key_file: {}", key.display());
    yaml
}

/// Entries a node has applied, from its `GET /api/v1/sync` body.
pub fn applied(status_body: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(status_body).ok()?;
    v["applied"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_name_the_peers_or_the_group() {
        let key = Path::new("/lab/sync.key");
        let peers: Vec<IpAddr> = vec!["10.0.0.3".parse().unwrap(), "10.0.0.4".parse().unwrap()];
        assert_eq!(
            section(Transport::Unicast, &peers, key),
            "sync:\n  peers: [10.0.0.3, 10.0.0.4]\n  key_file: /lab/sync.key\n"
        );
        let group = Transport::Multicast("239.0.0.81".parse().unwrap());
        assert_eq!(
            section(group, &peers, key),
            "sync:\n  group: 239.0.0.81\n  interface: eth0\n  key_file: /lab/sync.key\n"
        );
    }

    #[test]
    fn applied_is_read_from_the_status() {
        assert_eq!(applied(r#"{"peers":[],"sent":3,"applied":28}"#), Some(28));
        assert_eq!(applied("not json"), None);
    }
}
