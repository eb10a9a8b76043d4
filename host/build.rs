//! Lays out the `flowhost` executable's code in the order of `link/symbol-order.txt`: the
//! functions the host runs to start and wait first, then those a request runs, the rest after.
//!
//! Why: the kernel maps an executable's pages 64 KiB at a time around each page touched
//! (fault-around), so start-up code scattered through 17 MB of `.text` kept 10.7 MiB of it
//! resident in an idle host (ARCHITECTURE.md, "Code layout"). Together it is ~3.7 MB. The list is
//! made by `scripts/symbol-order` (a run under callgrind); a name it lists that no longer
//! exists is skipped, and a new function goes after the listed ones, so a stale list costs
//! memory, never correctness.
//!
//! Only for release builds on x86_64 Linux, where Rust links with LLD (which reads the list;
//! so does mold). `FLOWHOST_NO_SYMBOL_ORDER=1` leaves it out for another linker.

fn main() {
    let list = std::path::Path::new("link/symbol-order.txt");
    println!("cargo:rerun-if-changed={}", list.display());
    println!("cargo:rerun-if-env-changed=FLOWHOST_NO_SYMBOL_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let opted_out = std::env::var_os("FLOWHOST_NO_SYMBOL_ORDER").is_some_and(|v| v != "0");
    if target == "x86_64-unknown-linux-gnu" && release && !opted_out && list.is_file() {
        let path = std::fs::canonicalize(list).unwrap_or_else(|_| list.to_path_buf());
        println!(
            "cargo:rustc-link-arg-bin=flowhost=-Wl,--symbol-ordering-file={}",
            path.display()
        );
        println!("cargo:rustc-link-arg-bin=flowhost=-Wl,--no-warn-symbol-ordering");
    }
}
