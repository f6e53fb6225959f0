//! Parsing a large file service by service: the items of the top-level `services:` list are
//! parsed on their own (in parallel on a load, and only those whose text changed on a
//! reload), the rest of the file as a skeleton where the list's lines are blank.
//!
//! This is only a faster way to the same result. It is taken when the file's layout makes
//! it provably equivalent (a block mapping at the root whose `services:` key is alone on its
//! line at column 0, followed by a block sequence whose items start at one indentation; no
//! tabs, no directives or document markers); anything else, and any error at all, goes
//! through the whole-file parse, so errors are reported exactly as before, with the same
//! lines and keys. Why a valid chunked parse equals the whole-file parse: every line of an
//! item is either blank, a comment, or indented deeper than the item's `- `, so it belongs
//! to that item's node in the whole document too; a flow collection, quoted scalar or
//! alias that would cross an item's boundary leaves that item unparseable on its own (an
//! error, hence the whole-file parse); and converting a service reads nothing outside its
//! item (cross-service checks run afterwards on all of them).

use std::collections::HashMap;

use super::convert::Cx;
use super::schema::{BackendLoc, Config, Service, ServiceLoc};
use super::services::SvcDraft;
use super::yaml::{read_yaml, Pos, Raw, P};

/// Services parsed from a file, by the text of their item, kept beside the running
/// configuration: a reload re-parses only the items whose text changed.
#[derive(Default)]
pub struct ParseCache {
    /// By the hash of the item's text: the text and what it gave.
    items: HashMap<u64, Vec<(String, Parsed)>>,
}

impl ParseCache {
    /// How many services it holds.
    pub fn len(&self) -> usize {
        self.items.values().map(Vec::len).sum()
    }

    fn get(&self, hash: u64, text: &str) -> Option<&Parsed> {
        self.items
            .get(&hash)?
            .iter()
            .find(|(t, _)| t == text)
            .map(|(_, p)| p)
    }

    fn take(&mut self, hash: u64, text: &str) -> Option<(String, Parsed)> {
        let entries = self.items.get_mut(&hash)?;
        let at = entries.iter().position(|(t, _)| t == text)?;
        Some(entries.swap_remove(at))
    }

    fn put(&mut self, hash: u64, text: String, parsed: Parsed) {
        self.items.entry(hash).or_default().push((text, parsed));
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// One service as converted from its item alone: positions are relative to the item (its
/// first line is line 1; columns are the file's).
#[derive(Clone)]
struct Parsed {
    svc: Service,
    loc: ServiceLoc,
    name_pos: Pos,
}

/// One item of the `services:` list.
struct Item<'t> {
    text: &'t str,
    /// Of `text`, for the cache.
    hash: u64,
    /// The file's line (1-based) of the item's first line.
    first_line: u32,
}

/// The file cut for a chunked parse.
struct Layout<'t> {
    /// The file with every line of the `services:` list blank (line numbers stay).
    skeleton: String,
    items: Vec<Item<'t>>,
}

/// Below this many items to parse, threads cost more than they save.
const PARALLEL_FROM: usize = 64;

/// The cache's key of an item: its length and first bytes (cheap; entries under one key
/// are told apart by their whole text).
fn hash_of(text: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    let head = &text.as_bytes()[..text.len().min(64)];
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one((text.len(), head))
}

