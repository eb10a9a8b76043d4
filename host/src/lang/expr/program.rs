//! FlowLLM's multi-line programs: statements that name things (`agent = ReactAgentOp()`,
//! `agent.ops.search = SearchOp()`, `agent << [...]`), then the flow expression; names are
//! resolved at the end, and attachments folded into their op calls.

use std::collections::HashMap;

use super::parser::{Parser, Raw, MAX_DEPTH};
use super::{Error, Expr, Pos, Sub};

/// Parses a `flow_content` program: statements, then the flow expression.
pub(crate) fn parse(source: &str) -> Result<Expr, Error> {
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

#[cfg(test)]
mod tests {
    use super::super::tests::{check, check_err};

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
}
