//! `bascule import-keepalived`: a keepalived.conf (and what it includes) converted into
//! bascule YAML, with every statement that was not mapped, or only approximated, reported
//! as `FILE:LINE: statement: why`.
//!
//! The steps, by file:
//! - reading: [`include`] reads the files (following `include`), [`lexer`] their words,
//!   [`tree`] builds the blocks;
//! - mapping, onto the plain data of [`model`], each finding noted in a [`report::Report`]:
//!   [`convert`] (the top level, `global_defs`, what needs the whole file); [`vrrp`],
//!   [`vrrp_keys`] and [`vrrp_track`] (instances, scripts, sync groups);
//!   [`virtual_server`], [`vs_group`] and [`real_server`] (services and backends);
//!   [`checkers`] and [`check_types`] (health checks); [`values`] (timers, addresses, names);
//! - writing: [`emit`] lays the YAML out, [`yaml`] writes it.
//!
//! A leaf: it uses no other module of this crate (the YAML it writes is checked by
//! `bascule check`, in the tests), so the rest of the crate can move around it.

pub mod check_types;
pub mod checkers;
pub mod convert;
pub mod emit;
pub mod include;
pub mod lexer;
pub mod model;
pub mod real_server;
pub mod report;
pub mod tree;
pub mod values;
pub mod virtual_server;
pub mod vrrp;
pub mod vrrp_keys;
pub mod vrrp_track;
pub mod vs_group;
pub mod yaml;

#[cfg(test)]
mod tests;

use std::{io::Write, path::Path};

pub use report::{Finding, ImportError};

/// Which of the contract's keys the bascule that reads the output accepts. A key it does
/// not accept is written as a YAML comment and reported as not supported yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// Top-level `vrrp_scripts` and each instance's `track_scripts` (keepalived's
    /// `vrrp_script` and `track_script`).
    pub vrrp_scripts: bool,
    /// Top-level `sync_groups` (keepalived's `vrrp_sync_group`).
    pub sync_groups: bool,
    /// A backend's `max_connections` and `min_connections` (`uthreshold`, `lthreshold`).
    pub connection_thresholds: bool,
    /// A service's `vips` and `ports` (`virtual_server_group`); without them a group
    /// becomes one service per address and port.
    pub service_groups: bool,
}

impl Features {
    pub const ALL: Features = Features {
        vrrp_scripts: true,
        sync_groups: true,
        connection_thresholds: true,
        service_groups: true,
    };
    pub const NONE: Features = Features {
        vrrp_scripts: false,
        sync_groups: false,
        connection_thresholds: false,
        service_groups: false,
    };
}

/// What this bascule's configuration reads: the one place to switch a key on when the
/// daemon implements it (then regenerate the golden files: `BASCULE_UPDATE_GOLDEN=1 cargo
/// test -p lb-userspace --test keepalived_import`).
pub const SUPPORTED: Features = Features {
    vrrp_scripts: true,
    sync_groups: true,
    connection_thresholds: true,
    service_groups: true,
};

/// One import's result.
#[derive(Debug)]
pub struct Import {
    pub yaml: String,
    /// `FILE:LINE: statement: why` lines.
    pub report: String,
    pub findings: Vec<Finding>,
}

/// Imports the keepalived configuration at `path` (named as given in findings and
/// comments), following its includes.
pub fn import(path: &Path, features: Features) -> Result<Import, ImportError> {
    let mut sources = report::Sources::default();
    let mut rep = report::Report::default();
    let mut reader = include::Reader {
        sources: &mut sources,
        report: &mut rep,
        tokens: Vec::new(),
    };
    reader.read_file(path, &path.display().to_string())?;
    let tokens = std::mem::take(&mut reader.tokens);
    finish(tokens, sources, rep, features)
}

/// Imports keepalived configuration text named `name`; includes are resolved against the
/// current directory.
pub fn import_str(text: &str, name: &str, features: Features) -> Result<Import, ImportError> {
    let mut sources = report::Sources::default();
    let mut rep = report::Report::default();
    let file = sources.add(name.to_string());
    let mut reader = include::Reader {
        sources: &mut sources,
        report: &mut rep,
        tokens: Vec::new(),
    };
    reader.lex_text(text, file, Path::new(name), 0)?;
    let tokens = std::mem::take(&mut reader.tokens);
    finish(tokens, sources, rep, features)
}

fn finish(
    tokens: Vec<lexer::Token>,
    sources: report::Sources,
    mut rep: report::Report,
    features: Features,
) -> Result<Import, ImportError> {
    let stmts = tree::parse(tokens, &sources)?;
    let model = convert::convert(&stmts, features, &mut rep);
    Ok(Import {
        yaml: emit::document(&model, &sources, features),
        report: rep.render(&sources),
        findings: rep.findings().to_vec(),
    })
}

/// The command: imports `file`, writes the YAML to `output` (standard output by default)
/// and the findings to standard error. `Err` is the message of a file that cannot be read,
/// parsed or written.
pub fn command(file: &Path, output: Option<&Path>) -> Result<(), String> {
    let import = import(file, SUPPORTED).map_err(|e| e.to_string())?;
    match output {
        Some(out) => std::fs::write(out, &import.yaml)
            .map_err(|e| format!("{}: cannot write: {e}", out.display()))?,
        None => std::io::stdout()
            .write_all(import.yaml.as_bytes())
            .map_err(|e| format!("standard output: {e}"))?,
    }
    // The findings are information: a failure to print them does not fail the import.
    let _ = std::io::stderr().write_all(import.report.as_bytes());
    Ok(())
}
