//! A small YAML writer for what the importer produces: block mappings and sequences,
//! scalars quoted only where YAML needs it, comments above an item or after a value, and
//! items written commented out (`# key: value`) for what this bascule does not read yet.

use super::model::Val;

#[derive(Clone, Debug)]
pub enum Node {
    Scalar(String),
    Map(Vec<Entry>),
    Seq(Vec<Item>),
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub key: String,
    pub value: Node,
    /// Comment lines above the entry.
    pub above: Vec<String>,
    /// A comment after a scalar value, on its line.
    pub trailing: Option<String>,
    /// Written commented out.
    pub off: bool,
}

impl Entry {
    pub fn new(key: &str, value: Node) -> Entry {
        Entry {
            key: key.to_string(),
            value,
            above: Vec::new(),
            trailing: None,
            off: false,
        }
    }

    pub fn val(key: &str, v: &Val) -> Entry {
        Entry::new(key, Node::Scalar(value(v)))
    }

    pub fn trailing(mut self, comment: Option<String>) -> Entry {
        self.trailing = comment;
        self
    }

    pub fn above(mut self, lines: Vec<String>) -> Entry {
        self.above.extend(lines);
        self
    }

    pub fn off(mut self, off: bool) -> Entry {
        self.off = off;
        self
    }
}

#[derive(Clone, Debug)]
pub struct Item {
    /// Comment lines above the item's dash.
    pub above: Vec<String>,
    pub value: Node,
    pub off: bool,
}

/// A whole document: comment lines, then the top-level mapping.
pub fn document(header: &[String], entries: &[Entry]) -> String {
    let mut out = String::new();
    for line in header {
        comment(&mut out, 0, line);
    }
    map(&mut out, entries, 0);
    out
}