fn indentation(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// Blank or a comment: no node starts on it.
fn insignificant(line: &str) -> bool {
    let t = line.trim_start_matches(' ').trim_end_matches('\r');
    t.is_empty() || t.starts_with('#')
}

/// `- ...` or a lone `-` at `indent`.
fn item_start(line: &str, indent: usize) -> bool {
    let rest = line[indent..].trim_end_matches('\r');
    rest == "-" || rest.starts_with("- ")
}

/// `services:` alone (trailing spaces or a comment allowed) at column 0.
fn services_key(line: &str) -> bool {
    let Some(rest) = line.trim_end_matches('\r').strip_prefix("services:") else {
        return false;
    };
    let trimmed = rest.trim_start_matches(' ');
    // A comment needs a space before its `#`.
    trimmed.is_empty() || (trimmed.starts_with('#') && rest.starts_with(' '))
}

/// Where the items are, if the layout allows a chunked parse (see the module's doc).
/// One pass over the lines, looking at their first bytes.
fn split(text: &str) -> Option<Layout<'_>> {
    if memchr::memchr(b'\t', text.as_bytes()).is_some() {
        return None;
    }
    #[derive(PartialEq)]
    enum At {
        Before,
        /// After `services:`, before its first node.
        Key,
        /// In the list, whose items start at this indentation.
        List(usize),
        After,
    }
    let mut at = At::Before;
    // Byte offsets and line indexes of: the line after `services:`, each item's first
    // line, the end of the list.
    let (mut cut_from, mut cut_line) = (0, 0);
    let mut items: Vec<(usize, usize)> = Vec::new();
    let (mut cut_to, mut end_line) = (text.len(), usize::MAX);
    let (mut offset, mut lines) = (0, 0);
    // The lines as `text.split('\n')` gives them (the last one after the last newline),
    // found with the vectorised search (the file may be megabytes of short lines).
    let ends = memchr::memchr_iter(b'\n', text.as_bytes()).chain(std::iter::once(text.len()));
    for (i, end) in ends.enumerate() {
        let line = &text[offset..end];
        lines = i + 1;
        let here = offset;
        offset = end + 1;
        let first = line.as_bytes().first().copied();
        if first == Some(b' ') {
            match at {
                At::Key | At::List(_) if !insignificant(line) => {
                    let indent = indentation(line);
                    match at {
                        At::Key if item_start(line, indent) => {
                            at = At::List(indent);
                            items.push((here, i));
                        }
                        At::List(k) if indent == k && item_start(line, k) => {
                            items.push((here, i));
                        }
                        At::List(k) if indent > k => {}
                        _ => return None,
                    }
                }
                _ => {}
            }
            continue;
        }
        // Column 0 (or an empty line).
        if matches!(first, Some(b'%')) || line.starts_with("---") || line.starts_with("...") {
            return None;
        }
        if insignificant(line) {
            continue;
        }
        match at {
            At::Before | At::After if first == Some(b's') && services_key(line) => {
                if at == At::After {
                    return None;
                }
                at = At::Key;
                (cut_from, cut_line) = (offset, i + 1);
            }
            At::Key | At::List(0) if item_start(line, 0) => {
                if at == At::Key {
                    at = At::List(0);
                }
                items.push((here, i));
            }
            At::Key | At::List(_) => {
                at = At::After;
                (cut_to, end_line) = (here, i);
            }
            At::Before | At::After => {}
        }
    }
    if at == At::Before {
        return None;
    }
    // Lines of the list: from the one after `services:` to the end (of the list or file).
    let end_line = end_line.min(lines);
    let cut_from = cut_from.min(text.len());
    let mut skeleton =
        String::with_capacity(cut_from + (end_line - cut_line) + text.len() - cut_to);
    skeleton.push_str(&text[..cut_from]);
    skeleton.extend(std::iter::repeat_n('\n', end_line.saturating_sub(cut_line)));
    skeleton.push_str(&text[cut_to..]);
    let bounds: Vec<usize> = items
        .iter()
        .map(|&(o, _)| o)
        .skip(1)
        .chain(std::iter::once(cut_to))
        .collect();
    Some(Layout {
        skeleton,
        items: items
            .iter()
            .zip(bounds)
            .map(|(&(from, line), to)| {
                // The item's lines, each with its newline.
                let text = &text[from..to];
                Item {
                    text,
                    hash: hash_of(text),
                    first_line: line as u32 + 1,
                }
            })
            .collect(),
    })
}

/// One item converted on its own; `None` on any error (the caller then parses the file).
fn parse_item(item: &str, index: usize, file: &str) -> Option<Parsed> {
    let root = read_yaml(item, file).ok()?;
    let Raw::Seq(nodes) = &root.value else {
        return None;
    };
    let [node] = nodes.as_slice() else {
        return None;
    };
    let mut cx = Cx {
        text: item,
        file,
        errors: Vec::new(),
        interfaces: Vec::new(),
    };
    let services = P::Key(&P::Root, "services");
    let draft = cx.service(node, &P::Idx(&services, index))?;
    cx.errors.is_empty().then_some(Parsed {
        svc: draft.svc,
        loc: draft.loc,
        name_pos: draft.name_pos,
    })
}

fn shift(pos: Pos, by: u32) -> Pos {
    if pos.line == 0 {
        return pos;
    }
    Pos {
        line: pos.line + by,
        column: pos.column,
    }
}

