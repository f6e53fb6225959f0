//! The documents' relative links resolve: every markdown link `[text](target)` in
//! README.md, ARCHITECTURE.md, CONTRIBUTING.md, docs/*.md and deploy/**/*.md whose target
//! is not a URL names a file or directory that exists (relative to the document), and a
//! `#fragment` into a markdown file (the same one for a bare `#fragment`) names one of its
//! headings by GitHub's slug. Run by `cargo test` (so by `cargo xtask test`).

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

/// The documents checked, relative to the workspace root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut docs: Vec<PathBuf> = ["README.md", "ARCHITECTURE.md", "CONTRIBUTING.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    markdown_files(&root.join("docs"), false, &mut docs);
    markdown_files(&root.join("deploy"), true, &mut docs);
    docs.sort();
    docs
}

fn markdown_files(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if recursive {
                markdown_files(&path, true, out);
            }
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// A link found in a document: its 1-based line and its target as written.
#[derive(Debug, PartialEq, Eq)]
struct Link {
    line: usize,
    target: String,
}

/// The document's lines, `None` for those of fenced code blocks (fences included).
fn outside_fences(text: &str) -> Vec<Option<&str>> {
    let mut fence: Option<String> = None;
    text.lines()
        .map(|line| {
            let marker: String = line
                .trim_start()
                .chars()
                .take_while(|c| *c == '`' || *c == '~')
                .collect();
            let uniform = marker.chars().all(|c| marker.starts_with(c));
            match &fence {
                Some(open) => {
                    if uniform && marker.len() >= open.len() && marker.starts_with(&open[..1]) {
                        fence = None;
                    }
                    None
                }
                None if uniform && marker.len() >= 3 => {
                    fence = Some(marker);
                    None
                }
                None => Some(line),
            }
        })
        .collect()
}

/// The lines of a document that are markdown, not code: fenced code blocks are blanked
/// (their lines kept, so line numbers stay right) and inline code spans are turned into
/// spaces of the same length.
fn prose_lines(text: &str) -> Vec<String> {
    outside_fences(text)
        .into_iter()
        .map(|line| line.map(blank_code_spans).unwrap_or_default())
        .collect()
}

/// `a `b` c` -> `a     c` (the span's backticks and content become spaces).
fn blank_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|c| **c == '`').count();
        // The closing run: the same number of backticks, not part of a longer run.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let len = chars[j..].iter().take_while(|c| **c == '`').count();
                if len == run {
                    close = Some(j + len);
                    break;
                }
                j += len;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.extend(std::iter::repeat_n(' ', end - i));
                i = end;
            }
            None => {
                // An unmatched run is literal text.
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// Every inline link and image `[text](target "title")` of the document.
fn links(text: &str) -> Vec<Link> {
    let mut found = Vec::new();
    for (index, line) in prose_lines(text).iter().enumerate() {
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let mut depth = 0usize;
            let end = after.char_indices().find_map(|(k, c)| match c {
                '(' => {
                    depth += 1;
                    None
                }
                ')' if depth == 0 => Some(k),
                ')' => {
                    depth -= 1;
                    None
                }
                _ => None,
            });
            let Some(end) = end else {
                break;
            };
            let inside = after[..end].trim();
            let target = match inside.strip_prefix('<') {
                Some(bracketed) => bracketed.split('>').next().unwrap_or(""),
                None => inside.split_whitespace().next().unwrap_or(""),
            };
            if !target.is_empty() {
                found.push(Link {
                    line: index + 1,
                    target: target.to_string(),
                });
            }
            rest = &after[end + 1..];
        }
    }
    found
}

/// A URL: `scheme:` (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn is_url(target: &str) -> bool {
    let Some((scheme, _)) = target.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// The anchors GitHub gives a document's headings: the heading's text (code spans' and
/// links' markup removed) lowercased, every character but letters, digits, spaces, `-`
/// and `_` dropped, spaces made `-`; a repeated slug gets `-1`, `-2`, ...
fn heading_slugs(text: &str) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut slugs = Vec::new();
    for line in outside_fences(text).into_iter().flatten() {
        if line.starts_with("    ") {
            continue;
        }
        let trimmed = line.trim_start();
        let hashes = trimmed.chars().take_while(|c| *c == '#').count();
        let title = &trimmed[hashes..];
        if !(1..=6).contains(&hashes) || !(title.is_empty() || title.starts_with(' ')) {
            continue;
        }
        let slug = slug(title.trim().trim_end_matches('#').trim());
        let n = seen.entry(slug.clone()).or_insert(0);
        slugs.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    slugs
}

