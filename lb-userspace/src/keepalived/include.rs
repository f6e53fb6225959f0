//! Reading the main file and what it includes, into one stream of tokens.
//!
//! `include PATTERN` (and keepalived's variants `includer`, `includem`, `includew`,
//! `includeb`, `includea`) stands on a statement of its own, anywhere, even inside a block:
//! the matching files' tokens take its place. A relative pattern is resolved against the
//! directory of the file that includes it; `*`, `?` and `[...]` match within one path
//! component, and the matches are read in sorted order, as glob() returns them. A pattern
//! without wildcards names a file that must exist; a wildcard pattern that matches nothing
//! is reported, not refused (keepalived accepts an empty `conf.d/*`).

use std::path::{Path, PathBuf};

use super::{
    lexer::{lex_line, Tok, Token},
    report::{ImportError, Pos, Report, Sources},
};

const INCLUDE_WORDS: &[&str] = &[
    "include", "includer", "includem", "includew", "includeb", "includea",
];

/// Deeper than this is taken for a file that includes itself.
const MAX_DEPTH: usize = 16;

pub struct Reader<'a> {
    pub sources: &'a mut Sources,
    pub report: &'a mut Report,
    pub tokens: Vec<Token>,
}

impl Reader<'_> {
    /// Reads `path` (named `name` in findings and errors) and everything it includes.
    pub fn read_file(&mut self, path: &Path, name: &str) -> Result<(), ImportError> {
        let text = read_text(path).map_err(|why| ImportError {
            at: name.to_string(),
            message: why,
        })?;
        let file = self.sources.add(name.to_string());
        self.lex_text(&text, file, path, 0)
    }

    /// Tokens of `text`, the contents of file number `file` found at `path`.
    pub fn lex_text(
        &mut self,
        text: &str,
        file: u16,
        path: &Path,
        depth: usize,
    ) -> Result<(), ImportError> {
        let mut pending = String::new();
        let mut first_line = 0u32;
        for (i, raw) in text.lines().enumerate() {
            let line = i as u32 + 1;
            if pending.is_empty() {
                first_line = line;
            }
            pending.push_str(raw);
            let pos = Pos {
                file,
                line: first_line,
            };
            let lexed =
                lex_line(&pending).map_err(|why| ImportError::at(self.sources, pos, why))?;
            if lexed.continued {
                // Drop the backslash and read on.
                pending.truncate(pending.trim_end().len().saturating_sub(1));
                pending.push(' ');
                continue;
            }
            pending.clear();
            self.statements(lexed.toks, pos, path, depth)?;
        }
        if !pending.is_empty() {
            let pos = Pos {
                file,
                line: first_line,
            };
            let lexed =
                lex_line(&pending).map_err(|why| ImportError::at(self.sources, pos, why))?;
            self.statements(lexed.toks, pos, path, depth)?;
        }
        Ok(())
    }

    /// Emits one line's tokens, statement by statement, expanding includes.
    fn statements(
        &mut self,
        toks: Vec<Tok>,
        pos: Pos,
        path: &Path,
        depth: usize,
    ) -> Result<(), ImportError> {
        let mut segment: Vec<Tok> = Vec::new();
        for tok in toks.into_iter().chain([Tok::End]) {
            if tok != Tok::End {
                segment.push(tok);
                continue;
            }
            let words: Vec<&str> = segment
                .iter()
                .map_while(|t| match t {
                    Tok::Word(w) => Some(w.as_str()),
                    _ => None,
                })
                .collect();
            if words.len() >= 2 && words.len() == segment.len() && INCLUDE_WORDS.contains(&words[0])
            {
                let patterns: Vec<String> = words[1..].iter().map(|w| w.to_string()).collect();
                for p in patterns {
                    self.include(&words_text(&segment), &p, pos, path, depth)?;
                }
            } else {
                self.tokens
                    .extend(segment.drain(..).map(|tok| Token { tok, pos }));
                self.tokens.push(Token { tok: Tok::End, pos });
            }
            segment.clear();
        }
        Ok(())
    }

    fn include(
        &mut self,
        statement: &str,
        pattern: &str,
        pos: Pos,
        from: &Path,
        depth: usize,
    ) -> Result<(), ImportError> {
        if depth >= MAX_DEPTH {
            return Err(ImportError::at(
                self.sources,
                pos,
                format!("{statement}: includes nested more than {MAX_DEPTH} deep (does a file include itself?)"),
            ));
        }
        let dir = from.parent().unwrap_or(Path::new(""));
        let full = dir.join(pattern);
        let wild = pattern.contains(['*', '?', '[']);
        let files = if wild {
            glob(&full)
        } else {
            vec![full.clone()]
        };
        if files.is_empty() {
            self.report.add(
                pos,
                statement,
                format!("no file matches {}: nothing included", full.display()),
            );
        }
        for f in files {
            let name = lexical(&f);
            let text = read_text(&f).map_err(|why| {
                ImportError::at(self.sources, pos, format!("{statement}: {name}: {why}"))
            })?;
            let file = self.sources.add(name);
            self.lex_text(&text, file, &f, depth + 1)?;
        }
        Ok(())
    }
}

