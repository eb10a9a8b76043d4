//! The `flow_content` language: a parser (not eval) for op expressions such as
//! `GenSystemPromptOp(template="...") >> (AOp() | BOp()) >> ChatOp()`, with FlowLLM/Python
//! precedence (`>>` binds tighter than `|`). Knows nothing of which ops exist; `flow` binds names
//! to the registry.
//!
//! ```text
//! par    := seq ('|' seq)*
//! seq    := term ('>>' term)*
//! term   := call | '(' par ')'
//! call   := NAME '(' [NAME '=' value (',' NAME '=' value)* [',']] ')'
//! value  := string | number | true | false | True | False | null | None | [..] | {..}
//! ```

use std::fmt;

use serde_json::{Map, Number, Value};

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub enum Expr {
    Call(Call),
    Seq(Vec<Expr>),
    Par(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub name: String,
    pub args: Map<String, Value>,
    /// Where the op name starts in the source.
    pub pos: Pos,
}

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub col: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub pos: Pos,
    pub message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.pos.line, self.pos.col, self.message)
    }
}

/// Renders the source line of `pos` with a caret under the column.
pub fn caret(source: &str, pos: Pos) -> String {
    let line = source.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    format!(
        "  {line}\n  {}^",
        " ".repeat(pos.col.saturating_sub(1).min(line.chars().count()))
    )
}

/// Parses a `flow_content` expression.
pub fn parse(source: &str) -> Result<Expr, Error> {
    let mut parser = Parser {
        src: source,
        at: 0,
        depth: 0,
    };
    parser.skip_ws();
    if parser.at >= source.len() {
        return Err(parser.error_at(
            0,
            "empty flow expression: write op calls such as `EchoOp()`",
        ));
    }
    let expr = parser.par()?;
    parser.skip_ws();
    if parser.at < source.len() {
        return Err(parser.error_here(&format!(
            "unexpected {} after a complete expression (join steps with `>>` or `|`)",
            parser.describe_next()
        )));
    }
    Ok(expr)
}

