//! Lays out the `flowhost` executable's code in the order of `link/symbol-order.txt`: the
//! functions the host runs to start and wait first, then those a request runs, the rest after.
//!
//! Why: the kernel maps an executable's pages 64 KiB at a time around each page touched
//! (fault-around), so start-up code scattered through 17 MB of `.text` kept 10.7 MiB of it
//! resident in an idle host (ARCHITECTURE.md, "Code layout"). Together it is ~3.7 MB. The list
//! is made by `scripts/symbol-order` (a run under callgrind); a name it lists that no longer
//! exists is skipped, and a new function goes after the listed ones, so a stale list costs
//! memory, never correctness.
//!
//! Release builds only, and only when the linker takes the list: LLD (Rust's default linker on
//! x86_64 Linux since 1.90) and mold do; GNU ld and gold refuse the option. A tiny program is
//! linked with it first, with this build's own linker settings, to find out.
//! `FLOWHOST_NO_SYMBOL_ORDER=1` leaves it out without asking.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() {
    let list = Path::new("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=FLOWHOST_NO_SYMBOL_ORDER");
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let opted_out = std::env::var_os("FLOWHOST_NO_SYMBOL_ORDER").is_some_and(|v| v != "0");
    if !release || opted_out || !list.is_file() {
        return;
    }
    let path = std::fs::canonicalize(list).unwrap_or_else(|_| list.to_path_buf());
    let args = [
        format!("-Wl,--symbol-ordering-file={}", path.display()),
        "-Wl,--no-warn-symbol-ordering".to_string(),
    ];
    if !linker_takes(&args) {
        println!(
            "cargo:warning=the linker does not take a symbol ordering file: the flowhost executable's code is not laid out (idle memory ~8 MiB higher); FLOWHOST_NO_SYMBOL_ORDER=1 silences this"
        );
        return;
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bin=flowhost={arg}");
    }
}

/// Whether a program linked as this build links (its target, linker and flags) takes `args`.
fn linker_takes(args: &[String]) -> bool {
    let (Ok(rustc), Ok(target), Some(out)) = (
        std::env::var("RUSTC"),
        std::env::var("TARGET"),
        std::env::var_os("OUT_DIR"),
    ) else {
        return false;
    };
    let out = PathBuf::from(out);
    let source = out.join("link_probe.rs");
    if std::fs::write(&source, "fn main() {}\n").is_err() {
        return false;
    }
    let mut probe = Command::new(rustc);
    probe
        .arg("--target")
        .arg(&target)
        .arg("--crate-type=bin")
        .arg("-o")
        .arg(out.join("link_probe"))
        .arg(&source);
    for arg in args {
        probe.arg("-C").arg(format!("link-arg={arg}"));
    }
    if let Ok(linker) = std::env::var("RUSTC_LINKER") {
        probe.arg("-C").arg(format!("linker={linker}"));
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    probe.args(flags.split('\x1f').filter(|flag| !flag.is_empty()));
    probe
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}
