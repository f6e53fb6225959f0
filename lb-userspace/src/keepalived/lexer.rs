//! keepalived.conf's words, one line at a time: comments from `#` or `!` to the end of the
//! line (not inside quotes; `\#` and `\!` are the characters), `"` and `'` quoted strings
//! with the shell's escapes (quotes removed, the rest of the word kept), `{` and `}` as
//! words of their own wherever they stand, `\` at the end of a line continuing it on the
//! next, and `;` ending a statement as a line end does (the seed slides' shorthand,
//! `protocol TCP ; lb_algo rr ; lb_kind DR`).

use super::report::Pos;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Word(String),
    /// `{`
    Open,
    /// `}`
    Close,
    /// The end of a statement: a line's end or `;`.
    End,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Token {
    pub tok: Tok,
    pub pos: Pos,
}

/// One line's tokens (without the final `End`), and whether it ends with a continuation `\`.
#[derive(Debug, PartialEq, Eq)]
pub struct Lexed {
    pub toks: Vec<Tok>,
    pub continued: bool,
}

/// Splits one line into tokens. The error is a quote left open at the end of the line.
pub fn lex_line(line: &str) -> Result<Lexed, String> {
    let mut lx = LineLexer::default();
    let mut chars = line.chars().peekable();
    let mut continued = false;
    while let Some(c) = chars.next() {
        if let Some(q) = lx.quote {
            match c {
                _ if c == q => lx.quote = None,
                '\\' => match chars.next() {
                    Some(e) => unescape(e, &mut chars, &mut lx.word),
                    None => lx.word.push('\\'),
                },
                _ => lx.word.push(c),
            }
            continue;
        }
        match c {
            '"' | '\'' => {
                lx.quote = Some(c);
                lx.in_word = true;
            }
            '#' | '!' => break,
            '\\' => match chars.peek() {
                Some(&e @ ('#' | '!')) => {
                    chars.next();
                    lx.push_char(e);
                }
                None => {
                    continued = true;
                    break;
                }
                Some(_) => lx.push_char('\\'),
            },
            ';' => lx.mark(Tok::End),
            '{' => lx.mark(Tok::Open),
            '}' => lx.mark(Tok::Close),
            _ if c.is_whitespace() => lx.flush(),
            _ => lx.push_char(c),
        }
    }
    if let Some(q) = lx.quote {
        return Err(format!(
            "the quote {q} opened on this line is not closed (quoted strings end on their line)"
        ));
    }
    lx.flush();
    Ok(Lexed {
        toks: lx.toks,
        continued,
    })
}

#[derive(Default)]
struct LineLexer {
    toks: Vec<Tok>,
    word: String,
    /// A word is under way (possibly an empty quoted one, `""`).
    in_word: bool,
    quote: Option<char>,
}

impl LineLexer {
    fn push_char(&mut self, c: char) {
        self.word.push(c);
        self.in_word = true;
    }

    fn flush(&mut self) {
        if self.in_word {
            self.toks.push(Tok::Word(std::mem::take(&mut self.word)));
            self.in_word = false;
        }
    }

    fn mark(&mut self, t: Tok) {
        self.flush();
        self.toks.push(t);
    }
}

/// The character escaped by `\e` in a quoted string, as keepalived reads it.
fn unescape(e: char, rest: &mut std::iter::Peekable<std::str::Chars<'_>>, out: &mut String) {
    let simple = match e {
        'a' => Some('\x07'),
        'b' => Some('\x08'),
        'E' => Some('\x1b'),
        'f' => Some('\x0c'),
        'n' => Some('\n'),
        'r' => Some('\r'),
        't' => Some('\t'),
        'v' => Some('\x0b'),
        _ => None,
    };
    if let Some(c) = simple {
        out.push(c);
        return;
    }
    let mut number = |radix: u32, first: Option<u32>, max_digits: usize| {
        let mut value = first.unwrap_or(0);
        let mut digits = usize::from(first.is_some());
        while digits < max_digits {
            match rest.peek().and_then(|c| c.to_digit(radix)) {
                Some(d) => {
                    value = value * radix + d;
                    rest.next();
                    digits += 1;
                }
                None => break,
            }
        }
        (digits > 0).then(|| char::from_u32(value & 0xff).unwrap_or('?'))
    };
    match e {
        'x' => match number(16, None, 2) {
            Some(c) => out.push(c),
            None => out.push('x'),
        },
        '0'..='7' => out.push(number(8, e.to_digit(8), 3).unwrap_or('\0')),
        'c' => match rest.next() {
            Some(c) => out.push(char::from_u32(c.to_ascii_uppercase() as u32 ^ 0x40).unwrap_or(c)),
            None => out.push('c'),
        },
        _ => out.push(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        lex_line(line)
            .unwrap()
            .toks
            .into_iter()
            .map(|t| match t {
                Tok::Word(w) => w,
                Tok::Open => "{".into(),
                Tok::Close => "}".into(),
                Tok::End => ";".into(),
            })
            .collect()
    }

    #[test]
    fn words_braces_and_comments() {
        assert_eq!(
            words("vrrp_instance VI_1 {"),
            ["vrrp_instance", "VI_1", "{"]
        );
        assert_eq!(words("  priority 150   # the master"), ["priority", "150"]);
        assert_eq!(words("! a whole comment line"), Vec::<String>::new());
        assert_eq!(words("url{path /}"), ["url", "{", "path", "/", "}"]);
        assert_eq!(words("weight 3!comment"), ["weight", "3"]);
        assert_eq!(words(r"auth_pass s\#cret"), ["auth_pass", "s#cret"]);
    }

    #[test]
    fn semicolons_split_statements_as_in_the_seed_slides() {
        // The slides write a no-break space before each `;`.
        assert_eq!(
            words("protocol TCP\u{a0}; lb_algo rr\u{a0}; lb_kind DR"),
            ["protocol", "TCP", ";", "lb_algo", "rr", ";", "lb_kind", "DR"]
        );
        assert_eq!(
            words("bindto tac; connect_port 42"),
            ["bindto", "tac", ";", "connect_port", "42"]
        );
    }

    #[test]
    fn quoted_strings_keep_spaces_and_comment_characters() {
        assert_eq!(
            words(r#"misc_path "/opt/bin/iweight -p iwash1""#),
            ["misc_path", "/opt/bin/iweight -p iwash1"]
        );
        assert_eq!(
            words(r#"script "pidof haproxy # not a comment; nor a split {""#),
            ["script", "pidof haproxy # not a comment; nor a split {"]
        );
        assert_eq!(words(r#"abcd" efg h "mnop"#), ["abcd efg h mnop"]);
        assert_eq!(words(r#"notify 'a "b" c' """#), ["notify", "a \"b\" c", ""]);
        assert_eq!(
            words(r#""tab\there \x41\101 \"q\" \\""#),
            ["tab\there AA \"q\" \\"]
        );
    }

    #[test]
    fn continuation_and_unterminated_quote() {
        let l = lex_line(r"notify_master /bin/a \").unwrap();
        assert!(l.continued);
        assert_eq!(
            l.toks,
            [
                Tok::Word("notify_master".into()),
                Tok::Word("/bin/a".into())
            ]
        );
        let err = lex_line(r#"misc_path "/bin/check"#).unwrap_err();
        assert!(err.contains("not closed"), "{err}");
    }
}
