//! Reading one flow file into flow specs ([`Spec`], defined in the plan, which carries it)
//! plus diagnostics ([`parse_file`]). Knows nothing of ops,
//! watching, serving or running.
//!
//! Longer than 600 lines with its tests (about 135 of them): the model and its reader stay one
//! file because every field's check reports the line of that field, through the same position
//! helpers (`find_key_line`, `locate_content`) the model's `file_pos` uses.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::diagnostics::{short_number, Diagnostic, Severity};
use super::expr;
use super::schema::normalize_schema;
use crate::plan::{Isolation, Limits, OnCrash, Origin, Spec, TaskSupport, MAX_SECONDS};

/// How long a call of a task-capable client runs before it becomes a task, unless the flow
/// says (`task_after:`): quicker calls answer directly, without a task to poll.
pub(crate) const DEFAULT_TASK_AFTER: Duration = Duration::from_secs(1);

/// What reading one file produced: the flows that parsed (each may still fail to compile) and
/// the problems, which never stop the other flows of the file.
#[derive(Debug, Default)]
pub struct FileFlows {
    pub(crate) specs: Vec<Result<Spec, Diagnostic>>,
    /// File-level problems (unreadable, YAML syntax). When present, `specs` is empty.
    pub diagnostics: Vec<Diagnostic>,
}

/// Whether a path is a flow file (`*.yaml`/`*.yml`, not hidden or an editor's temp file).
pub(crate) fn is_flow_file(path: &Path) -> bool {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && !name.starts_with('#')
        && !name.ends_with('~')
        && matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml") | Some("yml")
        )
}

/// The flow files of a folder, sorted (symlinks followed), and a diagnostic (line 0: about
/// the path) for each entry named like a flow file that cannot be read as one: a dangling
/// symlink, a symlink loop, a folder, a FIFO or other special file (never opened: a FIFO
/// would block the reader). Err: the folder itself cannot be read.
pub(crate) fn list_files(dir: &Path) -> Result<(Vec<PathBuf>, Vec<Diagnostic>), String> {
    let entries = std::fs::read_dir(dir).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => {
            "the flows folder does not exist (check --flows or flows_dir)".to_string()
        }
        std::io::ErrorKind::NotADirectory => {
            "the flows path is not a folder (check --flows or flows_dir)".to_string()
        }
        std::io::ErrorKind::PermissionDenied => {
            format!("the flows folder cannot be read: {err} (check its permissions)")
        }
        _ => format!("the flows folder cannot be read: {err}"),
    })?;
    let mut files = Vec::new();
    let mut problems = Vec::new();
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                problems.push(path_problem(
                    dir,
                    format!("a folder entry cannot be read: {err}"),
                ));
                continue;
            }
        };
        let path = entry.path();
        if !is_flow_file(&path) {
            continue;
        }
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => files.push(path),
            Ok(meta) if meta.is_dir() => problems.push(path_problem(
                &path,
                "a folder named like a flow file; flows are read from files (rename it)".into(),
            )),
            Ok(_) => problems.push(path_problem(
                &path,
                "not a regular file (a FIFO, socket or device); flows are read from regular files only".into(),
            )),
            Err(err) => {
                let message = match std::fs::read_link(&path) {
                    Ok(target) if err.raw_os_error() == Some(libc::ELOOP) => format!(
                        "a symlink loop (→ {}); point it at a flow file",
                        target.display()
                    ),
                    Ok(target) if err.kind() == std::io::ErrorKind::NotFound => format!(
                        "a dangling symlink: {} does not exist",
                        target.display()
                    ),
                    _ => format!("cannot be read: {err}"),
                };
                problems.push(path_problem(&path, message));
            }
        }
    }
    files.sort();
    problems.sort_by(|a, b| a.file.cmp(&b.file));
    Ok((files, problems))
}

/// A diagnostic about a path as a whole.
pub(crate) fn path_problem(path: &Path, message: String) -> Diagnostic {
    Diagnostic {
        file: path.to_path_buf(),
        line: 0,
        col: 0,
        severity: Severity::Error,
        flow: None,
        message,
    }
}