fn comment(out: &mut String, indent: usize, text: &str) {
    for line in text.lines() {
        out.push_str(&" ".repeat(indent));
        if line.is_empty() {
            out.push_str("#\n");
        } else {
            out.push_str("# ");
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn map(out: &mut String, entries: &[Entry], indent: usize) {
    for e in entries {
        for line in &e.above {
            comment(out, indent, line);
        }
        let mut text = String::new();
        entry(&mut text, e, indent);
        if e.off {
            text = commented_out(&text, indent);
        }
        out.push_str(&text);
    }
}

fn entry(out: &mut String, e: &Entry, indent: usize) {
    let pad = " ".repeat(indent);
    match &e.value {
        Node::Scalar(s) => {
            out.push_str(&format!("{pad}{}: {s}", e.key));
            if let Some(c) = &e.trailing {
                out.push_str(&format!("  # {c}"));
            }
            out.push('\n');
        }
        Node::Map(m) if m.is_empty() => out.push_str(&format!("{pad}{}: {{}}\n", e.key)),
        Node::Seq(s) if s.is_empty() => out.push_str(&format!("{pad}{}: []\n", e.key)),
        Node::Map(m) => {
            out.push_str(&format!("{pad}{}:\n", e.key));
            map(out, m, indent + 2);
        }
        Node::Seq(items) => {
            out.push_str(&format!("{pad}{}:\n", e.key));
            for item in items {
                for line in &item.above {
                    comment(out, indent + 2, line);
                }
                let mut text = String::new();
                seq_item(&mut text, &item.value, indent + 2);
                if item.off {
                    text = commented_out(&text, indent + 2);
                }
                out.push_str(&text);
            }
        }
    }
}

fn seq_item(out: &mut String, value: &Node, indent: usize) {
    let pad = " ".repeat(indent);
    match value {
        Node::Scalar(s) => out.push_str(&format!("{pad}- {s}\n")),
        Node::Map(m) => {
            // The mapping indented under the dash, its first line carrying the dash.
            let mut inner = String::new();
            map(&mut inner, m, indent + 2);
            let body = inner.get(indent + 2..).unwrap_or("");
            out.push_str(&format!("{pad}- {body}"));
        }
        Node::Seq(items) => {
            out.push_str(&format!("{pad}-\n"));
            for item in items {
                seq_item(out, &item.value, indent + 2);
            }
        }
    }
}

/// `text` with `# ` inserted at column `indent` of each line: removing it gives the
/// lines back.
fn commented_out(text: &str, indent: usize) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let at = indent.min(line.len() - line.trim_start().len());
        out.push_str(&format!("{}# {}\n", &line[..at], &line[at..]));
    }
    out
}

/// A value as written: plain, quoted, or a flow list.
pub fn value(v: &Val) -> String {
    match v {
        Val::Plain(s) => s.clone(),
        Val::Text(s) => scalar(s),
        Val::List(items) => format!(
            "[{}]",
            items.iter().map(value).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// A string: plain when YAML reads it back as the same string, else double-quoted.
pub fn scalar(s: &str) -> String {
    if plain_ok(s) {
        return s.to_string();
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn plain_ok(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    let safe_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    let lower = s.to_ascii_lowercase();
    let reserved = matches!(
        lower.as_str(),
        "true" | "false" | "yes" | "no" | "on" | "off" | "y" | "n" | "null" | "~"
    );
    let numeric = s.parse::<f64>().is_ok()
        || lower.starts_with("0x")
        || lower.starts_with("0o")
        || lower.starts_with(".inf")
        || lower.starts_with("-.inf")
        || lower == ".nan";
    safe_chars && (first.is_ascii_alphanumeric() || first == '/') && !reserved && !numeric
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_are_quoted_only_where_needed() {
        assert_eq!(scalar("web-1"), "web-1");
        assert_eq!(scalar("/healthz"), "/healthz");
        assert_eq!(scalar("yes"), "\"yes\"");
        assert_eq!(scalar("123"), "\"123\"");
        assert_eq!(scalar("1e3"), "\"1e3\"");
        assert_eq!(scalar(""), "\"\"");
        assert_eq!(scalar("/bin/check -p \"a\""), "\"/bin/check -p \\\"a\\\"\"");
        assert_eq!(scalar("a\tb\x01"), "\"a\\tb\\x01\"");
        assert_eq!(scalar("-x"), "\"-x\"");
        assert_eq!(scalar("[fd00::1]:80"), "\"[fd00::1]:80\"");
    }

    #[test]
    fn maps_sequences_comments_and_commented_out_items() {
        let backend = Node::Map(vec![
            Entry::new("address", Node::Scalar("10.0.0.11".into())),
            Entry::new("weight", Node::Scalar("3".into())),
            Entry::new("max_connections", Node::Scalar("5".into()))
                .above(vec!["not yet".into()])
                .off(true),
        ]);
        let doc = document(
            &["converted".into()],
            &[
                Entry::new(
                    "services",
                    Node::Seq(vec![Item {
                        above: vec!["virtual_server 10.0.0.1 80".into()],
                        value: Node::Map(vec![
                            Entry::new("name", Node::Scalar("web".into())),
                            Entry::new(
                                "backends",
                                Node::Seq(vec![Item {
                                    above: vec![],
                                    value: backend,
                                    off: false,
                                }]),
                            ),
                            Entry::new("scheduler", Node::Scalar("wrr".into()))
                                .trailing(Some("lb_algo wrr".into())),
                        ]),
                        off: false,
                    }]),
                ),
                Entry::new("vrrp", Node::Seq(vec![])),
                Entry::new(
                    "sync_groups",
                    Node::Seq(vec![Item {
                        above: vec![],
                        value: Node::Map(vec![
                            Entry::new("name", Node::Scalar("G".into())),
                            Entry::new("instances", Node::Scalar("[A, B]".into())),
                        ]),
                        off: false,
                    }]),
                )
                .off(true),
            ],
        );
        assert_eq!(
            doc,
            "# converted\n\
             services:\n\
             \x20 # virtual_server 10.0.0.1 80\n\
             \x20 - name: web\n\
             \x20   backends:\n\
             \x20     - address: 10.0.0.11\n\
             \x20       weight: 3\n\
             \x20       # not yet\n\
             \x20       # max_connections: 5\n\
             \x20   scheduler: wrr  # lb_algo wrr\n\
             vrrp: []\n\
             # sync_groups:\n\
             #   - name: G\n\
             #     instances: [A, B]\n"
        );
    }
}
