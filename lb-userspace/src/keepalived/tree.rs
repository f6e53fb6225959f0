//! Statements and their blocks. A block opens with `{` on the line of its name, or alone
//! at the start of the next statement (it then belongs to the statement before it), and
//! closes with `}` anywhere; `virtual_ipaddress { 10.0.0.1 }` fits on one line. A block
//! left open at the end of the input, or a `}` that closes nothing, refuses the input:
//! where the operator meant the block to end cannot be guessed.

use super::{
    lexer::{Tok, Token},
    report::{ImportError, Pos, Sources},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stmt {
    pub pos: Pos,
    /// The keyword and its arguments.
    pub words: Vec<String>,
    /// The statements of its `{ ... }` block, if it has one.
    pub block: Option<Vec<Stmt>>,
}

impl Stmt {
    pub fn keyword(&self) -> &str {
        self.words.first().map_or("", String::as_str)
    }

    pub fn args(&self) -> &[String] {
        self.words.get(1..).unwrap_or(&[])
    }

    pub fn arg(&self, i: usize) -> Option<&str> {
        self.words.get(i + 1).map(String::as_str)
    }

    /// The statements of its block (none without a block).
    pub fn children(&self) -> &[Stmt] {
        self.block.as_deref().unwrap_or(&[])
    }

    /// The statement as it could be written in keepalived.conf (a block's header line);
    /// words holding spaces are quoted.
    pub fn text(&self) -> String {
        self.words
            .iter()
            .map(|w| {
                if w.is_empty() || w.chars().any(char::is_whitespace) {
                    format!("\"{}\"", w.replace('"', "\\\""))
                } else {
                    w.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Builds the statement tree of a token stream.
pub fn parse(tokens: Vec<Token>, sources: &Sources) -> Result<Vec<Stmt>, ImportError> {
    // Open blocks: the statement that owns each, with the statements read so far inside.
    let mut stack: Vec<(Stmt, Vec<Stmt>)> = Vec::new();
    let mut level: Vec<Stmt> = Vec::new();
    let mut words: Vec<String> = Vec::new();
    let mut start = Pos::default();
    // The current level's last statement ended at a line end or `;`, not with its block.
    let mut last_ended_open = false;
    for Token { tok, pos } in tokens {
        match tok {
            Tok::Word(w) => {
                if words.is_empty() {
                    start = pos;
                }
                words.push(w);
            }
            Tok::End => {
                if !words.is_empty() {
                    level.push(leaf(start, &mut words));
                    last_ended_open = true;
                }
            }
            Tok::Open => {
                let owner = if !words.is_empty() {
                    leaf(start, &mut words)
                } else if last_ended_open && level.last().is_some_and(|s| s.block.is_none()) {
                    level.pop().expect("checked above")
                } else {
                    return Err(ImportError::at(
                        sources,
                        pos,
                        "'{' without a name: a block opens on the line of its keyword or the next",
                    ));
                };
                stack.push((owner, std::mem::take(&mut level)));
                last_ended_open = false;
            }
            Tok::Close => {
                if !words.is_empty() {
                    level.push(leaf(start, &mut words));
                }
                let Some((mut owner, outer)) = stack.pop() else {
                    return Err(ImportError::at(
                        sources,
                        pos,
                        "'}' closes no block (one '}' too many, or a '{' missing above)",
                    ));
                };
                owner.block = Some(std::mem::replace(&mut level, outer));
                level.push(owner);
                last_ended_open = false;
            }
        }
    }
    if !words.is_empty() {
        level.push(leaf(start, &mut words));
    }
    if let Some((owner, _)) = stack.pop() {
        // Name the innermost open block: the outer ones may well close after it.
        return Err(ImportError::at(
            sources,
            owner.pos,
            format!(
                "block \"{}\" is not closed: '}}' missing before the end of the input",
                owner.text()
            ),
        ));
    }
    Ok(level)
}

fn leaf(pos: Pos, words: &mut Vec<String>) -> Stmt {
    Stmt {
        pos,
        words: std::mem::take(words),
        block: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keepalived::include::Reader;
    use crate::keepalived::report::Report;

    fn tree(text: &str) -> Result<Vec<Stmt>, String> {
        let mut sources = Sources::default();
        let mut report = Report::default();
        let file = sources.add("t.conf".into());
        let mut r = Reader {
            sources: &mut sources,
            report: &mut report,
            tokens: Vec::new(),
        };
        r.lex_text(text, file, std::path::Path::new("t.conf"), 0)
            .map_err(|e| e.to_string())?;
        let tokens = std::mem::take(&mut r.tokens);
        parse(tokens, &sources).map_err(|e| e.to_string())
    }

    fn shape(stmts: &[Stmt]) -> String {
        stmts
            .iter()
            .map(|s| match &s.block {
                Some(b) => format!("{}@{}{{{}}}", s.text(), s.pos.line, shape(b)),
                None => format!("{}@{}", s.text(), s.pos.line),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    #[test]
    fn blocks_open_on_their_line_or_the_next() {
        let t = tree(
            "vrrp_instance VI_1\n{\n  state MASTER\n  virtual_ipaddress { 10.0.0.1/24 }\n}\n\
             virtual_server 10.0.0.1 80 {\n real_server 10.0.0.2 80 {\n  TCP_CHECK {\n  }\n }\n}\n",
        )
        .unwrap();
        assert_eq!(
            shape(&t),
            "vrrp_instance VI_1@1{state MASTER@3,virtual_ipaddress@4{10.0.0.1/24@4}},\
             virtual_server 10.0.0.1 80@6{real_server 10.0.0.2 80@7{TCP_CHECK@8{}}}"
        );
    }

    #[test]
    fn shorthand_on_one_line() {
        let t =
            tree("virtual_server 1.2.3.4 42 { protocol TCP ; lb_algo rr ; lb_kind DR }").unwrap();
        assert_eq!(
            shape(&t),
            "virtual_server 1.2.3.4 42@1{protocol TCP@1,lb_algo rr@1,lb_kind DR@1}"
        );
    }

    #[test]
    fn unbalanced_braces_are_refused_with_their_line() {
        let err = tree("global_defs {\n router_id x\n}\nvrrp_instance A {\n interface eth0\n")
            .unwrap_err();
        assert_eq!(
            err,
            "t.conf:4: block \"vrrp_instance A\" is not closed: '}' missing before the end of the input"
        );
        let err = tree("a {\n}\n}\n").unwrap_err();
        assert!(err.starts_with("t.conf:3: '}' closes no block"), "{err}");
        let err = tree("a {\n}\n{\n}\n").unwrap_err();
        assert!(err.starts_with("t.conf:3: '{' without a name"), "{err}");
    }
}