/// A boolean as FlowLLM's PyYAML (YAML 1.1) reads one: `true`/`false`, and also `yes`/`no`
/// and `on`/`off` in any case, which YAML 1.2 reads as text.
fn yaml11_bool<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Flag {
        Bool(bool),
        Text(String),
    }
    match Flag::deserialize(deserializer)? {
        Flag::Bool(flag) => Ok(flag),
        Flag::Text(text) => match text.to_ascii_lowercase().as_str() {
            "yes" | "on" | "true" | "y" => Ok(true),
            "no" | "off" | "false" | "n" => Ok(false),
            _ => Err(serde::de::Error::custom(format!(
                "expected true or false (or yes/no, on/off), found `{text}`"
            ))),
        },
    }
}

pub(crate) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A flow's keys as written (serde reads a missing `Option` field as None).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    flow_content: String,
    #[serde(default, deserialize_with = "yaml11_bool")]
    stream: bool,
    description: Option<String>,
    input_schema: Option<Value>,
    limits: Option<RawLimits>,
    isolation: Option<Isolation>,
    output_schema: Option<Value>,
    icon: Option<Value>,
    task: Option<String>,
    task_after: Option<f64>,
    on_crash: Option<OnCrash>,
    /// FlowLLM's own flag; flows here are always run the same way.
    #[serde(default, rename = "use_async")]
    _use_async: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    first_chunk_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    total_timeout: Option<f64>,
    max_output_bytes: Option<u64>,
    max_concurrency: Option<usize>,
    max_queue: Option<usize>,
    max_memory_mb: Option<u64>,
}

/// Parses the text of one flow file.
pub fn parse_file(path: &Path, text: &str) -> FileFlows {
    let mut out = FileFlows::default();
    let file_error = |line: usize, col: usize, message: String| Diagnostic {
        file: path.to_path_buf(),
        line,
        col,
        severity: Severity::Error,
        flow: None,
        message,
    };
    let doc: serde_yaml::Value = match serde_yaml::from_str(text) {
        Ok(doc) => doc,
        Err(err) => {
            let (line, col) = err
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((1, 1));
            let message = err.to_string();
            // yaml errors end with " at line L column C"; the position is ours to print.
            let message = message
                .split(" at line ")
                .next()
                .unwrap_or(&message)
                .to_string();
            let message = super::diagnostics::yaml_error(path, text, line, col, &message);
            // Every flow the file names is listed, broken with this reason, so asking for one
            // says why instead of "no flow named".
            let names = super::diagnostics::flow_names(text);
            if names.is_empty() {
                out.diagnostics.push(file_error(line, col, message.clone()));
            }
            for name in names {
                out.specs.push(Err(Diagnostic {
                    flow: Some(name),
                    ..file_error(line, col, message.clone())
                }));
            }
            return out;
        }
    };
    let doc = match doc {
        serde_yaml::Value::Null => return out,
        serde_yaml::Value::Mapping(map) => map,
        _ => {
            out.diagnostics.push(file_error(
                1,
                1,
                "a flow file maps flow names to flow specs (name: {flow_content: ...})".into(),
            ));
            return out;
        }
    };
    // A FlowLLM config keeps its flows under `flow:`; its other sections are not flows.
    let (flows, wrapper_line) = match doc.get("flow") {
        Some(serde_yaml::Value::Mapping(flows)) if !looks_like_spec(doc.get("flow")) => {
            (flows.clone(), find_key_line(text, "flow", 0).unwrap_or(1))
        }
        Some(serde_yaml::Value::Null) => return out,
        _ => (doc, 0),
    };
    for (key, value) in flows {
        let Some(name) = key.as_str().map(str::to_string) else {
            out.diagnostics.push(file_error(
                wrapper_line.max(1),
                1,
                format!(
                    "flow names must be text, found `{}`: quote it (\"{}\": ...) or name the flow in words",
                    serde_yaml::to_string(&key).unwrap_or_default().trim(),
                    serde_yaml::to_string(&key).unwrap_or_default().trim()
                ),
            ));
            continue;
        };
        let line = find_key_line(text, &name, wrapper_line).unwrap_or(wrapper_line.max(1));
        out.specs.push(
            parse_spec(path, text, &name, line, value).map_err(|(l, c, message)| Diagnostic {
                file: path.to_path_buf(),
                line: l,
                col: c,
                severity: Severity::Error,
                flow: Some(name.clone()),
                message,
            }),
        );
    }
    out
}

