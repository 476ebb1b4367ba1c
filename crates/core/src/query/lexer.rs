//! Splits query text into tokens, remembering the 1-based character column of each for error messages.
//!
//! The lexer is pulled one token at a time by the parser rather than run up front, so the first error
//! reported is always the leftmost one. Keywords are not distinguished here: `AND` is a [`Word`] like
//! `prod`, and the parser decides from its position whether a word is a keyword, a field or a value.
//!
//! [`Word`]: TokenKind::Word

use std::iter::Peekable;
use std::str::Chars;

use crate::query::ast::{truncate, Op};
use crate::query::QueryError;

/// The words the parser treats as keywords (case-insensitively) where a keyword may appear.
pub(crate) const KEYWORDS: [&str; 5] = ["AND", "OR", "NOT", "IN", "EXISTS"];

/// What a token is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenKind {
    /// A run of bare-word characters: a keyword, field name or unquoted value.
    Word(String),
    /// A quoted string with escapes resolved.
    Str(String),
    LParen,
    RParen,
    Comma,
    /// One of the symbolic comparison operators (`=` … `!~`).
    Op(Op),
    End,
}

/// A token and where it starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: TokenKind,
    /// 1-based character column of the token's first character (one past the end for `End`).
    pub column: usize,
}

pub(crate) struct Lexer<'a> {
    chars: Peekable<Chars<'a>>,
    /// Column of the next character `chars` will yield.
    column: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(text: &'a str) -> Lexer<'a> {
        Lexer {
            chars: text.chars().peekable(),
            column: 1,
        }
    }

    /// Reads the next token, skipping whitespace.
    pub(crate) fn next_token(&mut self) -> Result<Token, QueryError> {
        while self.chars.next_if(|c| c.is_whitespace()).is_some() {
            self.column += 1;
        }
        let column = self.column;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: TokenKind::End,
                column,
            });
        };
        let kind = match c {
            '(' => TokenKind::LParen,
            ')' => TokenKind::RParen,
            ',' => TokenKind::Comma,
            '=' => TokenKind::Op(Op::Eq),
            '~' => TokenKind::Op(Op::Glob),
            '!' if self.eat('=') => TokenKind::Op(Op::Ne),
            '!' if self.eat('~') => TokenKind::Op(Op::NotGlob),
            '!' => {
                return Err(QueryError::new(
                    column,
                    "expected '=' or '~' after '!' (the operators are != and !~)",
                ))
            }
            '<' if self.eat('=') => TokenKind::Op(Op::Le),
            '<' if self.chars.peek() == Some(&'>') => {
                return Err(QueryError::new(
                    column,
                    "'<>' is not an operator; use != for \"not equal\"",
                ))
            }
            '<' => TokenKind::Op(Op::Lt),
            '>' if self.eat('=') => TokenKind::Op(Op::Ge),
            '>' => TokenKind::Op(Op::Gt),
            '"' | '\'' => TokenKind::Str(self.string(c, column)?),
            c if is_bare_char(c) => {
                let mut word = String::from(c);
                while let Some(c) = self.chars.next_if(|c| is_bare_char(*c)) {
                    self.column += 1;
                    word.push(c);
                }
                TokenKind::Word(word)
            }
            '&' | '|' => {
                return Err(QueryError::new(
                    column,
                    format!("unexpected character '{c}'; combine conditions with AND, OR and NOT"),
                ))
            }
            other => {
                return Err(QueryError::new(
                    column,
                    format!(
                    "unexpected character {other:?}; quote values that contain it, e.g. \"a b\""
                ),
                ))
            }
        };
        Ok(Token { kind, column })
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.chars.next()?;
        self.column += 1;
        Some(c)
    }

    /// Consumes the next character if it is `expected`.
    fn eat(&mut self, expected: char) -> bool {
        let eaten = self.chars.next_if_eq(&expected).is_some();
        if eaten {
            self.column += 1;
        }
        eaten
    }

    /// Reads the rest of a string opened by `quote` at `start`.
    fn string(&mut self, quote: char, start: usize) -> Result<String, QueryError> {
        let unterminated = || {
            QueryError::new(
                start,
                format!("unterminated string: no closing {quote} before the end of the query"),
            )
        };
        let mut text = String::new();
        loop {
            let column = self.column;
            match self.bump().ok_or_else(unterminated)? {
                c if c == quote => return Ok(text),
                '\\' => match self.bump().ok_or_else(unterminated)? {
                    escaped @ ('"' | '\'' | '\\') => text.push(escaped),
                    other => {
                        return Err(QueryError::new(
                            column,
                            format!("unknown escape '\\{other}' in string; only \\\", \\' and \\\\ are allowed"),
                        ))
                    }
                },
                // Control characters (NUL above all, which PostgreSQL text cannot hold) never
                // belong in device attributes, so a query containing one is a mistake.
                c if c.is_control() => {
                    return Err(QueryError::new(
                        column,
                        format!("control character {c:?} is not allowed in a string"),
                    ))
                }
                c => text.push(c),
            }
        }
    }
}

