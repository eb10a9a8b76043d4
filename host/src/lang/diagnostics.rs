//! Problems found in flow files: [`Diagnostic`] with its [`Severity`] and position, and the
//! rendering of messages (an error at a place in `flow_content` with the source line and a
//! caret; numbers kept short).

use std::fmt;
use std::path::PathBuf;

use super::expr::{self, Pos};
use crate::plan::Spec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
/// How bad a problem is: an error stops its flow or file from loading; a warning (an argument
/// the op's schema does not name) is reported and the flow loads.
pub(crate) enum Severity {
    Error,
    Warning,
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
            Severity::Warning => "warning",
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

/// A YAML syntax error as a diagnostic's message: the file and line, the parser's words, the
/// line with a caret, and a hint for the known traps (a tab; an unquoted flow expression with
/// `<<`, `{...}` or `[...]`).
pub(super) fn yaml_error(
    path: &std::path::Path,
    text: &str,
    line: usize,
    col: usize,
    message: &str,
) -> String {
    // The error's line, and the one before (YAML often fails a line after the cause).
    let source: String = text
        .lines()
        .skip(line.saturating_sub(2))
        .take(if line > 1 { 2 } else { 1 })
        .collect();
    let hint = if source.contains('\t') {
        "\n  hint: YAML does not allow tabs for indentation; indent with spaces"
    } else if source.contains("<<") || source.contains('{') || source.contains('[') {
        "\n  hint: a flow expression with `<<`, `{...}` or `[...]` must be quoted (\"...\") or written as a block (`flow_content: |` and the expression on the next lines)"
    } else {
        ""
    };
    format!(
        "{} does not parse (line {line}): {message}\n{}{hint}",
        path.display(),
        caret(text, super::expr::Pos { line, col })
    )
}

/// The flow names a file that does not parse seems to define: its top-level keys, or the keys
/// under a FlowLLM config's `flow:`.
pub(super) fn flow_names(text: &str) -> Vec<String> {
    let key = |line: &str| -> Option<String> {
        let (name, _) = line.split_once(':')?;
        super::spec::is_valid_name(name).then(|| name.to_string())
    };
    let wrapped = text.lines().any(|l| l.trim_end() == "flow:");
    let mut names = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with([' ', '\t']) {
            inside = line.trim_end() == "flow:";
            if !wrapped {
                names.extend(key(line));
            }
        } else if wrapped && inside {
            let indent = line.len() - line.trim_start_matches(' ').len();
            if indent == 2 {
                names.extend(key(&line[2..]));
            }
        }
    }
    names.dedup();
    names
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