/// `flow:` holding a flow spec itself (a flow named "flow") rather than a map of flows.
fn looks_like_spec(value: Option<&serde_yaml::Value>) -> bool {
    matches!(value, Some(serde_yaml::Value::Mapping(m)) if m.contains_key("flow_content"))
}

type SpecError = (usize, usize, String);

fn parse_spec(
    path: &Path,
    text: &str,
    name: &str,
    line: usize,
    value: serde_yaml::Value,
) -> Result<Spec, SpecError> {
    if !is_valid_name(name) {
        return Err((
            line,
            1,
            format!("flow name `{name}` may only use letters, digits, `_` and `-` (it becomes a URL path and a tool name)"),
        ));
    }
    if crate::plan::RESERVED_FLOW_NAMES.contains(&name) {
        return Err((
            line,
            1,
            format!("flow name `{name}` is taken by the host's own `/{name}` route, so POST /{name} could never reach it; rename the flow"),
        ));
    }
    let source = spec_source(text, line);
    let raw: RawSpec = serde_yaml::from_value(value).map_err(|err| {
        let message = with_suggestion(&err.to_string());
        let field_line = first_quoted(&message)
            .and_then(|field| find_key_line(text, field, line))
            .unwrap_or(line);
        (field_line, 1, format!("flow `{name}`: {message}"))
    })?;
    let content_origin = locate_content(text, line);
    let input_schema = match raw.input_schema {
        None => json!({"type": "object"}),
        Some(schema) => normalize_schema(schema).map_err(|message| {
            let field_line = find_key_line(text, "input_schema", line).unwrap_or(line);
            (
                field_line,
                1,
                format!("flow `{name}`: input_schema: {message}"),
            )
        })?,
    };
    let field_error = |field: &str, message: String| -> SpecError {
        (
            find_key_line(text, field, line).unwrap_or(line),
            1,
            format!("flow `{name}`: {field}: {message}"),
        )
    };
    let output_schema = match raw.output_schema {
        None => None,
        Some(schema) => {
            let not_object = |schema: &Value| {
                schema
                    .get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t != "object")
            };
            let schema = if not_object(&schema) {
                schema
            } else {
                normalize_schema(schema).map_err(|m| field_error("output_schema", m))?
            };
            if not_object(&schema) {
                return Err(field_error(
                    "output_schema",
                    "must describe an object (`type: object`): MCP's structuredContent is a JSON object".into(),
                ));
            }
            Some(schema)
        }
    };
    let icons = match raw.icon {
        None => Vec::new(),
        Some(icon) => parse_icons(icon).map_err(|m| field_error("icon", m))?,
    };
    let task = match raw.task.as_deref() {
        None | Some("optional") => TaskSupport::Optional,
        Some("required") => TaskSupport::Required,
        Some("forbidden") => TaskSupport::Forbidden,
        Some(other) => {
            return Err(field_error(
                "task",
                format!("must be optional, required or forbidden, found `{other}`"),
            ))
        }
    };
    let task_after = match raw.task_after {
        None => DEFAULT_TASK_AFTER,
        Some(s) if s.is_finite() && (0.0..=MAX_SECONDS).contains(&s) => Duration::from_secs_f64(s),
        Some(s) => {
            return Err(field_error(
                "task_after",
                format!(
                    "must be a number of seconds from 0 up to {MAX_SECONDS}, found {}",
                    short_number(s)
                ),
            ))
        }
    };
    let seconds = |field: &str, value: Option<f64>| -> Result<Option<Duration>, SpecError> {
        match value {
            None => Ok(None),
            Some(s) if s.is_finite() && s > 0.0 && s <= MAX_SECONDS => {
                Ok(Some(Duration::from_secs_f64(s)))
            }
            Some(s) => Err((
                find_key_line(text, field, line)
                    .or_else(|| find_key_line(text, "limits", line))
                    .unwrap_or(line),
                1,
                format!(
                    "flow `{name}`: limits.{field} must be a positive number of seconds up to {MAX_SECONDS} (a year), found {}",
                    short_number(s)
                ),
            )),
        }
    };
    let limits = match raw.limits {
        None => Limits::default(),
        Some(raw) => Limits {
            first_chunk_timeout: seconds("first_chunk_timeout", raw.first_chunk_timeout)?,
            idle_timeout: seconds("idle_timeout", raw.idle_timeout)?,
            total_timeout: seconds("total_timeout", raw.total_timeout)?,
            max_output_bytes: raw.max_output_bytes,
            max_concurrency: match raw.max_concurrency {
                Some(0) => {
                    return Err((
                        find_key_line(text, "max_concurrency", line).unwrap_or(line),
                        1,
                        format!("flow `{name}`: limits.max_concurrency must be at least 1 (leave it out for no limit)"),
                    ))
                }
                other => other,
            },
            max_queue: raw.max_queue,
            max_memory_mb: raw.max_memory_mb,
        },
    };
    Ok(Spec {
        name: name.to_string(),
        file: path.to_path_buf(),
        line,
        flow_content: raw.flow_content,
        stream: raw.stream,
        description: raw.description.unwrap_or_default(),
        input_schema,
        limits,
        isolation: raw.isolation,
        output_schema,
        icons,
        source,
        task,
        task_after,
        on_crash: raw.on_crash.unwrap_or_default(),
        content_origin,
    })
}

