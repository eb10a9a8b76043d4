//! The `flow_content` language: a parser (not eval) for op expressions such as
//! `GenSystemPromptOp(template="...") >> (AOp() | BOp()) >> ChatOp()`, with FlowLLM/Python
//! precedence (`>>` binds tighter than `|`), sub-ops attached with `<<` (tighter than `>>`:
//! `A() >> B() << [C()]` attaches C to B), and FlowLLM's multi-line form: statements that name
//! things, then the flow expression. Knows nothing of which ops exist; `compile` binds names to
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
//!
//! `program` reads the statements and resolves names; `parser` reads one expression (its
//! structure); `literal` reads argument values. This file holds what they produce.

mod literal;
mod parser;
mod program;

use std::fmt;

use serde_json::{Map, Value};

pub(crate) use program::parse;

/// A parsed expression.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Expr {
    Call(Call),
    Seq(Vec<Expr>),
    Par(Vec<Expr>),
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Call {
    pub(crate) name: String,
    pub(crate) args: Map<String, Value>,
    /// Where the op name starts in the source.
    pub(crate) pos: Pos,
    /// Sub-ops attached with `<<` (or `name.ops.tool = ...`), in order.
    pub(crate) subs: Vec<Sub>,
}

/// A sub-op: its name when given (`{"search": SearchOp()}`, `agent.ops.search = ...`), else
/// the op decides (its tool name).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Sub {
    pub(crate) name: Option<String>,
    pub(crate) call: Call,
}

/// A 1-based line and column (in characters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pos {
    pub(crate) line: usize,
    pub(crate) col: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Error {
    pub(crate) pos: Pos,
    pub(crate) message: String,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.pos.line, self.pos.col, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    pub(super) fn check(input: &str, expected: &str) {
        match parse(input) {
            Ok(expr) => assert_eq!(show(&expr), expected, "input: {input}"),
            Err(err) => panic!("input {input:?} failed: {err}"),
        }
    }

    pub(super) fn check_err(input: &str, expected: &str) {
        match parse(input) {
            Ok(expr) => panic!("input {input:?} parsed as {}", show(&expr)),
            Err(err) => assert_eq!(err.to_string(), expected, "input: {input}"),
        }
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
