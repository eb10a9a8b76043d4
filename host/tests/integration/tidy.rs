//! Tidy checks (rust-analyzer's habit): the invariants of ARCHITECTURE.md that a look at the
//! source can verify, checked on every test run so they stay true.

use std::path::{Path, PathBuf};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// Source lines that are code, not comments.
fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .map(|(i, line)| (i + 1, line))
        .filter(|(_, line)| {
            let trimmed = line.trim_start();
            !trimmed.starts_with("//")
        })
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace())
        .unwrap_or(path)
        .display()
        .to_string()
}

#[test]
fn only_the_plugin_loader_names_abi_stable() {
    let src = workspace().join("host/src");
    let allowed = ["host/src/ops/plugin.rs"];
    let mut offenders = Vec::new();
    for file in rust_files(&src) {
        let text = std::fs::read_to_string(&file).expect("read");
        for (number, line) in code_lines(&text) {
            let ffi = line.contains("abi_stable") || line.contains("op_sdk::ffi");
            if ffi && !allowed.contains(&relative(&file).as_str()) {
                offenders.push(format!("{}:{number}: {line}", relative(&file)));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "only ops/plugin.rs may touch FFI types (the rest uses ops::Host):\n{}",
        offenders.join("\n")
    );
}

#[test]
fn stdout_is_written_only_by_the_cli_and_the_mcp_protocol_writer() {
    let src = workspace().join("host/src");
    let mut offenders = Vec::new();
    for file in rust_files(&src) {
        let name = relative(&file);
        let text = std::fs::read_to_string(&file).expect("read");
        for (number, line) in code_lines(&text) {
            let without_stderr = line.replace("eprintln!(", "").replace("eprint!(", "");
            let prints = without_stderr.contains("println!(") || without_stderr.contains("print!(");
            let stdout = line.contains("io::stdout()");
            let allowed = match name.as_str() {
                // The command outputs (JSON lines, tables) go through `print` and the run
                // writer.
                "host/src/app/cli.rs" => !prints,
                // The protocol writer, and claiming stdout for it.
                "host/src/transport/mcp/stdio.rs" | "host/src/util/stdio.rs" => !prints,
                _ => false,
            };
            if (prints || stdout) && !allowed {
                offenders.push(format!("{name}:{number}: {line}"));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "stdout belongs to the command's output and the MCP protocol; log to stderr:\n{}",
        offenders.join("\n")
    );
}

#[test]
fn every_module_says_what_it_owns() {
    let root = workspace();
    let mut missing = Vec::new();
    for dir in ["host/src", "op-sdk/src", "plugins", "bench/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("read");
            if !text.starts_with("//!") {
                missing.push(relative(&file));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "start each module with a `//!` line saying what it owns:\n{}",
        missing.join("\n")
    );
}

#[test]
fn op_sdk_has_no_async_runtime() {
    let manifest =
        std::fs::read_to_string(workspace().join("op-sdk/Cargo.toml")).expect("op-sdk manifest");
    for runtime in ["tokio", "async-std", "smol", "futures"] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.trim_start().starts_with(runtime)),
            "op-sdk must not depend on {runtime}: a cdylib's runtime cannot see the host's"
        );
    }
}

#[test]
fn transports_never_see_plugins_and_the_executor_never_sees_transports() {
    let root = workspace();
    let mut offenders = Vec::new();
    for file in rust_files(&root.join("host/src/transport")) {
        let text = std::fs::read_to_string(&file).expect("read");
        for (number, line) in code_lines(&text) {
            if line.contains("crate::ops") || line.contains("op_sdk::ffi") {
                offenders.push(format!("{}:{number}: {line}", relative(&file)));
            }
        }
    }
    for name in [
        "host/src/exec/mod.rs",
        "host/src/exec/batch.rs",
        "host/src/chunk.rs",
    ] {
        let text = std::fs::read_to_string(root.join(name)).expect("read");
        for (number, line) in code_lines(&text) {
            if line.contains("crate::transport") || line.contains("axum") || line.contains("rmcp") {
                offenders.push(format!("{name}:{number}: {line}"));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}

/// One job per file, arrows one way: the router (`http.rs`) assembles the transport's parts;
/// no part reaches back into it, and the flow compiler and the executor share the plan
/// (`plan.rs`) instead of importing each other.
#[test]
fn arrows_run_one_way() {
    let root = workspace();
    let mut offenders = Vec::new();
    for file in rust_files(&root.join("host/src/transport")) {
        if file.ends_with("http/mod.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read");
        for (number, line) in code_lines(&text) {
            if line.contains("super::http") || line.contains("transport::http") {
                offenders.push(format!("{}:{number}: {line}", relative(&file)));
            }
        }
    }
    for (file, forbidden) in [
        ("host/src/lang/spec.rs", "crate::exec"),
        ("host/src/lang/diagnostics.rs", "crate::exec"),
        ("host/src/lang/schema.rs", "crate::exec"),
        ("host/src/lang/compile.rs", "crate::exec"),
        ("host/src/exec/mod.rs", "crate::lang::flow::compile"),
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("read");
        for (number, line) in code_lines(&text) {
            if line.contains(forbidden) {
                offenders.push(format!("{file}:{number}: {line}"));
            }
        }
    }
    assert!(offenders.is_empty(), "{}", offenders.join("\n"));
}