fn slug(title: &str) -> String {
    // [text](target) -> text; the backticks of code spans are markup, not text.
    let mut plain = String::new();
    let mut rest = title;
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](") else {
            break;
        };
        let Some(end) = rest[open + close..].find(')') else {
            break;
        };
        plain.push_str(&rest[..open]);
        plain.push_str(&rest[open + 1..open + close]);
        rest = &rest[open + close + end + 1..];
    }
    plain.push_str(rest);
    plain
        .chars()
        .filter(|c| *c != '`')
        .flat_map(char::to_lowercase)
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// What is wrong with each link of `doc` (shown as `shown`): `shown:line: link -> why`.
fn broken_links(doc: &Path, shown: &str) -> Vec<String> {
    let text = match fs::read_to_string(doc) {
        Ok(text) => text,
        Err(e) => return vec![format!("{shown}: cannot read it: {e}")],
    };
    let dir = doc.parent().unwrap_or(Path::new("."));
    let mut problems = Vec::new();
    for link in links(&text) {
        if is_url(&link.target) {
            continue;
        }
        let (path, fragment) = match link.target.split_once('#') {
            Some((path, fragment)) => (path, Some(fragment)),
            None => (link.target.as_str(), None),
        };
        let target = if path.is_empty() {
            doc.to_path_buf()
        } else {
            dir.join(path)
        };
        let why = if !target.exists() {
            Some("missing".to_string())
        } else {
            fragment
                .filter(|_| target.extension().is_some_and(|e| e == "md"))
                .and_then(|fragment| {
                    let heading = fs::read_to_string(&target)
                        .map(|t| heading_slugs(&t))
                        .unwrap_or_default();
                    (!heading.iter().any(|s| s == fragment))
                        .then(|| format!("missing (no heading #{fragment})"))
                })
        };
        if let Some(why) = why {
            problems.push(format!("{shown}:{}: {} -> {why}", link.line, link.target));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_relative_link_in_the_documents_resolves() {
        let root = crate::workspace_root();
        let docs = documents(root);
        assert!(
            docs.len() >= 6,
            "expected README, ARCHITECTURE, CONTRIBUTING and docs/*.md, found {docs:?}"
        );
        let problems: Vec<String> = docs
            .iter()
            .flat_map(|doc| {
                let shown = doc.strip_prefix(root).unwrap_or(doc).display().to_string();
                broken_links(doc, &shown)
            })
            .collect();
        assert!(
            problems.is_empty(),
            "broken links in the documents:\n{}",
            problems.join("\n")
        );
    }

    #[test]
    fn links_are_read_from_prose_not_code() {
        let text = "see [the guide](docs/a.md#part-one) and ![img](i.png \"title\")\n\
                    `[not](code.md)` but [`code` text](b.md)\n\
                    ```\n[in](fence.md)\n```\n\
                    [web](https://example.com) [anchor](#here) [paren](f(1).md)";
        let found: Vec<(usize, String)> = links(text)
            .into_iter()
            .map(|l| (l.line, l.target))
            .collect();
        let expected = [
            (1, "docs/a.md#part-one"),
            (1, "i.png"),
            (2, "b.md"),
            (6, "https://example.com"),
            (6, "#here"),
            (6, "f(1).md"),
        ]
        .map(|(line, target)| (line, target.to_string()));
        assert_eq!(found, expected);
        assert!(is_url("https://example.com") && is_url("mailto:a@b"));
        assert!(!is_url("docs/a.md") && !is_url("#x") && !is_url("a.md#b:c"));
    }

    #[test]
    fn heading_slugs_are_githubs() {
        let text = "# Title\n## `(top level)`\n### `vrrp[].garp`\n## Check types\n\
                    ## Check types\n#### Sizing the connection table\n\
                    ## A [linked](x.md) heading, with punctuation!\n\
                    ```\n# not a heading\n```\n#not-a-heading-either\n";
        assert_eq!(
            heading_slugs(text),
            vec![
                "title",
                "top-level",
                "vrrpgarp",
                "check-types",
                "check-types-1",
                "sizing-the-connection-table",
                "a-linked-heading-with-punctuation",
            ]
        );
    }

    #[test]
    fn a_broken_link_or_anchor_is_named_with_its_line() {
        let dir = std::env::temp_dir().join(format!("xtask-doclinks-{}", std::process::id()));
        fs::create_dir_all(dir.join("docs")).unwrap();
        fs::write(dir.join("docs/other.md"), "# Other\n## Part two\n").unwrap();
        fs::write(
            dir.join("README.md"),
            "# Readme\n[ok](docs/other.md#part-two) [dir](docs/)\n\
             [gone](docs/gone.md)\n[bad anchor](docs/other.md#part-three)\n\
             [self](#readme) [self bad](#nowhere)\n",
        )
        .unwrap();
        let problems = broken_links(&dir.join("README.md"), "README.md");
        fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            problems,
            vec![
                "README.md:3: docs/gone.md -> missing",
                "README.md:4: docs/other.md#part-three -> missing (no heading #part-three)",
                "README.md:5: #nowhere -> missing (no heading #nowhere)",
            ]
        );
    }
}
