//! Argument values in op calls: Python/JSON literals (strings with escapes, numbers, booleans,
//! `None`/`null`, lists, dicts) read into JSON values.

use serde_json::{Map, Number, Value};

use super::parser::Parser;
use super::Error;

impl Parser<'_> {
    pub(super) fn value(&mut self) -> Result<Value, Error> {
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

    pub(super) fn string(&mut self) -> Result<String, Error> {
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
    use super::super::{parse, Expr};
    use serde_json::json;

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
}
