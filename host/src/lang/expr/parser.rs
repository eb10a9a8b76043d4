//! One expression's structure, by recursive descent: `|` over `>>` over `<<` over terms (op
//! calls, names, groups), and the assignment targets that start a statement. Argument values
//! are read by `literal`; names are resolved by `program`.

use serde_json::Map;

use super::{Call, Error, Pos};

/// An expression before names are resolved.
#[derive(Clone, Debug)]
pub(super) enum Raw {
    Call(Call),
    Name(String, Pos),
    Seq(Vec<Raw>),
    Par(Vec<Raw>),
    /// `left << subs`, at the position of `<<`.
    Attach(Box<Raw>, Vec<(Option<String>, Raw, Pos)>, Pos),
}

/// Nesting deeper than this is refused, so hostile input cannot overflow the stack.
pub(super) const MAX_DEPTH: usize = 64;

pub(super) struct Parser<'a> {
    pub(super) src: &'a str,
    pub(super) at: usize,
    pub(super) depth: usize,
}

impl<'a> Parser<'a> {
    pub(super) fn rest(&self) -> &'a str {
        &self.src[self.at..]
    }

    pub(super) fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    pub(super) fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.at += c.len_utf8();
        Some(c)
    }

    pub(super) fn skip_ws(&mut self) {
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

    pub(super) fn pos_of(&self, offset: usize) -> Pos {
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        Pos {
            line,
            col: before[line_start..].chars().count() + 1,
        }
    }

    pub(super) fn error_at(&self, offset: usize, message: &str) -> Error {
        Error {
            pos: self.pos_of(offset),
            message: message.to_string(),
        }
    }

    pub(super) fn error_here(&self, message: &str) -> Error {
        self.error_at(self.at, message)
    }

    pub(super) fn describe_next(&self) -> String {
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

    pub(super) fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.error_here("expression nested too deeply"));
        }
        Ok(())
    }

    pub(super) fn par(&mut self) -> Result<Raw, Error> {
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
    pub(super) fn assignment_target(&mut self) -> Option<Vec<String>> {
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

    pub(super) fn ident(&mut self) -> &'a str {
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
}

#[cfg(test)]
mod tests {
    use super::super::tests::{check, check_err};

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
}
