//! The YAML tree (serde-saphyr, every node with its position), paths such as
//! `services[1].backends[0]`, and the converter's structural readers: a mapping checked
//! against its keys (unknown and repeated keys, "did you mean"), required and optional keys,
//! lists.

use std::fmt;

use serde_saphyr::Spanned;

use super::convert::Cx;
use super::errors::{cx_error, ConfigError};
use super::keys::SCHEMA;

/// A position in the file, 1-based (0 for a config built in code).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Pos {
    pub(super) line: u32,
    pub(super) column: u32,
}

/// A YAML node with its position.
pub(super) type Y = Spanned<Raw>;

pub(super) enum Raw {
    Null,
    Bool(bool),
    Int(i128),
    Float(f64),
    Str(String),
    Seq(Vec<Y>),
    Map(Vec<(Y, Y)>),
}

impl<'de> serde::Deserialize<'de> for Raw {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Raw, D::Error> {
        use serde::de::{MapAccess, SeqAccess, Visitor};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, v: bool) -> Result<Raw, E> {
                Ok(Raw::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Raw, E> {
                Ok(Raw::Int(v.into()))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Raw, E> {
                Ok(Raw::Int(v))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Raw, E> {
                Ok(i128::try_from(v).map_or(Raw::Float(v as f64), Raw::Int))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Raw, E> {
                Ok(Raw::Float(v))
            }
            fn visit_str<E>(self, v: &str) -> Result<Raw, E> {
                Ok(Raw::Str(v.to_owned()))
            }
            fn visit_string<E>(self, v: String) -> Result<Raw, E> {
                Ok(Raw::Str(v))
            }
            fn visit_unit<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_none<E>(self) -> Result<Raw, E> {
                Ok(Raw::Null)
            }
            fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                <Raw as serde::Deserialize>::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(item) = a.next_element()? {
                    v.push(item);
                }
                Ok(Raw::Seq(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Raw, A::Error> {
                let mut v = Vec::new();
                while let Some(entry) = a.next_entry()? {
                    v.push(entry);
                }
                Ok(Raw::Map(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// The deepest nesting of a configuration file.
const MAX_DEPTH: usize = 24;

pub(super) fn read_yaml(text: &str, file: &str) -> Result<Y, ConfigError> {
    let mut budget = serde_saphyr::Budget::default();
    // The file is the operator's own; allow large configurations (1,000 services x 100
    // backends is about 600,000 nodes), keep the depth and alias limits.
    budget.max_nodes = 50_000_000;
    budget.max_events = 100_000_000;
    // A configuration nests 7 levels at most (services, a service, its health check, its
    // expect_status list); parsing recurses once per level, and the parser's defaults (64
    // levels, 255 for [ and {) overflow a 2 MiB thread's stack (the controller's, which
    // reloads) in a debug build.
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    // Every entry reaches the tree, so duplicates are reported with their path below.
    options.duplicate_keys = serde_saphyr::DuplicateKeyPolicy::PassThrough;
    serde_saphyr::from_str_with_options::<Y>(text, options).map_err(|e| {
        let pos = e
            .location()
            .filter(|l| l.line() > 0)
            .map_or(Pos { line: 1, column: 1 }, |l| Pos {
                line: l.line() as u32,
                column: l.column() as u32,
            });
        let raw =
            serde_saphyr::MessageFormatter::format_message(&serde_saphyr::UserMessageFormatter, &e);
        let msg: String = raw
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        cx_error(file, pos, &format!("invalid YAML: {msg}"))
    })
}

pub(super) fn pos_of(y: &Y) -> Pos {
    Pos {
        line: y.referenced.line() as u32,
        column: y.referenced.column() as u32,
    }
}

/// A path in the document, rendered like `services[1].backends[0].weight`.
#[derive(Clone, Copy)]
pub(super) enum P<'a> {
    Root,
    Key(&'a P<'a>, &'a str),
    Idx(&'a P<'a>, usize),
}

impl P<'_> {
    pub(super) fn is_root(&self) -> bool {
        matches!(self, P::Root)
    }
}

impl fmt::Display for P<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            P::Root => Ok(()),
            P::Key(parent, k) if parent.is_root() => f.write_str(k),
            P::Key(parent, k) => write!(f, "{parent}.{k}"),
            P::Idx(parent, i) => write!(f, "{parent}[{i}]"),
        }
    }
}

/// A mapping whose keys have been checked against the schema.
pub(super) struct Obj<'y> {
    pub(super) pos: Pos,
    pub(super) entries: Vec<(&'y str, &'y Y)>,
}

impl<'y> Obj<'y> {
    /// The value of `key`, `None` when absent or null.
    pub(super) fn opt(&self, key: &str) -> Option<&'y Y> {
        self.entries
            .iter()
            .find(|(k, v)| *k == key && !matches!(v.value, Raw::Null))
            .map(|(_, v)| *v)
    }
    /// Position of the value of `key`, or of the mapping when absent.
    pub(super) fn pos(&self, key: &str) -> Pos {
        self.opt(key).map_or(self.pos, pos_of)
    }
}

/// Edit distance, for "did you mean" on unknown keys.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur.push(sub.min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Position of `key`'s value inside mapping `y`, or of `y` itself.
pub(super) fn o_pos_of_key(y: &Y, key: &str) -> Pos {
    if let Raw::Map(entries) = &y.value {
        for (k, v) in entries {
            if matches!(&k.value, Raw::Str(s) if s == key) {
                return pos_of(v);
            }
        }
    }
    pos_of(y)
}

impl Cx<'_> {
    pub(super) fn err(&mut self, pos: Pos, path: &P, msg: impl fmt::Display) {
        let message = if path.is_root() {
            msg.to_string()
        } else {
            format!("{path}: {msg}")
        };
        self.err_at(pos, message);
    }

    /// An error whose message already names its path (checks across items collect them
    /// first, then report them in order).
    pub(super) fn err_at(&mut self, pos: Pos, message: String) {
        self.errors.push(ConfigError {
            file: self.file.to_owned(),
            line: pos.line as usize,
            column: pos.column as usize,
            message,
        });
    }

    /// The scalar as written in the file (for values YAML typed as numbers or booleans).
    pub(super) fn source_text(&self, y: &Y) -> Option<String> {
        let span = y.defined.span();
        let start = usize::try_from(span.byte_offset()?).ok()?;
        let len = usize::try_from(span.byte_len()?).ok()?;
        let s = self.text.get(start..start + len)?;
        (!s.is_empty()).then(|| s.to_owned())
    }

    /// "the string \"x\"", "a list", ... for "found ..." in messages.
    pub(super) fn describe(&self, y: &Y) -> String {
        match &y.value {
            Raw::Null => "nothing (null)".into(),
            Raw::Bool(b) => format!(
                "the boolean {}",
                self.source_text(y).unwrap_or(b.to_string())
            ),
            Raw::Int(i) => format!(
                "the number {}",
                self.source_text(y).unwrap_or(i.to_string())
            ),
            Raw::Float(x) => format!(
                "the number {}",
                self.source_text(y).unwrap_or(x.to_string())
            ),
            Raw::Str(s) => format!("the string {s:?}"),
            Raw::Seq(_) => "a list".into(),
            Raw::Map(_) => "a mapping".into(),
        }
    }

    /// Checks that `y` is a mapping with only `keys`, reporting unknown and repeated keys.
    /// A null value is an empty mapping.
    pub(super) fn obj<'y>(&mut self, y: &'y Y, path: &P, keys: &[&str]) -> Option<Obj<'y>> {
        debug_assert!(
            SCHEMA.iter().any(|(_, listed)| *listed == keys),
            "{keys:?} is not in config::SCHEMA (the documentation's list of keys)"
        );
        let pos = pos_of(y);
        let map: &[(Y, Y)] = match &y.value {
            Raw::Map(m) => m,
            Raw::Null => &[],
            _ => {
                let found = self.describe(y);
                let what = if path.is_root() {
                    format!(
                        "the configuration must be a mapping with the keys {}, found {found}",
                        keys.join(", ")
                    )
                } else {
                    format!(
                        "expected a mapping with the keys {}, found {found}",
                        keys.join(", ")
                    )
                };
                self.err(pos, path, what);
                return None;
            }
        };
        let mut entries: Vec<(&'y str, &'y Y)> = Vec::with_capacity(map.len());
        let mut first_seen: Vec<(&'y str, Pos)> = Vec::with_capacity(map.len());
        for (k, v) in map {
            let kpos = pos_of(k);
            let Raw::Str(name) = &k.value else {
                let text = self.source_text(k).unwrap_or_else(|| self.describe(k));
                self.err(
                    kpos,
                    path,
                    format!("unknown key {text:?}, expected one of: {}", keys.join(", ")),
                );
                continue;
            };
            let name = name.as_str();
            let kp = P::Key(path, name);
            if !keys.contains(&name) {
                let hint = keys
                    .iter()
                    .map(|c| (distance(name, c), c))
                    .filter(|(d, c)| *d <= 2 && *d < c.len())
                    .min()
                    .map(|(_, c)| format!(" (did you mean \"{c}\"?)"))
                    .unwrap_or_default();
                self.err(
                    kpos,
                    &kp,
                    format!("unknown key{hint}, expected one of: {}", keys.join(", ")),
                );
                continue;
            }
            if let Some((_, first)) = first_seen.iter().find(|(n, _)| *n == name) {
                let line = first.line;
                self.err(
                    kpos,
                    &kp,
                    format!("duplicate key, already given at line {line}"),
                );
                continue;
            }
            first_seen.push((name, kpos));
            entries.push((name, v));
        }
        Some(Obj { pos, entries })
    }

    /// The value of a required key (absent or null: an error).
    pub(super) fn req<'y>(&mut self, o: &Obj<'y>, path: &P, key: &str) -> Option<&'y Y> {
        match o.entries.iter().find(|(k, _)| *k == key) {
            Some((_, v)) => Some(*v),
            None => {
                if path.is_root() {
                    self.err(
                        o.pos,
                        path,
                        format!("missing required top-level key \"{key}\""),
                    );
                } else {
                    self.err(o.pos, path, format!("missing required key \"{key}\""));
                }
                None
            }
        }
    }

    /// A list; null is an empty list. `f` converts one item.
    pub(super) fn list<'y, T>(
        &mut self,
        y: Option<&'y Y>,
        path: &P,
        what: &str,
        mut f: impl FnMut(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<Vec<T>> {
        let Some(y) = y else {
            return Some(Vec::new());
        };
        match &y.value {
            Raw::Seq(items) => {
                let mut out = Vec::with_capacity(items.len());
                let mut ok = true;
                for (i, item) in items.iter().enumerate() {
                    match f(self, item, &P::Idx(path, i)) {
                        Some(v) => out.push(v),
                        None => ok = false,
                    }
                }
                ok.then_some(out)
            }
            Raw::Null => Some(Vec::new()),
            _ => {
                let found = self.describe(y);
                self.err(
                    pos_of(y),
                    path,
                    format!("expected a list of {what}, found {found}"),
                );
                None
            }
        }
    }

    /// Optional key converted by `f`; `default` when absent. Errors make it `None`.
    pub(super) fn field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        default: T,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<T> {
        match o.opt(key) {
            Some(y) => f(self, y, &P::Key(path, key)),
            None => Some(default),
        }
    }

    /// Optional key converted by `f`: `Some(None)` when absent, `None` on error.
    pub(super) fn opt_field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<Option<T>> {
        match o.opt(key) {
            Some(y) => f(self, y, &P::Key(path, key)).map(Some),
            None => Some(None),
        }
    }

    /// Required key converted by `f`.
    pub(super) fn req_field<'y, T>(
        &mut self,
        o: &Obj<'y>,
        path: &P,
        key: &str,
        f: impl FnOnce(&mut Self, &'y Y, &P) -> Option<T>,
    ) -> Option<T> {
        let y = self.req(o, path, key)?;
        f(self, y, &P::Key(path, key))
    }
}
