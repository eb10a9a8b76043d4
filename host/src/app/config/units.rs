//! Values with units in the configuration: durations (`10`, `2.5`, `"10s"`, `"500ms"`,
//! `"2m"`, `"1h"`), sizes (`1048576`, `"1MiB"`, `"64KiB"`, `"1MB"`) and ports, each read from a
//! number or a string with a unit; and serde's type errors reworded as "expected …, got …".

use serde::de::{Deserializer, Error as _};
use serde::Deserialize;
use serde_json::Value;

/// A duration in seconds: a number, or a string with `ms`, `s`, `m` or `h`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct Seconds(pub(super) f64);

/// A size in bytes: a whole number, or a string with `B`, `KB`/`KiB`, `MB`/`MiB`, `GB`/`GiB`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Bytes(pub(super) usize);

/// A TCP port number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Port(pub(super) u16);

fn shown(value: &Value) -> String {
    value.to_string()
}

/// `"10s"` → (10.0, "s"); a bare number string → (n, "").
fn split_unit(text: &str) -> Option<(f64, String)> {
    let text = text.trim();
    let at = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let number: f64 = text[..at].replace('_', "").parse().ok()?;
    Some((number, text[at..].trim().to_ascii_lowercase()))
}

impl Seconds {
    fn parse(value: &Value) -> Result<Seconds, String> {
        let expected = || {
            format!(
                "expected a duration in seconds (10, 2.5, \"10s\", \"500ms\", \"2m\"), got {}",
                shown(value)
            )
        };
        let seconds = match value {
            Value::Number(n) => n.as_f64().ok_or_else(expected)?,
            Value::String(text) => {
                let (number, unit) = split_unit(text).ok_or_else(expected)?;
                let scale = match unit.as_str() {
                    "" | "s" | "sec" | "secs" => 1.0,
                    "ms" => 1e-3,
                    "m" | "min" => 60.0,
                    "h" => 3600.0,
                    _ => return Err(expected()),
                };
                number * scale
            }
            _ => return Err(expected()),
        };
        Ok(Seconds(seconds))
    }
}

impl Bytes {
    fn parse(value: &Value) -> Result<Bytes, String> {
        let expected = || {
            format!(
                "expected a size in bytes (1048576, \"1MiB\", \"64KiB\", \"10MB\"), got {}",
                shown(value)
            )
        };
        let bytes = match value {
            Value::Number(n) => n.as_u64().ok_or_else(expected)? as f64,
            Value::String(text) => {
                let (number, unit) = split_unit(text).ok_or_else(expected)?;
                let scale: f64 = match unit.as_str() {
                    "" | "b" => 1.0,
                    "k" | "kb" => 1e3,
                    "kib" => 1024.0,
                    "m" | "mb" => 1e6,
                    "mib" => 1024.0 * 1024.0,
                    "g" | "gb" => 1e9,
                    "gib" => 1024.0 * 1024.0 * 1024.0,
                    _ => return Err(expected()),
                };
                (number * scale).round()
            }
            _ => return Err(expected()),
        };
        if bytes > usize::MAX as f64 {
            return Err(expected());
        }
        Ok(Bytes(bytes as usize))
    }
}

impl Port {
    fn parse(value: &Value) -> Result<Port, String> {
        let port = match value {
            Value::Number(n) => n.as_u64(),
            Value::String(text) => text.trim().parse().ok(),
            _ => None,
        };
        port.and_then(|p| u16::try_from(p).ok())
            .map(Port)
            .ok_or_else(|| {
                format!(
                    "expected a port number (0 to 65535; 0 picks a free one), got {}",
                    shown(value)
                )
            })
    }
}

macro_rules! from_value {
    ($($ty:ty),*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let value = Value::deserialize(deserializer)?;
                <$ty>::parse(&value).map_err(D::Error::custom)
            }
        }
    )*};
}
from_value!(Seconds, Bytes, Port);

/// serde's `invalid type: string "abc", expected usize` as `expected a whole number, got
/// "abc"`; other messages unchanged.
pub(super) fn reword(message: &str) -> String {
    let Some(rest) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
    else {
        return message.to_string();
    };
    let Some((got, expected)) = rest.rsplit_once(", expected ") else {
        return message.to_string();
    };
    let got = ["string ", "integer ", "floating point ", "boolean "]
        .iter()
        .find_map(|kind| got.strip_prefix(kind))
        .map(|v| v.trim_matches('`').to_string())
        .unwrap_or_else(|| got.to_string());
    let expected = match expected {
        "usize" | "u64" | "u32" | "u16" | "u8" => "a whole number".to_string(),
        "f64" | "f32" => "a number".to_string(),
        "a boolean" => "true or false".to_string(),
        other => other.to_string(),
    };
    format!("expected {expected}, got {got}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn units_read_as_users_write_them() {
        for (value, seconds) in [
            (json!(10), 10.0),
            (json!(2.5), 2.5),
            (json!("10s"), 10.0),
            (json!("500ms"), 0.5),
            (json!("2m"), 120.0),
            (json!("1h"), 3600.0),
            (json!(" 3 s"), 3.0),
            (json!("7"), 7.0),
        ] {
            assert_eq!(Seconds::parse(&value), Ok(Seconds(seconds)), "{value}");
        }
        for (value, bytes) in [
            (json!(100), 100),
            (json!("1MiB"), 1 << 20),
            (json!("64KiB"), 64 << 10),
            (json!("1MB"), 1_000_000),
            (json!("1.5kib"), 1536),
            (json!("2GiB"), 2 << 30),
        ] {
            assert_eq!(Bytes::parse(&value), Ok(Bytes(bytes)), "{value}");
        }
        assert!(Seconds::parse(&json!("soon"))
            .unwrap_err()
            .ends_with("got \"soon\""));
        assert!(Seconds::parse(&json!("10 parsecs")).is_err());
        assert!(Bytes::parse(&json!(-1)).is_err());
        assert!(Bytes::parse(&json!("1 TiBx")).is_err());
        assert_eq!(Port::parse(&json!("8080")), Ok(Port(8080)));
        assert_eq!(
            Port::parse(&json!("abc")).unwrap_err(),
            "expected a port number (0 to 65535; 0 picks a free one), got \"abc\""
        );
        assert!(Port::parse(&json!(70000)).is_err());
    }

    #[test]
    fn serde_type_errors_are_reworded() {
        assert_eq!(
            reword("invalid type: string \"abc\", expected usize"),
            "expected a whole number, got \"abc\""
        );
        assert_eq!(
            reword("invalid type: integer `3`, expected a boolean"),
            "expected true or false, got 3"
        );
        assert_eq!(reword("missing field `x`"), "missing field `x`");
    }
}
