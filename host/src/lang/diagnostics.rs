//! Problems found in flow files: [`Diagnostic`] with its [`Severity`] and position, and the
//! rendering of messages (an error at a place in `flow_content` with the source line and a
//! caret; numbers kept short).

use std::fmt;
use std::path::PathBuf;

use super::expr::{self, Pos};
use crate::plan::Spec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
/// How bad a problem is. Every problem found today stops its flow or file from loading; the
/// type stays so the JSON and the text say `error` explicitly.
pub(crate) enum Severity {
    Error,
}

/// A problem found in a flow file, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub(crate) file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub(crate) severity: Severity,
    /// The flow it concerns, if any.
    pub(crate) flow: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
        };
        if self.line == 0 {
            // About a path, not a place in a file (a folder, a FIFO, a dangling symlink).
            return write!(f, "{}: {severity}: {}", self.file.display(), self.message);
        }
        write!(
            f,
            "{}:{}:{}: {severity}: {}",
            self.file.display(),
            self.line,
            self.col,
            self.message
        )
    }
}

/// `1e300`, not three hundred digits.
pub(crate) fn short_number(value: f64) -> String {
    if value.abs() < 1e12 {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
}

/// Renders the source line of `pos` with a caret under the column.
pub(crate) fn caret(source: &str, pos: Pos) -> String {
    let line = source.lines().nth(pos.line.saturating_sub(1)).unwrap_or("");
    format!(
        "  {line}\n  {}^",
        " ".repeat(pos.col.saturating_sub(1).min(line.chars().count()))
    )
}

impl Spec {
    /// An error at a place in `flow_content`: `flow `name`: message`, then the source line
    /// with a caret.
    pub(super) fn at_expr(&self, pos: expr::Pos, message: String) -> Diagnostic {
        self.diagnostic(
            self.file_pos(pos),
            format!(
                "flow `{}`: {message}\n{}",
                self.name,
                caret(&self.flow_content, pos)
            ),
        )
    }

    pub(super) fn diagnostic(&self, (line, col): (usize, usize), message: String) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line,
            col,
            severity: Severity::Error,
            flow: Some(self.name.clone()),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caret_points_at_the_column() {
        assert_eq!(
            caret("AOp() BOp()", Pos { line: 1, col: 7 }),
            "  AOp() BOp()\n        ^"
        );
    }
}
