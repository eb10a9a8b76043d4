//! Problems found in flow files: [`Diagnostic`] with its [`Severity`] and position, and the
//! rendering of messages (an error at a place in `flow_content` with the source line and a
//! caret; numbers kept short).

use std::fmt;
use std::path::PathBuf;

use super::expr;
use super::spec::Spec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Error,
    Warning,
}

/// A problem found in a flow file, with its position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub severity: Severity,
    /// The flow it concerns, if any.
    pub flow: Option<String>,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
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
pub fn short_number(value: f64) -> String {
    if value.abs() < 1e12 {
        format!("{value}")
    } else {
        format!("{value:e}")
    }
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
                expr::caret(&self.flow_content, pos)
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
