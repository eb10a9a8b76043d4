//! The `flow_content` language: a parser (not eval) for op expressions such as
//! `GenSystemPromptOp(template="...") >> (AOp() | BOp()) >> ChatOp()`, with FlowLLM/Python
//! precedence (`>>` binds tighter than `|`), sub-ops attached with `<<` (tighter than `>>`:
//! `A() >> B() << [C()]` attaches C to B), and FlowLLM's multi-line form: statements that name
//! things, then the flow expression. Knows nothing of which ops exist; `flow` binds names to
//! the registry.
//!
//! ```text
//! program := stmt* par                      statements, then the flow (newlines are spaces)
//! stmt    := NAME '=' par                   name a value (names resolve at the end, so
//!          | NAME '.ops.' NAME '=' sub        later attachments are seen: FlowLLM's
//!          | NAME ('<<' attach)+              references); `a.ops.t = X()` attaches X as `t`
//! par     := seq ('|' seq)*
//! seq     := sub ('>>' sub)*
//! sub     := term ('<<' attach)*            attach sub-ops to the op call on the left
//! attach  := sub | '[' sub (',' sub)* ']' | '{' string ':' sub (',' string ':' sub)* '}'
//! term    := call | NAME | '(' par ')'
//! call    := NAME '(' [NAME '=' value (',' NAME '=' value)* [',']] ')'
//! value   := string | number | true | false | True | False | null | None | [..] | {..}
//! ```
//!
//! A sub-op is one op call (with its own sub-ops); `#` starts a comment.

use std::collections::HashMap;
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
    /// Sub-ops attached with `<<` (or `name.ops.tool = ...`), in order.
    pub subs: Vec<Sub>,
}

/// A sub-op: its name when given (`{"search": SearchOp()}`, `agent.ops.search = ...`), else
/// the op decides (its tool name).
#[derive(Clone, Debug, PartialEq)]
pub struct Sub {
    pub name: Option<String>,
    pub call: Call,
}

/// An expression before names are resolved.
#[derive(Clone, Debug)]
enum Raw {
    Call(Call),
    Name(String, Pos),
    Seq(Vec<Raw>),
    Par(Vec<Raw>),
    /// `left << subs`, at the position of `<<`.
    Attach(Box<Raw>, Vec<(Option<String>, Raw, Pos)>, Pos),
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

/// Parses a `flow_content` program: statements, then the flow expression.
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
    let mut names: HashMap<String, Raw> = HashMap::new();
    loop {
        parser.skip_ws();
        if parser.at >= source.len() {
            return Err(parser.error_here(
                "the flow ends with an assignment: its last statement must be the flow expression (for example the name just assigned)",
            ));
        }
        let statement_at = parser.at;
        if let Some(target) = parser.assignment_target() {
            let value = parser.par()?;
            match target.as_slice() {
                [name] => {
                    names.insert(name.clone(), value);
                }
                [name, ops, tool] if ops == "ops" => {
                    let pos = parser.pos_of(statement_at);
                    let Some(current) = names.remove(name) else {
                        return Err(parser.error_at(
                            statement_at,
                            &format!("`{name}` is not defined yet: assign it first (`{name} = SomeOp()`)"),
                        ));
                    };
                    let attached = Raw::Attach(Box::new(current), vec![(Some(tool.clone()), value, pos)], pos);
                    names.insert(name.clone(), attached);
                }
                _ => {
                    return Err(parser.error_at(
                        statement_at,
                        &format!(
                            "cannot assign to `{}`: assign a name (`agent = ...`) or a sub-op (`agent.ops.search = ...`)",
                            target.join(".")
                        ),
                    ))
                }
            }
            continue;
        }
        let expr = parser.par()?;
        parser.skip_ws();
        if parser.at >= source.len() {
            return resolve(expr, &names, &mut Vec::new());
        }
        // More follows: this statement must attach sub-ops to a name (`agent << [...]`).
        match attach_root(&expr) {
            Some(name) if names.contains_key(name) => {
                let name = name.to_string();
                let current = names.remove(&name).unwrap_or(Raw::Seq(Vec::new()));
                names.insert(name, rebase(expr, current));
            }
            _ => {
                return Err(parser.error_here(&format!(
                    "unexpected {} after a complete expression (join steps with `>>` or `|`; in a multi-line flow only the last statement is the flow, the ones before assign names)",
                    parser.describe_next()
                )))
            }
        }
    }
}

