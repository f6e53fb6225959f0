//! The crate's modules import only downwards. Every `crate::<module>` reference under
//! `src/` (in `use` lines, grouped ones included, and in paths in code) is an edge between
//! two top-level modules, checked against the table below; a top-level module the table
//! does not name fails too, so a new module takes its place in the layers deliberately.
//!
//! ```text
//! main (the binary) -> cli -> serve -> control -> datapath, health, vrrp, sync -> plan
//!     -> config -> host, util
//! ```
//!
//! `cli` sits above `serve` because it is the API's client: it speaks the wire types the
//! server defines (`serve::api`). `datapath`, `health`, `vrrp` and `sync` are side by
//! side: none of them imports another. `host` and `util` are leaves: they import nothing of the crate.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

/// Each top-level module of `src/`, top to bottom, with the modules it may import.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "serve", "control", "datapath", "health", "vrrp", "sync", "plan", "config", "announce",
            "host", "util",
        ],
    ),
    (
        "serve",
        &[
            "control", "datapath", "health", "vrrp", "sync", "plan", "config", "announce", "host",
            "util",
        ],
    ),
    (
        "control",
        &[
            "datapath", "health", "vrrp", "sync", "plan", "config", "announce", "host", "util",
        ],
    ),
    ("datapath", &["plan", "config", "host", "util"]),
    ("health", &["plan", "config", "host", "util"]),
    ("vrrp", &["plan", "config", "host", "util"]),
    ("sync", &["plan", "config", "host", "util"]),
    ("plan", &["config", "host", "util"]),
    ("config", &["host", "util"]),
    ("announce", &[]),
    ("keepalived", &[]),
    ("host", &[]),
    ("util", &[]),
];

