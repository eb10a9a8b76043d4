//! `flowhost new-op`: writes a new op into a plugin crate (creating the crate, a workspace
//! member that builds as is, when it does not exist yet) with a unit test, and a sample flow
//! that uses it. Never overwrites a file it creates; edits two (the workspace `Cargo.toml`'s
//! `members`, an existing crate's `lib.rs`). Knows nothing of loading or running ops.

use std::path::{Path, PathBuf};

/// What to create.
#[derive(Clone, Debug)]
pub(crate) struct Request {
    /// `ShoutOp`: CamelCase, ending in `Op`.
    pub(crate) op: String,
    /// The plugin crate's name (`op-shout` when not given).
    pub(crate) plugin: Option<String>,
    /// Where plugin crates live, relative to the workspace root (`plugins`).
    pub(crate) dir: PathBuf,
    /// The flow folder the sample flow goes to (`flows`).
    pub(crate) flows: PathBuf,
}

/// What `new-op` did to a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Created,
    Edited,
}

/// `ShoutOp` → `shout`, `HTTPFetchOp` → `http_fetch`.
fn snake(op: &str) -> String {
    let stem = op.strip_suffix("Op").unwrap_or(op);
    let mut out = String::new();
    let chars: Vec<char> = stem.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            let prev_lower = i > 0 && chars[i - 1].is_lowercase();
            if i > 0 && (prev_lower || next_lower) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}