/// `icon:` as MCP icons: a URL or data URI, `{src, mime_type|mimeType, sizes}`, or a list.
fn parse_icons(icon: Value) -> Result<Vec<Value>, String> {
    let one = |icon: Value| -> Result<Value, String> {
        match icon {
            Value::String(src) if !src.trim().is_empty() => Ok(json!({"src": src.trim()})),
            Value::Object(map) => {
                let src = map
                    .get("src")
                    .and_then(Value::as_str)
                    .ok_or("an icon mapping needs `src` (a URL or data: URI)")?;
                let mut out = json!({"src": src});
                if let Some(mime) = map.get("mime_type").or_else(|| map.get("mimeType")) {
                    out["mimeType"] = mime.clone();
                }
                match map.get("sizes") {
                    Some(Value::String(size)) => out["sizes"] = json!([size]),
                    Some(sizes @ Value::Array(_)) => out["sizes"] = sizes.clone(),
                    _ => {}
                }
                if let Some(theme) = map.get("theme") {
                    out["theme"] = theme.clone();
                }
                Ok(out)
            }
            other => Err(format!(
                "must be a URL, a data: URI, {{src, mime_type, sizes}}, or a list of them; found {other}"
            )),
        }
    };
    match icon {
        Value::Array(list) => list.into_iter().map(one).collect(),
        icon => Ok(vec![one(icon)?]),
    }
}

/// The lines of the flow whose key is on `line` (1-based): that line and every following
/// line indented deeper than it (or blank), trailing blank lines dropped.
fn spec_source(text: &str, line: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let Some(first) = lines.get(line.saturating_sub(1)) else {
        return String::new();
    };
    let indent = first.len() - first.trim_start().len();
    let mut out = vec![*first];
    for l in lines.iter().skip(line) {
        let trimmed = l.trim_start();
        if !trimmed.is_empty() && l.len() - trimmed.len() <= indent {
            break;
        }
        out.push(l);
    }
    while out.last().is_some_and(|l| l.trim().is_empty()) {
        out.pop();
    }
    out.join("\n") + "\n"
}

/// serde's "unknown field `strem`, expected one of `a`, `b`" plus "(did you mean `stream`?)".
fn with_suggestion(message: &str) -> String {
    let Some(rest) = message
        .find("unknown field `")
        .map(|at| &message[at + "unknown field `".len()..])
    else {
        return message.to_string();
    };
    let Some((field, expected)) = rest.split_once('`') else {
        return message.to_string();
    };
    let known = expected.split('`').skip(1).step_by(2);
    match crate::util::suggest::closest(field, known) {
        Some(best) => format!("{message} (did you mean `{best}`?)"),
        None => message.to_string(),
    }
}

fn first_quoted(message: &str) -> Option<&str> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(&message[start..start + len])
}

/// The 1-based line of `key:` at or after `after` (0 = anywhere), by text search; YAML parsers
/// here do not keep positions of values.
fn find_key_line(text: &str, key: &str, after: usize) -> Option<usize> {
    let candidates = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    text.lines()
        .enumerate()
        .skip(after.saturating_sub(1))
        .find(|(_, line)| {
            // `key:` at the start of a line, or inside a flow mapping (`{a: 1, key: 2}`).
            candidates.iter().any(|c| {
                line.match_indices(c.as_str()).any(|(at, _)| {
                    line[..at]
                        .chars()
                        .next_back()
                        .is_none_or(|b| b.is_whitespace() || b == '{' || b == ',')
                })
            })
        })
        .map(|(i, _)| i + 1)
}

