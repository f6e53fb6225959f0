//! Positions in the keepalived files, the findings an import reports (`FILE:LINE: statement:
//! why`), and the error that refuses an input.

use std::fmt;

/// A line of one of the files read (the main file and its includes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    /// Index into [`Sources`], in the order the files were first read.
    pub file: u16,
    /// Counted from 1.
    pub line: u32,
}

/// The names of the files read, as shown in findings and errors: the main file as given on
/// the command line, an included file as its pattern resolved against the including file.
#[derive(Debug, Default)]
pub struct Sources {
    names: Vec<String>,
}

impl Sources {
    pub fn add(&mut self, name: String) -> u16 {
        self.names.push(name);
        (self.names.len() - 1) as u16
    }

    pub fn name(&self, file: u16) -> &str {
        self.names.get(file as usize).map_or("?", String::as_str)
    }

    /// `FILE:LINE`.
    pub fn at(&self, pos: Pos) -> String {
        format!("{}:{}", self.name(pos.file), pos.line)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// One statement that was not mapped, or mapped only approximately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub pos: Pos,
    /// The statement as written in keepalived.conf (a block's header line).
    pub statement: String,
    pub why: String,
}

/// Every finding of one import, in the order of the statements they are about.
#[derive(Debug, Default)]
pub struct Report {
    findings: Vec<Finding>,
}

impl Report {
    /// Records a finding; the same finding twice (a statement converted once per service
    /// of a group) is kept once.
    pub fn add(&mut self, pos: Pos, statement: impl Into<String>, why: impl Into<String>) {
        let f = Finding {
            pos,
            statement: statement.into(),
            why: why.into(),
        };
        if !self.findings.contains(&f) {
            self.findings.push(f);
        }
    }

    /// Adds `other`'s findings after these.
    pub fn append(&mut self, other: Report) {
        for f in other.findings {
            self.add(f.pos, f.statement, f.why);
        }
    }

    pub fn findings(&self) -> &[Finding] {
        &self.findings
    }

    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
    }

    /// One `FILE:LINE: statement: why` line per finding, by file then line (a stable sort:
    /// findings about one line keep the order they were found in).
    pub fn render(&self, sources: &Sources) -> String {
        let mut sorted: Vec<&Finding> = self.findings.iter().collect();
        sorted.sort_by_key(|f| f.pos);
        let mut out = String::new();
        for f in sorted {
            out.push_str(&format!(
                "{}: {}: {}\n",
                sources.at(f.pos),
                f.statement,
                f.why
            ));
        }
        out
    }
}

/// An input that cannot be read or parsed: `FILE:LINE: message`, or `FILE: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub at: String,
    pub message: String,
}

impl ImportError {
    pub fn at(sources: &Sources, pos: Pos, message: impl Into<String>) -> ImportError {
        ImportError {
            at: sources.at(pos),
            message: message.into(),
        }
    }
}

impl fmt::Display for ImportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for ImportError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn findings_are_listed_by_file_and_line() {
        let mut sources = Sources::default();
        let main = sources.add("keepalived.conf".into());
        let inc = sources.add("conf.d/web.conf".into());
        let mut r = Report::default();
        r.add(Pos { file: inc, line: 3 }, "bindto 10.0.0.1", "not mapped");
        r.add(
            Pos {
                file: main,
                line: 9,
            },
            "smtp_alert",
            "no e-mail",
        );
        r.add(
            Pos {
                file: main,
                line: 2,
            },
            "router_id lb1",
            "no router id",
        );
        assert_eq!(
            r.render(&sources),
            "keepalived.conf:2: router_id lb1: no router id\n\
             keepalived.conf:9: smtp_alert: no e-mail\n\
             conf.d/web.conf:3: bindto 10.0.0.1: not mapped\n"
        );
    }
}