fn check_name(op: &str) -> Result<(), String> {
    let valid = op.len() > 2
        && op.ends_with("Op")
        && op.starts_with(|c: char| c.is_ascii_uppercase())
        && op.chars().all(|c| c.is_ascii_alphanumeric());
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{op}` is not an op name: use CamelCase letters and digits ending in `Op` (for example ShoutOp)"
        ))
    }
}

/// The workspace root: the nearest folder up from `start` whose Cargo.toml has `[workspace]`.
fn workspace_root(start: &Path) -> Result<PathBuf, String> {
    let start = std::path::absolute(start).map_err(|e| e.to_string())?;
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if std::fs::read_to_string(&manifest).is_ok_and(|t| t.contains("[workspace]")) {
            return Ok(dir.to_path_buf());
        }
    }
    Err(format!(
        "no Cargo workspace above {}: run `flowhost new-op` inside the workspace that holds op-sdk",
        start.display()
    ))
}

/// Creates the op; returns the files written, and which of them existed and were edited.
pub(crate) fn new_op(request: &Request, cwd: &Path) -> Result<Vec<(PathBuf, Change)>, String> {
    check_name(&request.op)?;
    let op = &request.op;
    let module = snake(op);
    let root = workspace_root(cwd)?;
    let sdk = root.join("op-sdk");
    if !sdk.join("Cargo.toml").is_file() {
        return Err(format!(
            "{} has no op-sdk folder: new plugin crates depend on it by path",
            root.display()
        ));
    }
    let plugin = request
        .plugin
        .clone()
        .unwrap_or_else(|| format!("op-{}", module.replace('_', "-")));
    if !plugin
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        return Err(format!(
            "`{plugin}` is not a crate name: use lowercase letters, digits and `-`"
        ));
    }
    let crate_dir = root.join(&request.dir).join(&plugin);
    let src = crate_dir.join("src");
    let op_file = src.join(format!("{module}.rs"));
    let flow_file = root.join(&request.flows).join(format!("{module}.yaml"));
    for path in [&op_file, &flow_file] {
        if path.exists() {
            return Err(format!(
                "{} exists; new-op never overwrites (choose another name)",
                path.display()
            ));
        }
    }
    let mut written = Vec::new();
    let lib = src.join("lib.rs");
    if crate_dir.join("Cargo.toml").exists() {
        let text = std::fs::read_to_string(&lib)
            .map_err(|e| format!("cannot read {}: {e}", lib.display()))?;
        let text = add_to_lib(&text, &module, op).ok_or_else(|| {
            format!(
                "{} has no `op_sdk::export_plugin!(...)` to add {op} to",
                lib.display()
            )
        })?;
        write(&op_file, &op_source(op))?;
        written.push((op_file, Change::Created));
        write(&lib, &text)?;
        written.push((lib, Change::Edited));
    } else {
        let sdk_path = relative(&crate_dir, &sdk);
        write(&crate_dir.join("Cargo.toml"), &manifest(&plugin, &sdk_path))?;
        written.push((crate_dir.join("Cargo.toml"), Change::Created));
        write(&op_file, &op_source(op))?;
        written.push((op_file, Change::Created));
        write(
            &lib,
            &format!(
                "//! The {plugin} plugin: its ops, exported to flowhost.\n\nmod {module};\n\npub use {module}::{op};\n\nop_sdk::export_plugin!({op});\n"
            ),
        )?;
        written.push((lib, Change::Created));
        if let Some(manifest) = add_member(&root, &request.dir, &plugin)? {
            written.push((manifest, Change::Edited));
        }
    }
    write(&flow_file, &flow_source(&module, op))?;
    written.push((flow_file, Change::Created));
    Ok(written)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// `../../op-sdk` from `plugins/op-shout`.
fn relative(from: &Path, to: &Path) -> String {
    let from: Vec<_> = from.components().collect();
    let to: Vec<_> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<String> = vec!["..".into(); from.len() - common];
    parts.extend(
        to[common..]
            .iter()
            .map(|c| c.as_os_str().to_string_lossy().into_owned()),
    );
    parts.join("/")
}

/// Adds the crate to the workspace's `members` unless a `dir/*` glob already covers it.
fn add_member(root: &Path, dir: &Path, plugin: &str) -> Result<Option<PathBuf>, String> {
    let manifest = root.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|e| e.to_string())?;
    let dir = dir.to_string_lossy().replace('\\', "/");
    let member = format!("{dir}/{plugin}");
    if text.contains(&format!("\"{dir}/*\"")) || text.contains(&format!("\"{member}\"")) {
        return Ok(None);
    }
    let Some(at) = text.find("members = [") else {
        return Err(format!(
            "add \"{member}\" to the workspace members in {} (no `members = [` found)",
            manifest.display()
        ));
    };
    let insert = at + "members = [".len();
    let updated = format!("{}\"{member}\", {}", &text[..insert], &text[insert..]);
    write(&manifest, &updated)?;
    Ok(Some(manifest))
}

fn add_to_lib(text: &str, module: &str, op: &str) -> Option<String> {
    let export = text.find("op_sdk::export_plugin!(")?;
    let close = export + text[export..].find(')')?;
    let list = text[export + "op_sdk::export_plugin!(".len()..close].trim();
    let list = if list.is_empty() {
        op.to_string()
    } else {
        format!("{list}, {op}")
    };
    Some(format!(
        "{}mod {module};\npub use {module}::{op};\n\nop_sdk::export_plugin!({list}){}",
        &text[..export],
        &text[close + 1..]
    ))
}

fn manifest(plugin: &str, sdk_path: &str) -> String {
    format!(
        r#"[package]
name = "{plugin}"
version = "0.1.0"
edition = "2021"
publish = false

# A cdylib for flowhost to load, and an rlib for `cargo test`.
[lib]
crate-type = ["cdylib", "rlib"]

[dependencies]
op-sdk = {{ path = "{sdk_path}" }}
serde_json = "1"
"#
    )
}

fn op_source(op: &str) -> String {
    let module = snake(op);
    format!(
        r#"//! `{op}`: what it does, in one line (this text is the op's tool description).

use op_sdk::{{Args, ChunkKind, Context, Error, Op}};
use serde_json::{{json, Value}};

/// Answers with the request's `query`, upper-cased, followed by `suffix`.
pub struct {op} {{
    suffix: String,
}}

impl Op for {op} {{
    const NAME: &'static str = "{op}";
    const DESCRIPTION: &'static str = "Upper-cases the request's `query`";

    /// The call's arguments as JSON Schema: `{op}(suffix="!")`.
    fn args_schema() -> Option<Value> {{
        Some(json!({{
            "type": "object",
            "properties": {{"suffix": {{"type": "string", "description": "appended to the answer"}}}}
        }}))
    }}

    fn new(args: &Args) -> Result<Self, Error> {{
        Ok({op} {{
            suffix: args.str_or("suffix", "")?.to_string(),
        }})
    }}

    fn execute(&mut self, ctx: &mut Context<'_>) -> Result<(), Error> {{
        let answer = format!("{{}}{{}}", ctx.str("query")?.to_uppercase(), self.suffix);
        // `false`: the client went away; stop working.
        if !ctx.emit(ChunkKind::Answer, &answer) {{
            return Ok(());
        }}
        ctx.set_answer(answer);
        Ok(())
    }}
}}

#[cfg(test)]
mod tests {{
    use op_sdk::testing::Harness;
    use serde_json::json;

    use super::{op};

    #[test]
    fn {module}_answers() {{
        let run = Harness::new()
            .args(json!({{"suffix": "!"}}))
            .input(json!({{"query": "hello"}}))
            .run::<{op}>()
            .unwrap();
        assert_eq!(run.answer_text(), "HELLO!");
        assert_eq!(run.writes["answer"], "HELLO!");
    }}
}}
"#
    )
}

fn flow_source(module: &str, op: &str) -> String {
    format!(
        r#"# A sample flow for {op}: `flowhost run {module}_flow query=hi`, or POST /{module}_flow.
{module}_flow:
  flow_content: {op}(suffix="!")
  description: "{op} on the query"
  input_schema:
    query: {{type: string, description: "the text", required: true}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(snake("ShoutOp"), "shout");
        assert_eq!(snake("HTTPFetchOp"), "http_fetch");
        assert_eq!(snake("GenSystemPromptOp"), "gen_system_prompt");
        assert!(check_name("ShoutOp").is_ok());
        for bad in ["Shout", "shoutOp", "Op", "Shout-Op", "ShoutOp2x"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            relative(Path::new("/w/plugins/op-x"), Path::new("/w/op-sdk")),
            "../../op-sdk"
        );
    }

    #[test]
    fn adds_to_an_existing_export_list() {
        let lib = "mod a;\npub use a::AOp;\n\nop_sdk::export_plugin!(AOp);\n";
        let added = add_to_lib(lib, "b", "BOp").unwrap();
        assert!(added.contains("mod b;\npub use b::BOp;"), "{added}");
        assert!(
            added.ends_with("op_sdk::export_plugin!(AOp, BOp);\n"),
            "{added}"
        );
    }

    #[test]
    fn creates_a_crate_then_adds_to_it_and_never_overwrites() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"host\"]\n",
        )
        .unwrap();
        std::fs::create_dir_all(root.path().join("op-sdk")).unwrap();
        std::fs::write(root.path().join("op-sdk/Cargo.toml"), "").unwrap();
        let request = Request {
            op: "ShoutOp".into(),
            plugin: None,
            dir: "plugins".into(),
            flows: "flows".into(),
        };
        let written = new_op(&request, root.path()).unwrap();
        assert!(written
            .iter()
            .any(|(p, c)| p.ends_with("plugins/op-shout/Cargo.toml") && *c == Change::Created));
        assert!(written
            .iter()
            .any(|(p, c)| *p == root.path().join("Cargo.toml") && *c == Change::Edited));
        let manifest = std::fs::read_to_string(root.path().join("Cargo.toml")).unwrap();
        assert!(manifest.contains("\"plugins/op-shout\""), "{manifest}");
        let cargo =
            std::fs::read_to_string(root.path().join("plugins/op-shout/Cargo.toml")).unwrap();
        assert!(cargo.contains("path = \"../../op-sdk\""), "{cargo}");
        let err = new_op(&request, root.path()).unwrap_err();
        assert!(err.contains("never overwrites"), "{err}");
        let more = Request {
            op: "WhisperOp".into(),
            plugin: Some("op-shout".into()),
            ..request
        };
        new_op(&more, root.path()).unwrap();
        let lib = std::fs::read_to_string(root.path().join("plugins/op-shout/src/lib.rs")).unwrap();
        assert!(lib.contains("export_plugin!(ShoutOp, WhisperOp)"), "{lib}");
        assert!(root.path().join("flows/whisper.yaml").is_file());
        // lib.rs re-exports each op (`pub use shout::ShoutOp;`), which only compiles when the
        // op is `pub`: the plugin's code is not the host's, whose items are `pub(crate)`.
        let op =
            std::fs::read_to_string(root.path().join("plugins/op-shout/src/shout.rs")).unwrap();
        assert!(op.contains("\npub struct ShoutOp {"), "{op}");
        assert!(lib.contains("pub use shout::ShoutOp;"), "{lib}");
    }
}