fn locate_content(text: &str, flow_line: usize) -> Origin {
    let Some(line) = find_key_line(text, "flow_content", flow_line) else {
        return Origin {
            line: flow_line,
            col: 1,
            block: false,
        };
    };
    let source = text.lines().nth(line - 1).unwrap_or("");
    let key_at = source.find("flow_content").unwrap_or(0);
    let after_key = &source[key_at..];
    let colon = after_key.find(':').map_or(0, |i| i + 1);
    let value = &after_key[colon..];
    let value_start = key_at + colon + (value.len() - value.trim_start().len());
    let value = value.trim_start();
    if value.starts_with('|') || value.starts_with('>') || value.is_empty() {
        let indent = text
            .lines()
            .skip(line)
            .find(|l| !l.trim().is_empty())
            .map_or(0, |l| l.len() - l.trim_start().len());
        Origin {
            line,
            col: indent + 1,
            block: true,
        }
    } else {
        let quoted = value.starts_with('"') || value.starts_with('\'');
        Origin {
            line,
            col: source[..value_start].chars().count() + 1 + usize::from(quoted),
            block: false,
        }
    }
}

impl Spec {
    /// Maps a position inside `flow_content` to a position in the file.
    pub(crate) fn file_pos(&self, pos: expr::Pos) -> (usize, usize) {
        let origin = self.content_origin;
        if origin.block {
            (origin.line + pos.line, origin.col + pos.col - 1)
        } else if pos.line == 1 {
            (origin.line, origin.col + pos.col - 1)
        } else {
            (origin.line + pos.line - 1, pos.col)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> FileFlows {
        parse_file(Path::new("f.yaml"), text)
    }

    #[test]
    fn reads_short_and_full_schemas_and_flowllm_wrapper() {
        let text = "backend: http\nflow:\n  a_flow:\n    flow_content: EchoOp()\n    stream: true\n    input_schema:\n      query: {type: string, description: q, required: true}\n  b:\n    flow_content: EchoOp()\n    input_schema: {type: object, properties: {n: {type: integer}}}\n";
        let flows = parse(text);
        assert!(flows.diagnostics.is_empty(), "{:?}", flows.diagnostics);
        let specs: Vec<Spec> = flows.specs.into_iter().map(Result::unwrap).collect();
        assert_eq!(specs[0].name, "a_flow");
        assert_eq!(specs[0].line, 3);
        assert!(specs[0].stream);
        assert_eq!(
            specs[0].input_schema,
            json!({"type": "object", "properties": {"query": {"type": "string", "description": "q"}}, "required": ["query"]})
        );
        assert_eq!(specs[1].input_schema["properties"]["n"]["type"], "integer");
    }

    #[test]
    fn problems_name_their_line() {
        let check = |text: &str, expected: &str| {
            let flows = parse(text);
            let diag = flows
                .diagnostics
                .first()
                .cloned()
                .or_else(|| flows.specs.into_iter().find_map(Result::err))
                .expect("a diagnostic");
            assert_eq!(diag.to_string(), expected);
        };
        check(
            "a:\n  flow_content: [\n",
            "f.yaml:3:1: error: f.yaml does not parse (line 3): did not find expected node content\n  \n  ^\n  hint: a flow expression with `<<`, `{...}` or `[...]` must be quoted (\"...\") or written as a block (`flow_content: |` and the expression on the next lines)",
        );
        check(
            "ok:\n  flow_content: EchoOp()\nbad:\n  flow_content: EchoOp()\n  strem: true\n",
            "f.yaml:5:1: error: flow `bad`: unknown field `strem`, expected one of `flow_content`, `stream`, `description`, `input_schema`, `limits`, `isolation`, `output_schema`, `icon`, `task`, `task_after`, `on_crash`, `use_async` (did you mean `stream`?)",
        );
        check("bad name:\n  flow_content: EchoOp()\n", "f.yaml:1:1: error: flow name `bad name` may only use letters, digits, `_` and `-` (it becomes a URL path and a tool name)");
        check(
            "x:\n  flow_content: EchoOp()\n  limits: {idle_timeout: -1}\n",
            "f.yaml:3:1: error: flow `x`: limits.idle_timeout must be a positive number of seconds up to 31536000 (a year), found -1",
        );
        check(
            "x:\n  flow_content: EchoOp()\n  limits: {idle_timout: 3}\n",
            "f.yaml:3:1: error: flow `x`: unknown field `idle_timout`, expected one of `first_chunk_timeout`, `idle_timeout`, `total_timeout`, `max_output_bytes`, `max_concurrency`, `max_queue`, `max_memory_mb` (did you mean `idle_timeout`?)",
        );
        check(
            "x:\n  flow_content: EchoOp()\n  limits:\n    total_timeout: 1e300\n",
            "f.yaml:4:1: error: flow `x`: limits.total_timeout must be a positive number of seconds up to 31536000 (a year), found 1e300",
        );
        check(
            "x:\n  flow_content: EchoOp()\n  input_schema:\n    q: {type: strin}\n",
            "f.yaml:3:1: error: flow `x`: input_schema: not a valid JSON Schema: \"strin\" is not valid under any of the schemas listed in the 'anyOf' keyword",
        );
        check("- a\n- b\n", "f.yaml:1:1: error: a flow file maps flow names to flow specs (name: {flow_content: ...})");
    }

    #[test]
    fn expression_positions_map_into_the_file() {
        let text = "x:\n  flow_content: \"AOp() >> B\"\ny:\n  flow_content: |\n    AOp()\n      >> BOp(n=)\n";
        let specs: Vec<Spec> = parse(text).specs.into_iter().map(Result::unwrap).collect();
        assert_eq!(specs[0].file_pos(expr::Pos { line: 1, col: 10 }), (2, 27));
        assert_eq!(specs[1].file_pos(expr::Pos { line: 2, col: 12 }), (6, 16));
    }

    #[test]
    fn output_schema_icons_and_tasks_are_read_and_checked() {
        let text = "a:\n  flow_content: EchoOp()\n  icon: [\"https://x/i.png\", {src: \"data:image/png;base64,AA\", mime_type: image/png, sizes: 48x48}]\n  output_schema:\n    city: {type: string, required: true}\n  task: required\n  task_after: 2.5\n";
        let specs: Vec<Spec> = parse(text)
            .specs
            .into_iter()
            .map(|s| s.expect("a spec"))
            .collect();
        let spec = &specs[0];
        assert_eq!(
            spec.icons,
            vec![
                json!({"src": "https://x/i.png"}),
                json!({"src": "data:image/png;base64,AA", "mimeType": "image/png", "sizes": ["48x48"]})
            ]
        );
        assert_eq!(
            spec.output_schema.as_ref().expect("a schema")["required"],
            json!(["city"])
        );
        assert_eq!(spec.task, TaskSupport::Required);
        assert_eq!(spec.task_after, Duration::from_millis(2500));
        assert!(
            spec.source.starts_with("a:\n  flow_content: EchoOp()\n"),
            "{}",
            spec.source
        );
        assert_eq!(
            parse("b:\n  flow_content: EchoOp()\n").specs[0]
                .as_ref()
                .expect("ok")
                .task_after,
            DEFAULT_TASK_AFTER
        );
        for (yaml, expected) in [
            ("  output_schema: {type: string}\n", "f.yaml:3:1: error: flow `b`: output_schema: must describe an object"),
            ("  icon: 7\n", "f.yaml:3:1: error: flow `b`: icon: must be a URL"),
            ("  icon: {mime_type: image/png}\n", "f.yaml:3:1: error: flow `b`: icon: an icon mapping needs `src`"),
            ("  task_after: -1\n", "f.yaml:3:1: error: flow `b`: task_after: must be a number of seconds"),
            ("  task: sometimes\n", "f.yaml:3:1: error: flow `b`: task: must be optional, required or forbidden, found `sometimes`"),
        ] {
            let flows = parse(&format!("b:\n  flow_content: EchoOp()\n{yaml}"));
            let error = flows.specs[0].as_ref().expect_err("refused").to_string();
            assert!(error.starts_with(expected), "{error}");
        }
    }

    #[test]
    fn flow_file_names() {
        for (name, expected) in [
            ("a.yaml", true),
            ("a.yml", true),
            (".a.yaml", false),
            ("a.yaml~", false),
            (".a.yaml.swp", false),
            ("4913", false),
            ("#a.yaml#", false),
            ("a.json", false),
        ] {
            assert_eq!(is_flow_file(Path::new(name)), expected, "{name}");
        }
    }
}
