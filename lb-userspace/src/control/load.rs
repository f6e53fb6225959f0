//! Loading a configuration as the daemon takes it (what this build cannot do yet refused,
//! every error located), and checking it against the node's interfaces.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::{
    config::{Config, HostFacts, ParseCache},
    host,
};

/// The configuration file: the one given, else `/etc/bascule/bascule.yaml`.
pub fn config_path(p: &Option<PathBuf>) -> PathBuf {
    p.clone()
        .unwrap_or_else(|| PathBuf::from("/etc/bascule/bascule.yaml"))
}

/// Loads a config and refuses what this build cannot do yet, with every error located.
pub fn load_config(path: &Path) -> Result<Config> {
    load_config_cached(path, &mut ParseCache::default())
}

/// [`load_config`] reusing (and then holding) the services parsed from the previous file.
pub fn load_config_cached(path: &Path, cache: &mut ParseCache) -> Result<Config> {
    let config = Config::load_cached(path, cache).map_err(|e| anyhow::anyhow!("{e}"))?;
    let unsupported = config.unsupported();
    if !unsupported.is_empty() {
        let lines: Vec<String> = unsupported.iter().map(|e| e.to_string()).collect();
        bail!("{}", lines.join("\n"));
    }
    Ok(config)
}

/// The node's interfaces and their addresses, as `Config::check_host` reads them.
pub fn host_facts() -> Result<HostFacts> {
    Ok(HostFacts {
        interfaces: host::interfaces::addresses_by_interface()?,
    })
}

/// Host checks of a config, as one error listing every problem.
pub fn check_host(config: &Config, host: &HostFacts) -> Result<()> {
    let errors = config.check_host(host);
    if errors.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    bail!("{}", lines.join("\n"))
}