/// The name at the root of `name << ... << ...`.
fn attach_root(expr: &Raw) -> Option<&str> {
    match expr {
        Raw::Attach(left, _, _) => match left.as_ref() {
            Raw::Name(name, _) => Some(name),
            other => attach_root(other),
        },
        _ => None,
    }
}

/// `name << a << b` with `name` replaced by what it stood for.
fn rebase(expr: Raw, current: Raw) -> Raw {
    match expr {
        Raw::Attach(left, subs, pos) => match *left {
            Raw::Name(..) => Raw::Attach(Box::new(current), subs, pos),
            other => Raw::Attach(Box::new(rebase(other, current)), subs, pos),
        },
        other => other,
    }
}

/// Replaces names by what they stand for and folds attachments into their op calls.
fn resolve(raw: Raw, names: &HashMap<String, Raw>, stack: &mut Vec<String>) -> Result<Expr, Error> {
    let error = |pos: Pos, message: String| Error { pos, message };
    Ok(match raw {
        Raw::Call(call) => Expr::Call(call),
        Raw::Seq(items) => Expr::Seq(
            items
                .into_iter()
                .map(|item| resolve(item, names, stack))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Par(items) => Expr::Par(
            items
                .into_iter()
                .map(|item| resolve(item, names, stack))
                .collect::<Result<_, _>>()?,
        ),
        Raw::Name(name, pos) => {
            if stack.contains(&name) {
                return Err(error(
                    pos,
                    format!("`{name}` is defined in terms of itself"),
                ));
            }
            if stack.len() >= MAX_DEPTH {
                return Err(error(pos, "names refer to names too deeply".to_string()));
            }
            let Some(value) = names.get(&name) else {
                return Err(error(
                    pos,
                    format!("`{name}` is not defined: call the op with `{name}()`, or assign the name first (`{name} = SomeOp()`)"),
                ));
            };
            stack.push(name);
            let resolved = resolve(value.clone(), names, stack);
            stack.pop();
            resolved?
        }
        Raw::Attach(left, subs, pos) => {
            let Expr::Call(mut call) = resolve(*left, names, stack)? else {
                return Err(error(
                    pos,
                    "`<<` attaches sub-ops to one op call, not to a chain or a group (write `AgentOp() << [...]`)".to_string(),
                ));
            };
            for (name, raw, at) in subs {
                let Expr::Call(sub) = resolve(raw, names, stack)? else {
                    return Err(error(
                        at,
                        "a sub-op attached with `<<` is one op call (for a chain, make it a flow and attach `FlowOp(flow=\"...\")`)".to_string(),
                    ));
                };
                call.subs.push(Sub { name, call: sub });
            }
            Expr::Call(call)
        }
    })
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

    fn par(&mut self) -> Result<Raw, Error> {
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
            Raw::Par(items)
        })
    }

    fn seq(&mut self) -> Result<Raw, Error> {
        let mut items = vec![self.sub()?];
        loop {
            self.skip_ws();
            if self.rest().starts_with(">>") {
                self.at += 2;
                items.push(self.sub()?);
            } else {
                break;
            }
        }
        Ok(if items.len() == 1 {
            items.remove(0)
        } else {
            Raw::Seq(items)
        })
    }

    /// `term ('<<' attach)*`.
    fn sub(&mut self) -> Result<Raw, Error> {
        let mut left = self.term()?;
        loop {
            self.skip_ws();
            if !self.rest().starts_with("<<") {
                break;
            }
            let pos = self.pos_of(self.at);
            self.at += 2;
            let subs = self.attach()?;
            left = Raw::Attach(Box::new(left), subs, pos);
        }
        Ok(left)
    }

    /// What follows `<<`: one sub-op, a list of them, or a dict naming them.
    fn attach(&mut self) -> Result<Vec<(Option<String>, Raw, Pos)>, Error> {
        self.enter()?;
        self.skip_ws();
        let mut subs = Vec::new();
        match self.peek() {
            Some('[') => {
                self.bump();
                loop {
                    self.skip_ws();
                    if self.peek() == Some(']') {
                        self.bump();
                        break;
                    }
                    let pos = self.pos_of(self.at);
                    subs.push((None, self.sub()?, pos));
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some(']') => {}
                        _ => {
                            return Err(self.error_here(&format!(
                                "expected `,` or `]` in the list of sub-ops, found {}",
                                self.describe_next()
                            )))
                        }
                    }
                }
            }
            Some('{') => {
                self.bump();
                loop {
                    self.skip_ws();
                    if self.peek() == Some('}') {
                        self.bump();
                        break;
                    }
                    if !matches!(self.peek(), Some('"' | '\'')) {
                        return Err(self.error_here(&format!(
                            "expected a quoted sub-op name or `}}`, found {}",
                            self.describe_next()
                        )));
                    }
                    let key_at = self.at;
                    let name = self.string()?;
                    if subs
                        .iter()
                        .any(|(n, _, _)| n.as_deref() == Some(name.as_str()))
                    {
                        return Err(self.error_at(key_at, &format!("sub-op `{name}` named twice")));
                    }
                    self.skip_ws();
                    if self.peek() != Some(':') {
                        return Err(self.error_here(&format!(
                            "expected `:` after sub-op name \"{name}\", found {}",
                            self.describe_next()
                        )));
                    }
                    self.bump();
                    self.skip_ws();
                    let pos = self.pos_of(self.at);
                    subs.push((Some(name), self.sub()?, pos));
                    self.skip_ws();
                    match self.peek() {
                        Some(',') => {
                            self.bump();
                        }
                        Some('}') => {}
                        _ => {
                            return Err(self.error_here(&format!(
                                "expected `,` or `}}` in the dict of sub-ops, found {}",
                                self.describe_next()
                            )))
                        }
                    }
                }
            }
            // Left-associative as in Python: `A() << B() << C()` attaches both to A.
            _ => {
                let pos = self.pos_of(self.at);
                subs.push((None, self.term()?, pos));
            }
        }
        self.depth -= 1;
        Ok(subs)
    }

    /// At a statement's start: `NAME ('.' NAME)* '='` (not `==`) is an assignment; consumes it
    /// and gives the target. Anything else leaves the position as it was.
    fn assignment_target(&mut self) -> Option<Vec<String>> {
        let start = self.at;
        let mut target = Vec::new();
        loop {
            if !matches!(self.peek(), Some(c) if c.is_alphabetic() || c == '_') {
                self.at = start;
                return None;
            }
            target.push(self.ident().to_string());
            if self.peek() == Some('.') {
                self.bump();
                continue;
            }
            break;
        }
        self.skip_ws();
        if self.peek() == Some('=') && !self.rest().starts_with("==") {
            self.bump();
            Some(target)
        } else {
            self.at = start;
            None
        }
    }

    fn term(&mut self) -> Result<Raw, Error> {
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
            Some(c) if c.is_alphabetic() || c == '_' => {
                let start = self.at;
                let name = self.ident().to_string();
                self.skip_ws();
                if self.peek() == Some('(') {
                    self.at = start;
                    self.call().map(Raw::Call)
                } else {
                    Ok(Raw::Name(name, self.pos_of(start)))
                }
            }
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
            subs: Vec::new(),
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
    fn show_call(call: &Call) -> String {
        let mut out = if call.args.is_empty() {
            call.name.clone()
        } else {
            format!("{}{}", call.name, Value::Object(call.args.clone()))
        };
        if !call.subs.is_empty() {
            let subs: Vec<String> = call
                .subs
                .iter()
                .map(|s| match &s.name {
                    Some(name) => format!("{name}: {}", show_call(&s.call)),
                    None => show_call(&s.call),
                })
                .collect();
            out.push_str(&format!(" << [{}]", subs.join(", ")));
        }
        out
    }

    fn show(expr: &Expr) -> String {
        match expr {
            Expr::Call(call) => show_call(call),
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
            "1:1: `AOp` is not defined: call the op with `AOp()`, or assign the name first (`AOp = SomeOp()`)",
        );
        check_err(
            "AOp() >>",
            "1:9: expected an op call such as `EchoOp()` or a `(` group, found end of expression",
        );
        check_err(
            "AOp() BOp()",
            "1:7: unexpected `BOp` after a complete expression (join steps with `>>` or `|`; in a multi-line flow only the last statement is the flow, the ones before assign names)",
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
            "1:1: `é` is not defined: call the op with `é()`, or assign the name first (`é = SomeOp()`)",
        );
        check_err(&"(".repeat(100), "1:65: expression nested too deeply");
    }

    #[test]
    fn sub_ops_attach_with_lshift() {
        check("AgentOp() << BOp()", "AgentOp << [BOp]");
        check(
            "AgentOp() << [BOp(), COp(x=1)]",
            "AgentOp << [BOp, COp{\"x\":1}]",
        );
        check(
            "AgentOp(max_steps=3) << {\"search\": SOp(), 'shout': TOp(),}",
            "AgentOp{\"max_steps\":3} << [search: SOp, shout: TOp]",
        );
        // Tighter than `>>` and `|`; chains of `<<` add up; sub-ops have sub-ops.
        check("AOp() >> BOp() << COp()", "seq(AOp, BOp << [COp])");
        check("AOp() << BOp() | COp()", "par(AOp << [BOp], COp)");
        check("AOp() << BOp() << [COp()]", "AOp << [BOp, COp]");
        check("AOp() << [BOp() << [COp()]]", "AOp << [BOp << [COp]]");
        check("(AOp() << [BOp()]) >> DOp()", "seq(AOp << [BOp], DOp)");
        // FlowLLM's shipped skill agent.
        check(
            "SkillAgentOp() << [LoadSkillOp(), ReadReferenceFileOp(), RunShellCommandOp()]",
            "SkillAgentOp << [LoadSkillOp, ReadReferenceFileOp, RunShellCommandOp]",
        );
        check_err(
            "(AOp() >> BOp()) << COp()",
            "1:18: `<<` attaches sub-ops to one op call, not to a chain or a group (write `AgentOp() << [...]`)",
        );
        check_err(
            "AOp() << [BOp() >> COp()]",
            "1:17: expected `,` or `]` in the list of sub-ops, found `>>`",
        );
        check_err(
            "AOp() << (BOp() >> COp())",
            "1:10: a sub-op attached with `<<` is one op call (for a chain, make it a flow and attach `FlowOp(flow=\"...\")`)",
        );
        check_err(
            "AOp() << {search: BOp()}",
            "1:11: expected a quoted sub-op name or `}`, found `search`",
        );
        check_err(
            "AOp() << {'a': BOp(), 'a': COp()}",
            "1:23: sub-op `a` named twice",
        );
        check_err(
            "AOp() <<",
            "1:9: expected an op call such as `EchoOp()` or a `(` group, found end of expression",
        );
    }

    #[test]
    fn multi_line_programs_name_things_first() {
        // FlowLLM's own example (flowllm.core.utils.parse_flow_expression).
        check(
            "op = ContainerOp()\nop.ops.search = OpA()\nop.ops.find = OpB()\n(op | OpB()) >> (OpA() | OpC()) >> op",
            "seq(par(ContainerOp << [search: OpA, find: OpB], OpB), par(OpA, OpC), ContainerOp << [search: OpA, find: OpB])",
        );
        check(
            "agent = ReactAgentOp(max_steps=3)  # the agent\nagent << [SOp()]\nagent.ops.shout = TOp()\n\nPromptOp() >> agent",
            "seq(PromptOp, ReactAgentOp{\"max_steps\":3} << [SOp, shout: TOp])",
        );
        // Names resolve at the end: a name used before a later attachment sees it.
        check("a = AOp()\nb = a\na.ops.t = TOp()\nb", "AOp << [t: TOp]");
        // A multi-line expression with no statements is still one expression.
        check("AOp()\n  >> BOp()\n  | COp()", "par(seq(AOp, BOp), COp)");
        check_err("a = AOp()", "1:10: the flow ends with an assignment: its last statement must be the flow expression (for example the name just assigned)");
        check_err("a = AOp()\nb", "2:1: `b` is not defined: call the op with `b()`, or assign the name first (`b = SomeOp()`)");
        check_err("a = b\nb = a\na", "2:5: `a` is defined in terms of itself");
        check_err(
            "x.ops.t = AOp()\nx",
            "1:1: `x` is not defined yet: assign it first (`x = SomeOp()`)",
        );
        check_err("a = AOp()\na.tools.t = BOp()\na", "2:1: cannot assign to `a.tools.t`: assign a name (`agent = ...`) or a sub-op (`agent.ops.search = ...`)");
        check_err("a = AOp()\nBOp()\na", "3:1: unexpected `a` after a complete expression (join steps with `>>` or `|`; in a multi-line flow only the last statement is the flow, the ones before assign names)");
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