/// Nesting deeper than this is refused, so hostile input cannot overflow the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    src: &'a str,
    at: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.src[self.at..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    fn skip_ws(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                // Python comments are allowed in multi-line expressions.
                Some('#') => {
                    while !matches!(self.peek(), None | Some('\n')) {
                        self.bump();
                    }
                }
                _ => return,
            }
        }
    }

    fn pos_of(&self, offset: usize) -> Pos {
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line,
            col: before[line_start..].chars().count() + 1,
        }
    }

    fn error_at(&self, offset: usize, message: &str) -> Error {
        Error {
            pos: self.pos_of(offset),
            message: message.to_string(),
        }
    }

    fn error_here(&self, message: &str) -> Error {
        self.error_at(self.at, message)
    }

    fn describe_next(&self) -> String {
        match self.peek() {
            None => "end of expression".to_string(),
            Some(c) => {
                let token: String = if c.is_alphanumeric() || c == '_' {
                    self.rest()
                        .chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect()
                } else if self.rest().starts_with(">>") || self.rest().starts_with("<<") {
                    self.rest()[..2].to_string()
                } else {
                    c.to_string()
                };
                format!("`{token}`")
            }
        }
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here("expression nested too deeply"));
        }
        Ok(())
    }

    fn par(&mut self) -> Result<Expr, Error> {
        self.enter()?;
        let mut items = vec![self.seq()?];
        loop {
            self.skip_ws();
            if self.peek() == Some('|') {
                self.bump();
                items.push(self.seq()?);
            } else {
                break;
            }
        }
        self.depth -= 1;
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Par(items)
        })
    }

    fn seq(&mut self) -> Result<Expr, Error> {
        let mut items = vec![self.term()?];
        loop {
            self.skip_ws();
            if self.rest().starts_with(">>") {
                self.at += 2;
                items.push(self.term()?);
            } else if self.rest().starts_with("<<") {
                return Err(self.error_here(
                    "`<<` (attaching tool ops) is not supported yet; chain ops with `>>` or run them side by side with `|`",
                ));
            } else {
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Expr::Seq(items)
        })
    }

    fn term(&mut self) -> Result<Expr, Error> {
        self.skip_ws();
        match self.peek() {
            Some('(') => {
                self.bump();
                let inner = self.par()?;
                self.skip_ws();
                if self.peek() != Some(')') {
                    return Err(self.error_here(&format!(
                        "expected `)` to close the group, found {}",
                        self.describe_next()
                    )));
                }
                self.bump();
                Ok(inner)
            }
            Some(c) if c.is_alphabetic() || c == '_' => self.call().map(Expr::Call),
            _ => Err(self.error_here(&format!(
                "expected an op call such as `EchoOp()` or a `(` group, found {}",
                self.describe_next()
            ))),
        }
    }

    fn ident(&mut self) -> &'a str {
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_alphanumeric() || c == '_') {
            self.bump();
        }
        &self.src[start..self.at]
    }

    fn call(&mut self) -> Result<Call, Error> {
        let start = self.at;
        let name = self.ident().to_string();
        self.skip_ws();
        if self.peek() != Some('(') {
            return Err(self.error_here(&format!(
                "expected `(` after op name `{name}` (write `{name}()`)"
            )));
        }
        self.bump();
        let mut args = Map::new();
        loop {
            self.skip_ws();
            if self.peek() == Some(')') {
                self.bump();
                break;
            }
            let key_at = self.at;
            if !matches!(self.peek(), Some(c) if c.is_alphabetic() || c == '_') {
                return Err(self.error_here(&format!(
                    "expected a keyword argument `name=value` or `)`, found {}",
                    self.describe_next()
                )));
            }
            let key = self.ident().to_string();
            self.skip_ws();
            if self.peek() != Some('=') {
                return Err(self.error_here(&format!(
                    "expected `=` after argument name `{key}` (arguments are keyword-only: `{key}=...`)"
                )));
            }
            self.bump();
            let value = self.value()?;
            if args.insert(key.clone(), value).is_some() {
                return Err(self.error_at(key_at, &format!("argument `{key}` given twice")));
            }
            self.skip_ws();
            match self.peek() {
                Some(',') => {
                    self.bump();
                }
                Some(')') => {}
                _ => {
                    return Err(self.error_here(&format!(
                        "expected `,` or `)` in the arguments of `{name}`, found {}",
                        self.describe_next()
                    )))
                }
            }
        }
        Ok(Call {
            name,
            args,
            pos: self.pos_of(start),
        })
    }

    fn value(&mut self) -> Result<Value, Error> {
        self.skip_ws();
        self.enter()?;
        let value = match self.peek() {
            Some('"') | Some('\'') => Value::String(self.string()?),
            Some('[') => {
                self.bump();
                let mut items = Vec::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(']') {
                        self.bump();
                        break;
                    }
                    items.push(self.value()?);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some(']') => {}
                        _ => {
                            return Err(self.error_here(&format!(
                                "expected `,` or `]` in a list, found {}",
                                self.describe_next()
                            )))
                        }
                    }
                }
                Value::Array(items)
            }
            Some('{') => {
                self.bump();
                let mut map = Map::new();
                loop {
                    self.skip_ws();
                    if self.peek() == Some('}') {
                        self.bump();
                        break;
                    }
                    if !matches!(self.peek(), Some('"') | Some('\'')) {
                        return Err(self.error_here(&format!(
                            "expected a quoted key or `}}` in a dict, found {}",
                            self.describe_next()
                        )));
                    }
                    let key = self.string()?;
                    self.skip_ws();
                    if self.peek() != Some(':') {
                        return Err(self.error_here(&format!(
                            "expected `:` after dict key \"{key}\", found {}",
                            self.describe_next()
                        )));
                    }
                    self.bump();
                    let value = self.value()?;
                    map.insert(key, value);
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some('}') => {}
                        _ => {
                            return Err(self.error_here(&format!(
                                "expected `,` or `}}` in a dict, found {}",
                                self.describe_next()
                            )))
                        }
                    }
                }
                Value::Object(map)
            }
            Some(c) if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => self.number()?,
            Some(c) if c.is_alphabetic() => {
                let at = self.at;
                match self.ident() {
                    "true" | "True" => Value::Bool(true),
                    "false" | "False" => Value::Bool(false),
                    "null" | "None" => Value::Null,
                    word => {
                        return Err(self.error_at(
                            at,
                            &format!("`{word}` is not a value: quote strings (\"{word}\"); literals are numbers, true/false, null/None, [..] and {{..}}"),
                        ))
                    }
                }
            }
            _ => {
                return Err(
                    self.error_here(&format!("expected a value, found {}", self.describe_next()))
                )
            }
        };
        self.depth -= 1;
        Ok(value)
    }

    fn string(&mut self) -> Result<String, Error> {
        let start = self.at;
        let quote = self.bump().unwrap_or('"');
        let mut out = String::new();
        loop {
            match self.bump() {
                None => return Err(self.error_at(start, "string is never closed")),
                Some(c) if c == quote => return Ok(out),
                Some('\\') => {
                    let esc_at = self.at - 1;
                    match self.bump() {
                        Some('n') => out.push('\n'),
                        Some('t') => out.push('\t'),
                        Some('r') => out.push('\r'),
                        Some('0') => out.push('\0'),
                        Some('\\') => out.push('\\'),
                        Some('\'') => out.push('\''),
                        Some('"') => out.push('"'),
                        Some('\n') => {}
                        Some('u') => {
                            let hex: String = self.rest().chars().take(4).collect();
                            let code = (hex.len() == 4)
                                .then(|| u32::from_str_radix(&hex, 16).ok())
                                .flatten()
                                .and_then(char::from_u32);
                            match code {
                                Some(c) => {
                                    out.push(c);
                                    self.at += 4;
                                }
                                None => {
                                    return Err(self.error_at(
                                        esc_at,
                                        "bad \\u escape: write four hex digits, as in \\u00e9",
                                    ))
                                }
                            }
                        }
                        _ => {
                            return Err(self.error_at(
                                esc_at,
                                "unknown escape (use \\n, \\t, \\r, \\\\, \\', \\\" or \\uXXXX)",
                            ))
                        }
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn number(&mut self) -> Result<Value, Error> {
        let start = self.at;
        while matches!(self.peek(), Some(c) if c.is_ascii_alphanumeric() || matches!(c, '-' | '+' | '.' | '_'))
        {
            // A sign is only part of a number at its start or after an exponent marker.
            let c = self.peek().unwrap_or(' ');
            if matches!(c, '-' | '+') && self.at != start {
                let prev = self.src[..self.at].chars().last();
                if !matches!(prev, Some('e') | Some('E')) {
                    break;
                }
            }
            self.bump();
        }
        let text: String = self.src[start..self.at].replace('_', "");
        let text = text.strip_prefix('+').unwrap_or(&text);
        if let Ok(int) = text.parse::<i64>() {
            return Ok(Value::Number(int.into()));
        }
        if let Ok(int) = text.parse::<u64>() {
            return Ok(Value::Number(int.into()));
        }
        match text.parse::<f64>().ok().and_then(Number::from_f64) {
            Some(n) if !text.eq_ignore_ascii_case("inf") && !text.contains("nan") => {
                Ok(Value::Number(n))
            }
            _ => Err(self.error_at(
                start,
                &format!("`{}` is not a number", &self.src[start..self.at]),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Renders an expression compactly so tests read as tables.
    fn show(expr: &Expr) -> String {
        match expr {
            Expr::Call(call) if call.args.is_empty() => call.name.clone(),
            Expr::Call(call) => format!("{}{}", call.name, Value::Object(call.args.clone())),
            Expr::Seq(items) => format!(
                "seq({})",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
            Expr::Par(items) => format!(
                "par({})",
                items.iter().map(show).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn check(input: &str, expected: &str) {
        match parse(input) {
            Ok(expr) => assert_eq!(show(&expr), expected, "input: {input}"),
            Err(err) => panic!("input {input:?} failed: {err}"),
        }
    }

    fn check_err(input: &str, expected: &str) {
        match parse(input) {
            Ok(expr) => panic!("input {input:?} parsed as {}", show(&expr)),
            Err(err) => assert_eq!(err.to_string(), expected, "input: {input}"),
        }
    }

    #[test]
    fn structure_and_precedence() {
        check("AOp()", "AOp");
        check("AOp() >> BOp()", "seq(AOp, BOp)");
        check("AOp() | BOp()", "par(AOp, BOp)");
        check("AOp() >> BOp() | COp()", "par(seq(AOp, BOp), COp)");
        check("AOp() | BOp() >> COp()", "par(AOp, seq(BOp, COp))");
        check("(AOp() | BOp()) >> COp()", "seq(par(AOp, BOp), COp)");
        check(
            "AOp() >> (BOp() | COp()) >> DOp()",
            "seq(AOp, par(BOp, COp), DOp)",
        );
        check("((AOp()))", "AOp");
        check("AOp() >> BOp() >> COp()", "seq(AOp, BOp, COp)");
        check("  AOp()\n  >> BOp()  # comment\n", "seq(AOp, BOp)");
        check("A_1Op ( ) >>B2Op()", "seq(A_1Op, B2Op)");
    }

    #[test]
    fn literals() {
        let cases = [
            ("x='a b'", json!("a b")),
            ("x=\"q\\\"uote\\n\"", json!("q\"uote\n")),
            ("x='\\u00e9'", json!("é")),
            ("x=42", json!(42)),
            ("x=-7", json!(-7)),
            ("x=+3", json!(3)),
            ("x=1_000", json!(1000)),
            ("x=2.5", json!(2.5)),
            ("x=1e3", json!(1000.0)),
            ("x=-1.5e-2", json!(-0.015)),
            ("x=true", json!(true)),
            ("x=False", json!(false)),
            ("x=None", json!(null)),
            ("x=null", json!(null)),
            ("x=[1, 'a', [True]]", json!([1, "a", [true]])),
            ("x=[]", json!([])),
            (
                "x={'k': 1, \"j\": {'n': None}}",
                json!({"k": 1, "j": {"n": null}}),
            ),
            ("x={}", json!({})),
            ("x=[1,2,],", json!([1, 2])),
        ];
        for (args, expected) in cases {
            let src = format!("AOp({args})");
            let expr = parse(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
            let Expr::Call(call) = expr else {
                panic!("{src}: not a call")
            };
            assert_eq!(call.args["x"], expected, "{src}");
        }
    }

    #[test]
    fn errors_have_positions() {
        check_err(
            "",
            "1:1: empty flow expression: write op calls such as `EchoOp()`",
        );
        check_err(
            "AOp",
            "1:4: expected `(` after op name `AOp` (write `AOp()`)",
        );
        check_err(
            "AOp() >>",
            "1:9: expected an op call such as `EchoOp()` or a `(` group, found end of expression",
        );
        check_err(
            "AOp() BOp()",
            "1:7: unexpected `BOp` after a complete expression (join steps with `>>` or `|`)",
        );
        check_err(
            "(AOp() | BOp()",
            "1:15: expected `)` to close the group, found end of expression",
        );
        check_err(
            "AOp(n 1)",
            "1:7: expected `=` after argument name `n` (arguments are keyword-only: `n=...`)",
        );
        check_err(
            "AOp(1)",
            "1:5: expected a keyword argument `name=value` or `)`, found `1`",
        );
        check_err("AOp(x='abc)", "1:7: string is never closed");
        check_err("AOp(x=abc)", "1:7: `abc` is not a value: quote strings (\"abc\"); literals are numbers, true/false, null/None, [..] and {..}");
        check_err("AOp(x=1, x=2)", "1:10: argument `x` given twice");
        check_err(
            "AOp(x=1 y=2)",
            "1:9: expected `,` or `)` in the arguments of `AOp`, found `y`",
        );
        check_err("AOp(x=1.2.3)", "1:7: `1.2.3` is not a number");
        check_err(
            "AOp() >>\n  >> BOp()",
            "2:3: expected an op call such as `EchoOp()` or a `(` group, found `>>`",
        );
        check_err("AOp() << BOp()", "1:7: `<<` (attaching tool ops) is not supported yet; chain ops with `>>` or run them side by side with `|`");
        check_err(
            "AOp(x=[1 2])",
            "1:10: expected `,` or `]` in a list, found `2`",
        );
        check_err(
            "AOp(x={a: 1})",
            "1:8: expected a quoted key or `}` in a dict, found `a`",
        );
        check_err(
            "AOp(x='\\q')",
            "1:8: unknown escape (use \\n, \\t, \\r, \\\\, \\', \\\" or \\uXXXX)",
        );
        check_err(
            "é >> AOp()",
            "1:3: expected `(` after op name `é` (write `é()`)",
        );
        check_err(&"(".repeat(100), "1:65: expression nested too deeply");
    }

    #[test]
    fn caret_points_at_the_column() {
        assert_eq!(
            caret("AOp() BOp()", Pos { line: 1, col: 7 }),
            "  AOp() BOp()\n        ^"
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,64}") {
            let _ = parse(&input);
        }

        #[test]
        fn grammar_shaped_input_never_panics(input in "[A-Za-z()>|=,'\"\\[\\]{}:0-9.\\-e \n]{0,80}") {
            let _ = parse(&input);
        }
    }
}