fn placed(p: &Parsed, first_line: u32) -> SvcDraft {
    let by = first_line - 1;
    let l = &p.loc;
    let loc = ServiceLoc {
        item: shift(l.item, by),
        vip: shift(l.vip, by),
        scheduler: shift(l.scheduler, by),
        forwarding: shift(l.forwarding, by),
        persistence: shift(l.persistence, by),
        sorry_server: shift(l.sorry_server, by),
        health_check: shift(l.health_check, by),
        backends: l
            .backends
            .iter()
            .map(|b| BackendLoc {
                forwarding: shift(b.forwarding, by),
            })
            .collect(),
    };
    SvcDraft {
        svc: p.svc.clone(),
        loc,
        name_pos: shift(p.name_pos, by),
    }
}

/// Parses `items` (indexes into `layout.items`), on several threads when they are many.
fn parse_many(layout: &Layout, todo: &[usize], file: &str) -> Vec<Option<Parsed>> {
    crate::util::cores::map(todo, PARALLEL_FROM, |&i| {
        parse_item(layout.items[i].text, i, file)
    })
}

/// The chunked parse; `None` when it cannot be used or anything is wrong (the caller then
/// parses the whole file, which reports the errors). `cache` holds the services of the
/// previous file and, on success, is replaced by those of this one.
pub(super) fn parse(text: &str, file: &str, cache: Option<&mut ParseCache>) -> Option<Config> {
    let layout = split(text)?;
    let root = read_yaml(&layout.skeleton, file).ok()?;
    let mut cx = Cx {
        text: &layout.skeleton,
        file,
        errors: Vec::new(),
        interfaces: Vec::new(),
    };
    let mut config = cx.root(&root)?;
    if !cx.errors.is_empty() || !config.services.is_empty() {
        return None;
    }
    let empty = ParseCache::default();
    let known = cache.as_deref().unwrap_or(&empty);
    let todo: Vec<usize> = (0..layout.items.len())
        .filter(|&i| {
            known
                .get(layout.items[i].hash, layout.items[i].text)
                .is_none()
        })
        .collect();
    let mut fresh = parse_many(&layout, &todo, file).into_iter();
    let mut parsed: HashMap<usize, Parsed> = HashMap::with_capacity(todo.len());
    for &i in &todo {
        parsed.insert(i, fresh.next().flatten()?);
    }
    let drafts: Vec<SvcDraft> = layout
        .items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let p = parsed
                .get(&i)
                .or_else(|| known.get(item.hash, item.text))
                .expect("every item parsed or cached");
            placed(p, item.first_line)
        })
        .collect();
    let drafts = cx.check_services(drafts);
    if !cx.errors.is_empty() {
        return None;
    }
    (config.services, config.origin.services) = drafts.into_iter().map(|d| (d.svc, d.loc)).unzip();
    // `announce.vips` names services' VIPs: checked once the services are known.
    cx.check_announce(&config);
    if !cx.errors.is_empty() {
        return None;
    }
    if let Some(cache) = cache {
        // This file's items: those kept move over, the new ones go in.
        let mut old = std::mem::take(cache);
        for (i, item) in layout.items.iter().enumerate() {
            let entry = match parsed.remove(&i) {
                Some(p) => Some((item.text.to_owned(), p)),
                None => old.take(item.hash, item.text),
            };
            // (None: the same text twice, already moved over.)
            if let Some((text, p)) = entry {
                cache.put(item.hash, text, p);
            }
        }
    }
    Some(config)
}

/// Whether `text` would take the chunked parse (for tests).
#[cfg(test)]
pub(super) fn chunkable(text: &str) -> bool {
    split(text).is_some()
}

#[cfg(test)]
mod tests {
    use super::super::schema::Origin;
    use super::*;

    const FULL: &str = include_str!("../../tests/configs/full.yaml");

    fn origin_text(o: &Origin) -> String {
        format!(
            "{} {:?} {:?} {:?} {:?}",
            o.file, o.services, o.vrrp, o.interfaces, o.vrrp_auth
        )
    }

