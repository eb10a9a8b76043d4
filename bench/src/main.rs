//! `flowhost-bench`: measures the plugin boundary, the executor and live reload on this
//! machine, and prints one JSON document. Run it from a release build:
//! `cargo build --release --workspace && target/release/flowhost-bench`.
//! Figures, not pass/fail: targets live in design.md §9 and BENCHMARKS.md.

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Map, Value};

mod auth;
mod compare;
mod floor;
mod load;
mod micro;
mod runs;
mod sse;
mod stall;
mod traces;
mod upstream;

use micro::{
    emit_across_boundary, exec_throughput, llm_overhead, mcp_stdio, plugin_load, save_to_served,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("floor-server") {
        let port = args
            .get(1)
            .and_then(|p| p.parse().ok())
            .expect("floor-server PORT");
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(floor::serve(port));
        return;
    }
    if args.first().map(String::as_str) == Some("slow-llm") {
        // flowhost-bench slow-llm PORT TOKENS INTERVAL_MS
        let number =
            |i: usize, default: u64| args.get(i).and_then(|v| v.parse().ok()).unwrap_or(default);
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(floor::serve_slow_llm(
                number(1, 8089) as u16,
                number(2, 60),
                Duration::from_millis(number(3, 1000)),
            ));
        return;
    }
    if args.first().map(String::as_str) == Some("tool-llm") {
        // flowhost-bench tool-llm PORT
        let port = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(8090);
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(floor::serve_tool_llm(port));
        return;
    }
    if args.first().map(String::as_str) == Some("load") {
        println!("{}", load::run(&args[1..]));
        return;
    }
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .expect("binary folder");
    let lib = bin_dir.join(format!("libop_basic.{}", std::env::consts::DLL_EXTENSION));
    assert!(
        lib.is_file(),
        "{} missing: cargo build --release --workspace",
        lib.display()
    );
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    if args.first().map(String::as_str) == Some("compare") {
        let report = runtime.block_on(compare::run(&bin_dir));
        let table = compare::table(&report);
        let out = bin_dir.join("..").join("bench");
        let _ = std::fs::create_dir_all(&out);
        let _ = std::fs::write(
            out.join("compare.json"),
            serde_json::to_string_pretty(&report).unwrap_or_default(),
        );
        let _ = std::fs::write(out.join("compare.md"), &table);
        println!("{table}");
        eprintln!("written: {}/compare.{{md,json}}", out.display());
        return;
    }
    let only: Vec<String> = args;
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut report = Map::new();
    report.insert("profile".into(), json!(profile));
    if wanted("boundary") {
        report.insert(
            "emit_across_boundary".into(),
            emit_across_boundary(&bin_dir),
        );
        report.insert("plugin_load".into(), plugin_load(&lib));
    }
    if wanted("exec") {
        report.insert("exec".into(), runtime.block_on(exec_throughput(&bin_dir)));
    }
    if wanted("reload") {
        report.insert("save_to_served".into(), save_to_served(&bin_dir));
    }
    if wanted("mcp") {
        report.insert("mcp_stdio".into(), mcp_stdio(&bin_dir));
    }
    if wanted("stall") {
        report.insert(
            "inline_stall".into(),
            runtime.block_on(stall::run(&bin_dir)),
        );
    }
    if wanted("runs") {
        report.insert("async_runs".into(), runtime.block_on(runs::run(&bin_dir)));
    }
    if wanted("auth") {
        report.insert("auth".into(), runtime.block_on(auth::run(&bin_dir)));
    }
    if wanted("traces") {
        report.insert("traces".into(), runtime.block_on(traces::run(&bin_dir)));
    }
    if wanted("upstream") {
        report.insert("upstream".into(), runtime.block_on(upstream::run(&bin_dir)));
    }
    if wanted("llm") {
        report.insert(
            "llm_overhead".into(),
            runtime.block_on(llm_overhead(&bin_dir)),
        );
    }
    println!(
        "{}",
        serde_json::to_string_pretty(&Value::Object(report)).unwrap_or_default()
    );
}
