//! The configuration file: the YAML schema of product.md, its parsing and validation.
//!
//! Parsing has two layers. serde-saphyr reads the YAML into a private tree of
//! [`serde_saphyr::Spanned`] nodes (every key and value keeps its line and column); a
//! hand-written conversion then walks that tree into the public types, so every error,
//! whether a wrong type, an unknown key or a semantic rule, is reported as
//! `FILE:LINE:COLUMN: path.to.key: message` with the path and the position of the offending
//! key or value. The public types are plain data; positions needed after parsing (for
//! [`Config::unsupported`]) live in the opaque [`Origin`] table inside [`Config`].
//!
//! Conventions: unknown keys are errors; a key given as `~` (null) counts as absent;
//! durations are strings such as `100ms`, `1s`, `1m30s`, `1.5s` (units `us`, `ms`, `s`, `m`,
//! `h`, `d`; a bare `0` is also accepted, any other number needs a unit).
//!
//! Files: `schema.rs` the public types; `keys.rs` the keys each mapping accepts
//! ([`SCHEMA`]); `keywords.rs` the names of enum values; `units.rs` durations and payloads;
//! `yaml.rs` the tree, paths and the structural readers; `scalars.rs` the readers of single
//! values; `convert.rs` the root and the small sections; `services.rs` (with `endpoints.rs`, a
//! service's addresses and ports), `health_check.rs`,
//! `vrrp.rs`, `announce.rs`, `sync.rs` their sections; `tracking.rs` the VRRP scripts, the sync groups
//! and what ties them to instances; `errors.rs` [`ConfigError`]; `unsupported.rs` and
//! `host_checks.rs` the checks of a parsed configuration against this build and this node;
//! `chunked.rs` the parse service by service.

mod announce;
mod chunked;
mod convert;
mod endpoints;
mod errors;
mod health_check;
mod host_checks;
mod keys;
mod keywords;
mod scalars;
mod schema;
mod services;
mod sync;
mod tracking;
mod units;
mod unsupported;
mod vrrp;
mod yaml;

#[cfg(test)]
mod tests;

pub use chunked::ParseCache;
pub use errors::ConfigError;
pub use host_checks::HostFacts;
pub use keys::SCHEMA;
pub use schema::SyncMulticast;
pub use schema::{
    Announce, Backend, CheckType, Config, Conntrack, DnsRcode, DnsType, Forwarding, Garp,
    HealthCheck, Http, HttpMethod, InitialState, Interface, IpPrefix, Node, Notify, Origin,
    Protocol, Scheduler, Service, StateSync, StatusRange, SyncGroup, VrrpAuth, VrrpAuthType,
    VrrpInstance, VrrpScript, XdpMode, DEFAULT_ANNOUNCE_PROTOCOL, DEFAULT_ANNOUNCE_TABLE,
    DEFAULT_HTTP_LISTEN, DEFAULT_MAGLEV_TABLE_SIZE, DEFAULT_SYNC_PORT,
};
pub use units::{format_bytes, format_duration, parse_bytes, parse_duration};

use convert::Cx;
use errors::cx_error;
use yaml::{pos_of, read_yaml};

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &std::path::Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = read_config(path, &name)?;
        Config::parse(&text, &name)
    }

    /// Parses and validates a configuration; `file_name` is used in error messages.
    /// Returns the first error (in file order).
    ///
    /// A large file is parsed service by service on every core when its layout allows it
    /// (see `config/chunked.rs`: same result, same errors).
    pub fn parse(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        match chunked::parse(text, file_name, None) {
            Some(config) => Ok(config),
            None => Config::parse_whole(text, file_name),
        }
    }

    /// Like [`Config::parse`], reusing the services of `cache` whose text did not change
    /// (a reload parses what changed). On success `cache` holds this file's services; on
    /// error it is left as it was.
    pub fn parse_cached(
        text: &str,
        file_name: &str,
        cache: &mut ParseCache,
    ) -> Result<Config, ConfigError> {
        match chunked::parse(text, file_name, Some(cache)) {
            Some(config) => Ok(config),
            None => Config::parse_whole(text, file_name),
        }
    }

    /// Reads `path` and parses it with [`Config::parse_cached`].
    pub fn load_cached(
        path: &std::path::Path,
        cache: &mut ParseCache,
    ) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let text = read_config(path, &name)?;
        Config::parse_cached(&text, &name, cache)
    }

    /// The whole file in one parse (what the chunked parse must equal).
    fn parse_whole(text: &str, file_name: &str) -> Result<Config, ConfigError> {
        Config::parse_all(text, file_name).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Config::parse`], but returns every error found (sorted by position, never
    /// empty). A YAML syntax error stops parsing, so it comes alone.
    pub fn parse_all(text: &str, file_name: &str) -> Result<Config, Vec<ConfigError>> {
        let root = read_yaml(text, file_name).map_err(|e| vec![e])?;
        let mut cx = Cx {
            text,
            file: file_name,
            errors: Vec::new(),
            interfaces: Vec::new(),
        };
        let config = cx.root(&root);
        if let Some(c) = &config {
            cx.check_announce(c);
        }
        match config {
            Some(c) if cx.errors.is_empty() => Ok(c),
            _ => {
                let mut errors = cx.errors;
                if errors.is_empty() {
                    // Cannot happen: every failed conversion records an error.
                    errors.push(cx_error(file_name, pos_of(&root), "invalid configuration"));
                }
                errors.sort_by_key(|e| (e.line, e.column));
                Err(errors)
            }
        }
    }
}

fn read_config(path: &std::path::Path, name: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: name.to_owned(),
        line: 0,
        column: 0,
        message: format!("cannot read the configuration: {e}"),
    })
}