    /// The chunked parse (fresh, then through a cache that already holds every item, then
    /// one warmed by `warm`) is the whole-file parse: same values, same positions.
    fn same_as_whole(text: &str, warm: &str) {
        assert!(chunkable(text), "expected a chunked parse of:\n{text}");
        let whole = Config::parse_whole(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
        let fresh = parse(text, "t.yaml", None).expect("chunked parse");
        assert_eq!(fresh, whole);
        assert_eq!(origin_text(&fresh.origin), origin_text(&whole.origin));
        let mut cache = ParseCache::default();
        let first = parse(text, "t.yaml", Some(&mut cache)).expect("chunked parse");
        assert_eq!(cache.len(), whole.services.len());
        let again = parse(text, "t.yaml", Some(&mut cache)).expect("cached parse");
        for c in [&first, &again] {
            assert_eq!(*c, whole);
            assert_eq!(origin_text(&c.origin), origin_text(&whole.origin));
        }
        let mut cache = ParseCache::default();
        Config::parse_cached(warm, "t.yaml", &mut cache).expect("warm-up config");
        let warmed = Config::parse_cached(text, "t.yaml", &mut cache).unwrap();
        assert_eq!(warmed, whole);
        assert_eq!(origin_text(&warmed.origin), origin_text(&whole.origin));
    }

    /// A varied file: comments between and inside items, a lone `-`, flow and block
    /// styles, anchors inside one item, a block scalar, a multi-line quoted string,
    /// a service after a blank line and a comment at column 0, VRRP after the list.
    const VARIED: &str = r#"node:
  interfaces: [{ name: eth0 }]
conntrack: { tcp_timeout: 10m }
services:   # the list
  # first
  - name: a
    vip: 10.0.0.1
    port: 80
    backends: [{ address: 10.0.0.11 }, { address: 10.0.0.12, weight: 3 }]
  -
    name: b
    vip: 10.0.0.2
    port: &p 443
    forwarding: tun
    maglev_table_size: 251
    backends:
      - address: 10.0.0.21
      - { address: 10.0.0.22, weight: *p }

# a column-0 comment inside the list
  - name: "c"
    vip: fd00::3
    port: 0
    protocol: udp
    scheduler: wrr
    forwarding: nat
    sorry_server: "[fd00::250]:53"
    health_check:
      type: misc
      command: |
        /bin/check
          --deep
      dynamic: true
    backends:
      - address: fd00::31
        forwarding: tun
      - address: fd00::32
        weight: 0
  - name: d
    vip: 10.0.0.4
    port: 25
    persistence: 5m
    health_check: { type: http_get, body_regex: "ok
      yes", interval: 2s }
    backends: []
vrrp:
  - name: VI_1
    interface: eth0
    virtual_router_id: 51
    version: 2
    authentication: { type: pass, password: "secret" }
    virtual_addresses: [10.0.0.1/24]
"#;

    #[test]
    fn chunked_equals_whole_on_varied_files() {
        same_as_whole(VARIED, FULL);
        same_as_whole(FULL, VARIED);
        // The list at column 0, CRLF line ends, no newline at the end.
        let (head, rest) = VARIED.split_at(VARIED.find("  # first").unwrap());
        let (list, tail) = rest.split_at(rest.find("vrrp:").unwrap());
        let list: String = list
            .split_inclusive('\n')
            .map(|l| l.strip_prefix("  ").unwrap_or(l))
            .collect();
        let compact = format!("{head}{list}{tail}");
        same_as_whole(&compact, VARIED);
        same_as_whole(&VARIED.replace('\n', "\r\n"), VARIED);
        same_as_whole(VARIED.trim_end(), VARIED);
        // The list last, and empty lists.
        let last = format!(
            "{}{}",
            &VARIED[VARIED.find("vrrp:").unwrap()..],
            &VARIED[..VARIED.find("vrrp:").unwrap()]
        );
        same_as_whole(&last, VARIED);
        same_as_whole(
            "node:\n  interfaces: [{ name: eth0 }]\nservices:\nvrrp: []\n",
            VARIED,
        );
        same_as_whole("services:\nnode:\n  interfaces: [{ name: eth0 }]\n", VARIED);
        // One service changed, one removed, one added, order changed: positions move.
        let edited = VARIED.replace("weight: 3", "weight: 4").replace(
            "  - name: d\n",
            "  - name: e\n    vip: 10.0.0.5\n    port: 1\n  - name: d\n",
        );
        same_as_whole(&edited, VARIED);
    }

    #[test]
    fn chunked_equals_whole_on_the_benchmark_file() {
        let mut yaml = String::from("node:\n  interfaces: [{ name: eth0, xdp_mode: generic }]\nhttp:\n  listen: \"127.0.0.1:9469\"\nservices:\n");
        for s in 0..200 {
            yaml.push_str(&format!(
                "  - name: s{s}\n    vip: 10.{}.{}.1\n    port: 80\n    forwarding: tun\n    backends:\n",
                100 + s / 250,
                s % 250
            ));
            for b in 0..20 {
                yaml.push_str(&format!(
                    "      - address: 10.200.{}.{}\n",
                    b / 250,
                    b % 250 + 1
                ));
            }
        }
        let minus_one = yaml.replacen("      - address: 10.200.0.1\n", "", 101);
        same_as_whole(&yaml, &minus_one);
        same_as_whole(&minus_one, &yaml);
    }

    #[test]
    fn an_alias_to_another_item_takes_the_whole_file_parse() {
        let text = VARIED.replace(
            "      - address: fd00::31\n",
            "      - address: fd00::31\n        weight: *p\n",
        );
        assert!(parse(&text, "t.yaml", None).is_none());
        let whole = Config::parse_whole(&text, "t.yaml").unwrap();
        assert_eq!(whole.services[2].backends[0].weight, 443);
        assert_eq!(Config::parse(&text, "t.yaml").unwrap(), whole);
        let mut cache = ParseCache::default();
        Config::parse_cached(VARIED, "t.yaml", &mut cache).unwrap();
        assert_eq!(
            Config::parse_cached(&text, "t.yaml", &mut cache).unwrap(),
            whole
        );
    }

    #[test]
    fn layouts_that_are_not_split() {
        const NODE: &str = "node:\n  interfaces: [{ name: eth0 }]\n";
        const ITEM: &str = "  - name: a\n    vip: 10.0.0.1\n    port: 80\n";
        for rest in [
            "services: []\n".to_string(),
            format!("services:\n{}", ITEM.replace("    vip", "\tvip")),
            format!("services:\n{ITEM}---\n{NODE}"),
            format!("services:\n{ITEM}services:\n{ITEM}"),
            format!("services:\n{ITEM}services: []\n"),
            "services:\n  name: a\n".to_string(),
            format!("services:\n    - name: b\n{ITEM}"),
            format!("\"services\":\n{ITEM}"),
        ] {
            for text in [
                format!("{NODE}{rest}"),
                format!("%YAML 1.2\n---\n{NODE}{rest}"),
            ] {
                assert!(parse(&text, "t.yaml", None).is_none(), "{text:?}");
                assert_eq!(
                    format!("{:?}", Config::parse(&text, "t.yaml")),
                    format!("{:?}", Config::parse_whole(&text, "t.yaml")),
                    "{text:?}"
                );
            }
        }
    }

    /// Errors through the chunked path are the whole-file parse's: the same first error,
    /// with the file's line and the key's path.
    #[test]
    fn errors_name_the_files_line_and_key() {
        let cases: &[(&str, &str, &str)] = &[
            // A bad value in the third service.
            ("port: 0\n    protocol: udp", "port: 0\n    protocol: icmp", "t.yaml:24:15: services[2].protocol: \"icmp\""),
            // An unknown key in the second.
            ("    maglev_table_size: 251\n", "    maglev_table_size: 251\n    colour: red\n", "t.yaml:16:5: services[1].colour: unknown key"),
            // A duplicate name across items.
            ("  - name: d\n", "  - name: a\n", "t.yaml:39:11: services[3].name: duplicate service name \"a\", already used by services[0] at line 6"),
            // YAML broken inside an item.
            ("    vip: 10.0.0.4\n", "    vip: [10.0.0.4\n", "t.yaml:"),
            // An error after the list.
            ("virtual_router_id: 51", "virtual_router_id: 0", "t.yaml:49:24: vrrp[0].virtual_router_id: 0 is out of range"),
        ];
        for (from, to, expected) in cases {
            let text = VARIED.replacen(from, to, 1);
            assert_ne!(text, VARIED, "{from:?} not found");
            let whole = Config::parse_whole(&text, "t.yaml")
                .expect_err("an error")
                .to_string();
            let chunked = Config::parse(&text, "t.yaml")
                .expect_err("an error")
                .to_string();
            let mut cache = ParseCache::default();
            Config::parse_cached(VARIED, "t.yaml", &mut cache).unwrap();
            let cached = Config::parse_cached(&text, "t.yaml", &mut cache)
                .expect_err("an error")
                .to_string();
            assert_eq!(chunked, whole);
            assert_eq!(cached, whole);
            assert!(
                whole.starts_with(expected),
                "{whole}\n  expected: {expected}"
            );
            // The cache still holds the running file's services.
            assert_eq!(cache.len(), 4);
        }
    }
}