#[test]
fn modules_import_only_downwards() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let (modules, aliases) = crate_root(&lib);
    let table: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut problems = Vec::new();
    for m in &modules {
        if !table.contains_key(m.as_str()) {
            problems.push(format!(
                "src/lib.rs: module {m} is missing from the table in tests/layering.rs: give it its place in the layers"
            ));
        }
    }
    for m in table.keys() {
        if !modules.iter().any(|d| d == m) {
            problems.push(format!(
                "tests/layering.rs: the table names {m}, which src/lib.rs does not declare"
            ));
        }
    }
    for file in rust_files(&src) {
        let rel = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        // The binary is the top: it uses the library as `bascule::`, not `crate::`.
        if rel == "main.rs" || rel == "lib.rs" {
            continue;
        }
        let from = rel
            .split('/')
            .next()
            .unwrap()
            .trim_end_matches(".rs")
            .to_string();
        let text = fs::read_to_string(&file).unwrap();
        for (to, line) in crate_references(&text) {
            let to = aliases.get(&to).cloned().unwrap_or(to);
            if to == from {
                continue;
            }
            let may = |a: &str, b: &str| table.get(a).is_some_and(|allowed| allowed.contains(&b));
            if !table.contains_key(to.as_str()) {
                problems.push(format!(
                    "src/{rel}:{line}: {from} imports {to}, which is not in the table"
                ));
            } else if !may(&from, &to) {
                let where_ = if may(&to, &from) {
                    "above it"
                } else {
                    "beside it"
                };
                problems.push(format!(
                    "src/{rel}:{line}: {from} imports {to}, which is {where_}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "imports against the layers:\n{}",
        problems.join("\n")
    );
}

/// The modules `lib.rs` declares, and the names it re-exports at the crate root
/// (`pub use util::cores;` makes `crate::cores` a path into `util`).
fn crate_root(lib: &str) -> (Vec<String>, BTreeMap<String, String>) {
    let code = blank_comments_and_strings(lib);
    let mut modules = Vec::new();
    let mut aliases = BTreeMap::new();
    for line in code.lines().map(str::trim) {
        let line = line.strip_prefix("pub ").unwrap_or(line);
        if let Some(name) = line.strip_prefix("mod ").and_then(|l| l.strip_suffix(';')) {
            modules.push(name.trim().to_string());
        } else if let Some(path) = line.strip_prefix("use ").and_then(|l| l.strip_suffix(';')) {
            let parts: Vec<&str> = path.split("::").map(str::trim).collect();
            if let (Some(first), Some(last)) = (parts.first(), parts.last()) {
                aliases.insert(last.to_string(), first.to_string());
            }
        }
    }
    (modules, aliases)
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Every `crate::<module>` reference of `text`: the module, and the line it is named on.
/// `use crate::{a, b::{c, d}}` names `a` and `b`, each on its own line.
fn crate_references(text: &str) -> Vec<(String, usize)> {
    let code = blank_comments_and_strings(text);
    let bytes = code.as_bytes();
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let ident_at = |at: usize| -> Option<(String, usize)> {
        let start = skip_space(bytes, at);
        let end = start
            + bytes[start..]
                .iter()
                .take_while(|b| b.is_ascii_alphanumeric() || **b == b'_')
                .count();
        (end > start).then(|| (code[start..end].to_string(), start))
    };
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = code[from..].find("crate::") {
        let at = from + found;
        from = at + "crate::".len();
        let before = at.checked_sub(1).map(|i| bytes[i]);
        if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b':')
        {
            continue;
        }
        let next = skip_space(bytes, from);
        if bytes.get(next) != Some(&b'{') {
            if let Some((name, start)) = ident_at(next) {
                out.push((name, line_of(start)));
            }
            continue;
        }
        // A group: the first name of each item at its top level.
        let (mut depth, mut i, mut item_start) = (0usize, next, true);
        while i < bytes.len() {
            match bytes[i] {
                b'{' => {
                    depth += 1;
                    item_start = depth == 1;
                }
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => item_start = true,
                b if item_start && !b.is_ascii_whitespace() => {
                    item_start = false;
                    if let Some((name, start)) = ident_at(i) {
                        if name != "self" {
                            out.push((name, line_of(start)));
                        }
                    }
                }
                _ => {}
            }
            i += 1;
        }
        from = i;
    }
    out
}

fn skip_space(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && bytes[at].is_ascii_whitespace() {
        at += 1;
    }
    at
}

/// `text` with its comments, string and character literals turned to spaces (newlines
/// kept, so lines still count): a path named in a doc comment or a message is no import.
fn blank_comments_and_strings(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out: Vec<char> = b.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let rest = |k: usize| b.get(i + k).copied();
        if b[i] == '/' && rest(1) == Some('/') {
            let end = (i..b.len()).find(|&k| b[k] == '\n').unwrap_or(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == '/' && rest(1) == Some('*') {
            let end = (i + 2..b.len().saturating_sub(1))
                .find(|&k| b[k] == '*' && b[k + 1] == '/')
                .map_or(b.len(), |k| k + 2);
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == 'r'
            && (rest(1) == Some('"') || rest(1) == Some('#'))
            && (i == 0 || !(b[i - 1].is_alphanumeric() || b[i - 1] == '_'))
        {
            let hashes = b[i + 1..].iter().take_while(|&&c| c == '#').count();
            if b.get(i + 1 + hashes) != Some(&'"') {
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let body = i + 2 + hashes;
            let end = (body..b.len())
                .find(|&k| b[k..].starts_with(&close))
                .map_or(b.len(), |k| k + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == '"' {
            let mut k = i + 1;
            while k < b.len() && b[k] != '"' {
                k += if b[k] == '\\' { 2 } else { 1 };
            }
            let end = (k + 1).min(b.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == '\'' {
            // A character literal ('x', '\n', '\''), not a lifetime ('a).
            let end = if rest(1) == Some('\\') {
                (i + 2..b.len())
                    .find(|&k| b[k] == '\'' && k > i + 2)
                    .map(|k| k + 1)
            } else if rest(2) == Some('\'') {
                Some(i + 3)
            } else {
                None
            };
            match end {
                Some(end) => {
                    blank(&mut out, i, end);
                    i = end;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    out.into_iter().collect()
}

#[test]
fn references_are_read_from_uses_groups_and_paths_only() {
    let text = r#####"
use crate::{
    config::{Config, Service},
    host,
    plan::{self, Plan},
};
use crate::util::cores;
use super::{x, y};
pub(crate) fn f<'a>(s: &'a str) -> char {
    // crate::serve in a comment
    /* crate::cli in a block comment */
    let _ = "crate::control in a string";
    let _ = r#"crate::datapath in a raw string"#;
    let _ = crate::health::check(s);
    macro_rules! m { () => { $crate::vrrp::x() } }
    '"'
}
"#####;
    let found: Vec<(String, usize)> = crate_references(text);
    let want = [
        ("config", 3),
        ("host", 4),
        ("plan", 5),
        ("util", 7),
        ("health", 14),
    ];
    assert_eq!(
        found,
        want.iter()
            .map(|(m, l)| (m.to_string(), *l))
            .collect::<Vec<_>>()
    );
}

#[test]
fn the_crate_root_declares_modules_and_aliases() {
    let (modules, aliases) =
        crate_root("//! doc\npub mod cli;\nmod util;\n// mod gone;\npub use util::cores;\n");
    assert_eq!(modules, ["cli", "util"]);
    assert_eq!(aliases.get("cores").map(String::as_str), Some("util"));
}