/// A path as shown: `a/b/../c` as `a/c`, `./a` as `a` (the file read is the path itself).
fn lexical(path: &Path) -> String {
    use std::path::Component;
    let mut parts: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(parts.last(), Some(Component::Normal(_))) => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.iter().collect::<PathBuf>().display().to_string()
}

fn words_text(toks: &[Tok]) -> String {
    toks.iter()
        .filter_map(|t| match t {
            Tok::Word(w) => Some(w.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_text(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    if bytes.contains(&0) {
        return Err("not a text file (it holds NUL bytes)".into());
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The files matching `pattern`, sorted; wildcards in any component.
pub fn glob(pattern: &Path) -> Vec<PathBuf> {
    let mut found = vec![PathBuf::new()];
    let components: Vec<_> = pattern.components().collect();
    for (i, c) in components.iter().enumerate() {
        let part = c.as_os_str().to_string_lossy();
        let last = i + 1 == components.len();
        let mut next = Vec::new();
        for base in &found {
            if !part.contains(['*', '?', '[']) {
                next.push(base.join(c.as_os_str()));
                continue;
            }
            let dir = if base.as_os_str().is_empty() {
                Path::new(".")
            } else {
                base.as_path()
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .filter(|e| last || e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| wildcard_match(&part, n))
                .collect();
            names.sort();
            next.extend(names.into_iter().map(|n| base.join(n)));
        }
        found = next;
    }
    found.retain(|p| p.is_file());
    found
}

/// Shell wildcard matching of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
/// A leading `.` is matched only by a pattern that starts with one.
pub fn wildcard_match(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_from(&p, &n)
}

fn matches_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|k| matches_from(&p[1..], &n[k..])),
        Some('?') => !n.is_empty() && matches_from(&p[1..], &n[1..]),
        Some('[') => {
            let Some(close) = p.iter().skip(2).position(|&c| c == ']').map(|i| i + 2) else {
                return n.first() == Some(&'[') && matches_from(&p[1..], &n[1..]);
            };
            let Some(&c) = n.first() else {
                return false;
            };
            let mut set = &p[1..close];
            let negate = matches!(set.first(), Some('!' | '^'));
            if negate {
                set = &set[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < set.len() {
                if i + 2 < set.len() && set[i + 1] == '-' {
                    hit |= set[i] <= c && c <= set[i + 2];
                    i += 3;
                } else {
                    hit |= set[i] == c;
                    i += 1;
                }
            }
            hit != negate && matches_from(&p[close + 1..], &n[1..])
        }
        Some(&c) => n.first() == Some(&c) && matches_from(&p[1..], &n[1..]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn included_names_are_shown_without_dot_components() {
        assert_eq!(
            lexical(Path::new("a/services/../snippets/x.conf")),
            "a/snippets/x.conf"
        );
        assert_eq!(lexical(Path::new("./a/./b.conf")), "a/b.conf");
        assert_eq!(lexical(Path::new("../b.conf")), "../b.conf");
        assert_eq!(lexical(Path::new("/etc/k/../x.conf")), "/etc/x.conf");
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*.conf", "10-web.conf"));
        assert!(!wildcard_match("*.conf", "10-web.conf.bak"));
        assert!(!wildcard_match("*.conf", ".hidden.conf"));
        assert!(wildcard_match("1?-*.conf", "10-web.conf"));
        assert!(wildcard_match("[0-9]*", "20-mail.conf"));
        assert!(!wildcard_match("[!0-9]*", "20-mail.conf"));
        assert!(wildcard_match("vs_[ab].conf", "vs_b.conf"));
    }

    fn read(dir: &Path, main: &str) -> (Result<(), ImportError>, Vec<Token>, Sources, Report) {
        let mut sources = Sources::default();
        let mut report = Report::default();
        let mut r = Reader {
            sources: &mut sources,
            report: &mut report,
            tokens: Vec::new(),
        };
        let res = r.read_file(&dir.join(main), main);
        let tokens = std::mem::take(&mut r.tokens);
        (res, tokens, sources, report)
    }

    #[test]
    fn includes_follow_globs_relative_to_the_including_file() {
        let dir = std::env::temp_dir().join(format!("bascule-kad-inc-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("conf.d/sub")).unwrap();
        std::fs::write(dir.join("main.conf"), "a 1\ninclude conf.d/*.conf\nz 9\n").unwrap();
        std::fs::write(dir.join("conf.d/20-b.conf"), "b 2\n").unwrap();
        std::fs::write(dir.join("conf.d/10-a.conf"), "include sub/x.conf\n").unwrap();
        std::fs::write(dir.join("conf.d/sub/x.conf"), "x 0 ; y 1\n").unwrap();
        std::fs::write(dir.join("conf.d/skip.txt"), "nope\n").unwrap();
        let (res, tokens, sources, report) = read(&dir, "main.conf");
        res.unwrap();
        // The first word of each statement, with where it was read.
        let mut firsts: Vec<(String, String)> = Vec::new();
        let mut at_start = true;
        for t in &tokens {
            if let (true, Tok::Word(w)) = (at_start, &t.tok) {
                firsts.push((sources.at(t.pos), w.clone()));
            }
            at_start = t.tok == Tok::End;
        }
        let dir_s = dir.display().to_string();
        assert_eq!(
            firsts,
            [
                ("main.conf:1".to_string(), "a".to_string()),
                (format!("{dir_s}/conf.d/sub/x.conf:1"), "x".to_string()),
                (format!("{dir_s}/conf.d/sub/x.conf:1"), "y".to_string()),
                (format!("{dir_s}/conf.d/20-b.conf:1"), "b".to_string()),
                ("main.conf:3".to_string(), "z".to_string()),
            ]
        );
        assert!(report.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_file_is_refused_an_empty_glob_reported() {
        let dir = std::env::temp_dir().join(format!("bascule-kad-miss-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.conf"), "x 1\n\ninclude nothere.conf\n").unwrap();
        std::fs::write(dir.join("b.conf"), "include none/*.conf\n").unwrap();
        let (res, _, _, _) = read(&dir, "a.conf");
        let err = res.unwrap_err().to_string();
        assert!(
            err.starts_with("a.conf:3: include nothere.conf: ") && err.contains("cannot read"),
            "{err}"
        );
        let (res, _, sources, report) = read(&dir, "b.conf");
        res.unwrap();
        let rendered = report.render(&sources);
        assert!(
            rendered.starts_with("b.conf:1: include none/*.conf: no file matches"),
            "{rendered}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_includes_itself_is_refused() {
        let dir = std::env::temp_dir().join(format!("bascule-kad-loop-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("self.conf"), "include self.conf\n").unwrap();
        let (res, _, _, _) = read(&dir, "self.conf");
        let err = res.unwrap_err().to_string();
        assert!(err.contains("nested more than 16 deep"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