impl TokenKind {
    /// How an error message names this token, e.g. `'c'`, `keyword AND`, `end of query`.
    pub(crate) fn describe(&self) -> String {
        match self {
            TokenKind::Word(word) if is_keyword(word) => {
                format!("keyword {}", word.to_ascii_uppercase())
            }
            TokenKind::Word(word) => format!("'{}'", truncate(word)),
            TokenKind::Str(text) => format!("string {:?}", truncate(text)),
            TokenKind::LParen => "'('".to_owned(),
            TokenKind::RParen => "')'".to_owned(),
            TokenKind::Comma => "','".to_owned(),
            TokenKind::Op(op) => format!("'{op}'"),
            TokenKind::End => "end of query".to_owned(),
        }
    }

    /// True if this is the bare word `keyword`, in any letter case.
    pub(crate) fn is_keyword(&self, keyword: &str) -> bool {
        matches!(self, TokenKind::Word(word) if word.eq_ignore_ascii_case(keyword))
    }
}

/// Characters that may appear in an unquoted word: enough for versions (`2.3.0+b1`), timestamps
/// (`2026-11-23T10:00:00Z`), relative times (`now-10m`), globs (`berlin-*`) and MAC-style ids.
pub(crate) fn is_bare_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "._:/*?+@-".contains(c)
}

/// True if `word` is a keyword in any letter case.
pub(crate) fn is_keyword(word: &str) -> bool {
    KEYWORDS
        .iter()
        .any(|keyword| word.eq_ignore_ascii_case(keyword))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lex(text: &str) -> Result<Vec<(TokenKind, usize)>, QueryError> {
        let mut lexer = Lexer::new(text);
        let mut tokens = Vec::new();
        loop {
            let token = lexer.next_token()?;
            let end = token.kind == TokenKind::End;
            tokens.push((token.kind, token.column));
            if end {
                return Ok(tokens);
            }
        }
    }

    fn word(w: &str) -> TokenKind {
        TokenKind::Word(w.to_owned())
    }

    #[test]
    fn operators_and_words_split_without_spaces_and_carry_columns() {
        let tokens = lex("last_seen<now-10m AND(fw!=2.3.0)").unwrap();
        assert_eq!(
            tokens,
            vec![
                (word("last_seen"), 1),
                (TokenKind::Op(Op::Lt), 10),
                (word("now-10m"), 11),
                (word("AND"), 19),
                (TokenKind::LParen, 22),
                (word("fw"), 23),
                (TokenKind::Op(Op::Ne), 25),
                (word("2.3.0"), 27),
                (TokenKind::RParen, 32),
                (TokenKind::End, 33),
            ]
        );
    }

    #[test]
    fn negative_and_decimal_numbers_are_single_words_even_right_after_an_operator() {
        let tokens = lex("rssi_dbm<-100 OR battery_v>=3.0 OR temp_c = -0.5").unwrap();
        assert_eq!(
            tokens,
            vec![
                (word("rssi_dbm"), 1),
                (TokenKind::Op(Op::Lt), 9),
                (word("-100"), 10),
                (word("OR"), 15),
                (word("battery_v"), 18),
                (TokenKind::Op(Op::Ge), 27),
                (word("3.0"), 29),
                (word("OR"), 33),
                (word("temp_c"), 36),
                (TokenKind::Op(Op::Eq), 43),
                (word("-0.5"), 45),
                (TokenKind::End, 49),
            ]
        );
    }

    #[test]
    fn every_symbolic_operator_is_recognised() {
        let cases = [
            ("=", Op::Eq),
            ("!=", Op::Ne),
            ("<", Op::Lt),
            ("<=", Op::Le),
            (">", Op::Gt),
            (">=", Op::Ge),
            ("~", Op::Glob),
            ("!~", Op::NotGlob),
        ];
        for (text, op) in cases {
            assert_eq!(lex(text).unwrap()[0].0, TokenKind::Op(op), "{text}");
        }
    }

    #[test]
    fn strings_resolve_escapes_and_columns_count_characters_not_bytes() {
        let tokens = lex(r#""a \"b\" \\ 'c'" 'it\'s' "é" x"#).unwrap();
        assert_eq!(tokens[0], (TokenKind::Str(r#"a "b" \ 'c'"#.to_owned()), 1));
        assert_eq!(tokens[1], (TokenKind::Str("it's".to_owned()), 18));
        assert_eq!(tokens[2], (TokenKind::Str("é".to_owned()), 26));
        assert_eq!(tokens[3], (word("x"), 30));
    }

    #[test]
    fn malformed_input_is_reported_at_the_offending_column() {
        let cases = [
            (
                "a ! b",
                3,
                "expected '=' or '~' after '!' (the operators are != and !~)",
            ),
            (
                "a <> b",
                3,
                "'<>' is not an operator; use != for \"not equal\"",
            ),
            (
                "a = b && c",
                7,
                "unexpected character '&'; combine conditions with AND, OR and NOT",
            ),
            (
                "site = \"a\u{0}b\"",
                10,
                "control character '\\0' is not allowed in a string",
            ),
            (
                "site = \"abc",
                8,
                "unterminated string: no closing \" before the end of the query",
            ),
            (
                "x = 'a\\nb'",
                7,
                "unknown escape '\\n' in string; only \\\", \\' and \\\\ are allowed",
            ),
            (
                "x = é",
                5,
                "unexpected character 'é'; quote values that contain it, e.g. \"a b\"",
            ),
        ];
        for (text, column, message) in cases {
            let err = lex(text).expect_err(text);
            assert_eq!(
                (err.column, err.message.as_str()),
                (column, message),
                "{text}"
            );
        }
    }
}
