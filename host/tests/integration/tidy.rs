//! Tidy checks (rust-analyzer's habit): the invariants of ARCHITECTURE.md that a look at the
//! source can verify, checked on every test run so they stay true. std only: a small lexer
//! blanks comments and literals, a reader of `use` trees and paths resolves `crate::`,
//! `super::` and `self::` to modules, and each failure names `file:line` and what to do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The parts of host/src (a folder or a file each) and the parts each may import.
/// ARCHITECTURE.md mirrors this table under "Parts and their arrows": change both together.
#[rustfmt::skip]
const PARTS: &[(&str, &[&str])] = &[
    ("util",      &[]),
    ("chunk",     &["ops"]),
    ("metrics",   &[]),
    ("telemetry", &["metrics"]),
    ("store",     &[]),
    ("auth",      &["store", "metrics"]),
    ("ops",       &["util"]),
    ("llm",       &["chunk", "telemetry"]),
    ("plan",      &["ops"]),
    ("upstream",  &["plan", "metrics", "util"]),
    ("lang",      &["plan", "ops", "util"]),
    ("exec",      &["plan", "ops", "llm", "chunk", "metrics", "telemetry", "upstream", "util"]),
    ("catalog",   &["lang", "plan", "ops", "exec", "util"]),
    ("transport", &["auth", "catalog", "exec", "plan", "chunk", "metrics", "store", "telemetry", "upstream", "util"]),
    ("app",       &["transport", "auth", "catalog", "exec", "lang", "plan", "llm", "ops", "store", "telemetry", "upstream", "util"]),
];

/// What code names, whether a file (a path under host/src) may name it, and why.
type Reach = (&'static [&'static str], fn(&str) -> bool, &'static str);

/// Crates and capabilities only some files may name (as code names them), the files that
/// may, and why. app/scaffold.rs is exempt: its strings are code it writes for users.
#[rustfmt::skip]
const REACH: &[Reach] = &[
    (&["axum", "tower_http", "tower::", "swagger_ui_dist"], |f| under(f, &["transport/", "app/"]),
        "serving belongs to transport/ (app/ may wire it)"),
    (&["rmcp"], |f| under(f, &["transport/", "app/", "upstream/"]),
        "MCP is spoken by transport/ (the server) and upstream/ (the client of outside servers)"),
    (&["abi_stable", "op_sdk::ffi"], |f| under(f, &["ops/plugin.rs", "ops/plugin/"]),
        "only the plugin loader touches FFI; the rest uses ops::Host"),
    (&["op_sdk"], |f| under(f, &["ops/"]),
        "op-sdk reaches the host through ops/: name what ops re-exports or wraps"),
    (&["reqwest", "eventsource_stream"], |f| under(f, &["llm.rs", "llm/", "auth/jwt.rs", "telemetry/export.rs", "upstream/sse.rs"]),
        "HTTP to model providers belongs to llm (the JWKS fetch to auth/jwt.rs, span exports to telemetry/export.rs, MCP's old SSE transport to upstream/sse.rs)"),
    (&["notify", "notify_debouncer_full"], |f| under(f, &["catalog/watch.rs", "app/dev.rs"]),
        "the file watchers are catalog/watch.rs and app/dev.rs"),
    (&["std::env::var", "env::var(", "var_os(", "env::vars"], |f| under(f, &["app/", "main.rs"]),
        "the environment is configuration: read it in app/ and pass the value down"),
    (&["std::fs", "tokio::fs", "File::"], |f| !under(f, &["exec/"]) || under(f, &["exec/worker/"]),
        "the executor never sees files (workers read /proc and the library they load)"),
];

const ABI_LABEL: &str = "ABI fingerprint (op-sdk/src/ffi.rs): ";
const LONG_FILE: usize = 600;

#[test]
fn parts_depend_one_way() {
    let table = table();
    if let Some(cycle) = cycle(&table) {
        panic!("the parts table has a cycle: {}", cycle.join(" → "));
    }
    let mut offenders = Vec::new();
    let mut used: BTreeSet<(String, String)> = BTreeSet::new();
    // lib.rs and main.rs are the root, in no part.
    for source in sources().into_iter().filter(|s| !s.module.is_empty()) {
        let part = &source.module[0];
        let allowed = table.get(part).cloned().unwrap_or_default();
        for (line, path) in &source.references {
            let target = path.first().unwrap_or(part); // the root itself: no arrow
            if target == part {
                continue;
            }
            if allowed.contains(target) {
                used.insert((part.clone(), target.clone()));
                continue;
            }
            let note = (!table.contains_key(target)).then_some(" [not a part]");
            let (file, path, note) = (&source.file, path.join("::"), note.unwrap_or(""));
            offenders.push(format!(
                "host/src/{file}:{line}: {part} → {target} (crate::{path}){note}"
            ));
        }
    }
    // The table says what the code does, no more: an arrow nothing uses would let a new
    // import through unnoticed.
    for (part, targets) in &table {
        for target in targets {
            if !used.contains(&(part.clone(), target.clone())) {
                offenders.push(format!(
                    "the table allows {part} → {target}, which no code uses: remove the arrow"
                ));
            }
        }
    }
    fail_on(
        offenders,
        "parts depend one way: see the table in ARCHITECTURE.md (Parts and their arrows); move \
         the code or change the table in both places",
    );
}

/// http/ mounts mcp/, not the reverse; http/mod.rs (the router) assembles http's other
/// modules, and none of them imports an item defined or re-exported by the router.
#[test]
fn http_mounts_mcp_and_nothing_imports_the_router() {
    let sources = sources();
    let modules: BTreeSet<&[String]> = sources
        .iter()
        .flat_map(|s| (0..=s.module.len()).map(|n| &s.module[..n]))
        .collect();
    let mut offenders = Vec::new();
    for source in &sources {
        let in_mcp = source.file.starts_with("transport/mcp/");
        let in_http =
            source.file.starts_with("transport/http/") && source.file != "transport/http/mod.rs";
        for (line, path) in &source.references {
            let module = (0..=path.len())
                .rev()
                .find(|&n| modules.contains(&path[..n]));
            let why = if in_mcp && path.len() >= 2 && path[..2] == ["transport", "http"] {
                "mcp/ is mounted by http/ and must not reach back"
            } else if in_http && module.is_some_and(|n| path[..n] == ["transport", "http"]) {
                "import it from the module that defines it (http/mod.rs is the router, not a hub)"
            } else {
                continue;
            };
            let (file, path) = (&source.file, path.join("::"));
            offenders.push(format!("host/src/{file}:{line}: crate::{path}: {why}"));
        }
    }
    fail_on(offenders, "transport's sub-parts depend one way");
}

/// Inside `transport/http/` the files' arrows run one way too (the router over its parts;
/// `state` over `guard`, `settings` and the runs store; the handlers over `state`): a cycle
/// between two files there is a hub in the making.
#[test]
fn the_http_transport_files_form_no_cycle() {
    let sources = sources();
    let modules: BTreeSet<&[String]> = sources
        .iter()
        .flat_map(|s| (0..=s.module.len()).map(|n| &s.module[..n]))
        .collect();
    let mut table: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for source in &sources {
        if !source.file.starts_with("transport/http/") {
            continue;
        }
        let from = source.module.join("::");
        let targets = table.entry(from.clone()).or_default();
        for (_, path) in &source.references {
            let Some(n) = (0..=path.len())
                .rev()
                .find(|&n| modules.contains(&path[..n]))
            else {
                continue;
            };
            let to = path[..n].join("::");
            if to.starts_with("transport::http") && to != from {
                targets.insert(to);
            }
        }
    }
    // A module's own submodules (`runs` → `runs::store`) are below it, not a cycle with it.
    for (from, targets) in table.iter_mut() {
        targets.retain(|to| !from.starts_with(&format!("{to}::")));
    }
    let known: BTreeSet<String> = table.keys().cloned().collect();
    for targets in table.values_mut() {
        targets.retain(|to| known.contains(to));
    }
    if let Some(cycle) = cycle(&table) {
        panic!(
            "files of transport/http import each other: {}",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_parts_table_matches_architecture_md() {
    let text = read(&workspace().join("ARCHITECTURE.md"));
    let block = text
        .split_once("<!-- parts:begin -->")
        .and_then(|(_, rest)| rest.split_once("<!-- parts:end -->"))
        .expect("ARCHITECTURE.md needs, under `## Parts and their arrows`, the parts table between `<!-- parts:begin -->` and `<!-- parts:end -->`")
        .0;
    let lines: Vec<&str> = block
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    assert!(
        lines.len() >= 2 && lines[0].starts_with("```") && lines[lines.len() - 1] == "```",
        "ARCHITECTURE.md: the parts table is one fenced code block between the markers"
    );
    let mut documented: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in &lines[1..lines.len() - 1] {
        let (part, targets) = line.split_once('→').unwrap_or_else(|| {
            panic!("ARCHITECTURE.md parts table: `{line}` is not `part → part, part`")
        });
        let targets = targets.split(',').map(str::trim).filter(|t| !t.is_empty());
        let old = documented.insert(part.trim().to_string(), targets.map(String::from).collect());
        assert!(
            old.is_none(),
            "ARCHITECTURE.md parts table: `{}` is listed twice",
            part.trim()
        );
    }
    let table = table();
    let show = |targets: Option<&BTreeSet<String>>| match targets {
        None => "(no line)".to_string(),
        Some(targets) if targets.is_empty() => "→ (no arrows)".to_string(),
        Some(targets) => format!("→ {}", Vec::from_iter(targets.iter().cloned()).join(", ")),
    };
    let mut differences = Vec::new();
    for part in BTreeSet::from_iter(documented.keys().chain(table.keys())) {
        let (doc, test) = (documented.get(part), table.get(part));
        if doc != test {
            let (doc, test) = (show(doc), show(test));
            differences.push(format!(
                "  {part}: ARCHITECTURE.md says {doc}; tidy.rs says {test}"
            ));
        }
    }
    fail_on(
        differences,
        "ARCHITECTURE.md's parts table and PARTS in host/tests/integration/tidy.rs differ: make \
         them say the same",
    );
    let on_disk: BTreeSet<String> = std::fs::read_dir(workspace().join("host/src"))
        .expect("read host/src")
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() || path.extension().is_some_and(|e| e == "rs"))
        .filter_map(|path| Some(path.file_stem()?.to_str()?.to_string()))
        .filter(|name| name != "lib" && name != "main")
        .collect();
    let listed: BTreeSet<String> = table.keys().cloned().collect();
    let mut strays = Vec::new();
    for part in on_disk.difference(&listed) {
        strays.push(format!("  host/src/{part} is a part and has no line"));
    }
    for part in listed.difference(&on_disk) {
        strays.push(format!("  {part} has a line and is not in host/src"));
    }
    for target in table.values().flatten().filter(|t| !listed.contains(*t)) {
        strays.push(format!("  {target} is an arrow's target and has no line"));
    }
    fail_on(
        strays,
        "each folder or file at the top of host/src is a part with a line in both parts tables",
    );
}

#[test]
fn the_abi_section_names_the_ffi_it_describes() {
    // The ABI is op-sdk/src/ffi.rs today; should it become a folder, its files count too.
    let src = workspace().join("op-sdk/src");
    let mut files: Vec<PathBuf> = [src.join("ffi.rs")]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if src.join("ffi").is_dir() {
        files.extend(rust_files(&src.join("ffi")));
    }
    files.sort();
    let text: String = files
        .iter()
        .map(|file| read(file).replace("\r\n", "\n"))
        .collect();
    let expected = format!("{ABI_LABEL}0x{:016x}", fnv1a(text.as_bytes()));
    let doc = read(&workspace().join("ARCHITECTURE.md"));
    let found = doc
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with(ABI_LABEL));
    let found = found.unwrap_or_else(|| panic!("ARCHITECTURE.md needs the line `{expected}`"));
    assert!(
        found == expected,
        "op-sdk's ABI changed: reread 'Growing the plugin ABI' in ARCHITECTURE.md, make it \
         true, then update the fingerprint:\n  ARCHITECTURE.md: {found}\n  op-sdk now:      {expected}"
    );
}

#[test]
fn each_crate_and_capability_is_reached_only_where_it_belongs() {
    let sources = sources();
    let mut failures = Vec::new();
    for (names, allowed, why) in REACH {
        let mut offenders = Vec::new();
        for source in sources
            .iter()
            .filter(|s| !allowed(&s.file) && s.file != "app/scaffold.rs")
        {
            for (line, code) in &source.mentions {
                if let Some(name) = names.iter().find(|name| mentions(code, name)) {
                    offenders.push(format!("  {} (`{name}`)", source.at(*line)));
                }
            }
        }
        if !offenders.is_empty() {
            let names = names.join("`, `");
            let offenders = dedup(offenders).join("\n");
            failures.push(format!("`{names}` — {why}:\n{offenders}"));
        }
    }
    fail_on(
        failures,
        "each crate and capability is named only where it belongs",
    );
}

#[test]
fn stdout_is_written_only_by_the_cli_and_the_mcp_protocol_writer() {
    let mut offenders = Vec::new();
    for source in sources() {
        // The command outputs (JSON lines, tables) go through the commands' writers; the MCP
        // protocol writer and util/stdio.rs (claiming stdout for it) take stdout; none prints.
        let may_take = ["app/commands.rs", "util/stdio.rs", "transport/mcp/"];
        for (line, code) in &source.mentions {
            let prints = mentions(code, "println!(") || mentions(code, "print!(");
            if prints || (mentions(code, "io::stdout") && !under(&source.file, &may_take)) {
                offenders.push(source.at(*line));
            }
        }
    }
    fail_on(
        offenders,
        "stdout belongs to the command's output and the MCP protocol; log to stderr",
    );
}

/// Transports never see plugins: besides importing nothing of `ops` (the parts table), they
/// do not reach into a snapshot's plugin registry or name its types; the catalog's methods
/// (`ops_json`, `plugins_json`, `plugins_hash`, `op_count`, `error_count`, `content`) are their way in.
#[test]
fn transports_reach_plugins_only_through_the_catalog() {
    let mut offenders = Vec::new();
    for source in sources() {
        if !under(&source.file, &["transport/"]) {
            continue;
        }
        for (line, code) in &source.mentions {
            let names = [".registry", "Registry", "Library", "OpHandle"];
            if names.iter().any(|name| code.contains(name)) {
                offenders.push(source.at(*line));
            }
        }
    }
    fail_on(
        offenders,
        "transports never see plugins: add a method to catalog::Snapshot (or catalog::content) instead",
    );
}

/// The guard invariant is tested over `transport::http::ROUTES` (every route is called without
/// the key in `http::every_route_but_the_public_ones_needs_the_key`): that table must be the
/// router's, so every `.route("PATH", get(..).post(..))` in the router is in it with its
/// methods, and nothing else is.
#[test]
fn the_route_table_is_the_routers() {
    let router = read(&workspace().join("host/src/transport/http/mod.rs"));
    let mut routed = BTreeSet::new();
    // One `.route(` call per line in the router (rustfmt keeps them so).
    for line in router.lines().map(str::trim) {
        let Some(call) = line.strip_prefix(".route(\"") else {
            continue;
        };
        let (path, handlers) = call.split_once('"').expect("a closing quote");
        let methods: Vec<&str> = ["get", "post", "delete", "put", "patch"]
            .into_iter()
            .filter(|m| handlers.contains(&format!("{m}(")))
            .collect();
        routed.insert(format!("{} {path}", methods.join(" ").to_uppercase()));
    }
    let listed: BTreeSet<String> = flowhost::HTTP_ROUTES
        .iter()
        .filter(|(_, path)| !matches!(*path, "/mcp" | "/docs/"))
        .map(|(methods, path)| format!("{methods} {path}"))
        .collect();
    assert!(routed.len() >= 15, "read only {routed:?} from the router");
    assert_eq!(
        routed, listed,
        "transport::http::ROUTES must list exactly the router's `.route(` calls (the guard test walks it)"
    );
    for (path, how) in [("/mcp", "\"/mcp\","), ("/docs", "uri_prefix: \"/docs\"")] {
        assert!(
            router.contains(how),
            "the router no longer mounts {path} as ROUTES says"
        );
    }
}

#[test]
fn every_module_says_what_it_owns() {
    let root = workspace();
    let mut missing = Vec::new();
    for dir in ["host/src", "op-sdk/src", "plugins", "bench/src"] {
        for file in rust_files(&root.join(dir)) {
            if !read(&file).starts_with("//!") {
                let name = file.strip_prefix(&root).unwrap_or(&file);
                missing.push(name.display().to_string());
            }
        }
    }
    fail_on(
        missing,
        "start each module with a `//!` line saying what it owns",
    );
}

#[test]
fn no_file_is_long_without_a_reason() {
    let mut offenders = Vec::new();
    for source in sources() {
        let lines = source
            .text
            .lines()
            .take_while(|line| *line != "#[cfg(test)]")
            .count();
        let mut docs = source
            .text
            .lines()
            .take_while(|line| line.starts_with("//!"));
        if lines > LONG_FILE && !docs.any(|line| line.starts_with("//! Long because")) {
            offenders.push(format!("host/src/{}: {lines} lines", source.file));
        }
    }
    fail_on(
        offenders,
        &format!(
            "a file over {LONG_FILE} lines (before its `#[cfg(test)]` tests) is split, or says \
             why in its module docs with a `//! Long because …` line"
        ),
    );
}

#[test]
fn op_sdk_has_no_async_runtime() {
    let manifest = read(&workspace().join("op-sdk/Cargo.toml"));
    for runtime in ["tokio", "async-std", "smol", "futures"] {
        assert!(
            !manifest
                .lines()
                .any(|l| l.trim_start().starts_with(runtime)),
            "op-sdk must not depend on {runtime}: a cdylib's runtime cannot see the host's"
        );
    }
}

/// The reader the checks above rely on, on the forms it must get right.
#[test]
fn the_import_reader_resolves_use_trees_paths_and_inline_modules() {
    const SAMPLE: &str = r##"
use crate::{a::b, c::{
    d, e as f}};
use super::*;
// use crate::in_a_comment;
fn f<'a>(s: &'a str) -> char { let _ = ("crate::x", r#"crate::x"#, crate::g::h()); '"' }
#[cfg(test)]
mod tests {
    use super::{i, self as j};
    mod deeper { use super::super::k; }
}
use self::l::m;
use std::{env::var, fs::{self, File}};
"##;
    let (uses, references) = paths(&["x".into(), "y".into()], &code_of(SAMPLE));
    let read = references
        .iter()
        .map(|(line, path)| format!("{line}: {}", path.join("::")));
    let expected = "2: a::b, 3: c::d, 3: c::e, 4: x, 6: g::h, 9: x::y::i, 9: x::y, 10: x::y::k, \
                    12: x::y::l::m";
    assert_eq!(read.collect::<Vec<_>>().join(", "), expected);
    let std: Vec<String> = uses[uses.len() - 3..]
        .iter()
        .map(|u| u.1.join("::"))
        .collect();
    assert_eq!(std, ["std::env::var", "std::fs", "std::fs::File"]);
}

/// Fails with `what` and the offenders, each once, in the order found.
fn fail_on(offenders: Vec<String>, what: &str) {
    assert!(
        offenders.is_empty(),
        "{what}:\n{}",
        dedup(offenders).join("\n")
    );
}

fn dedup(mut lines: Vec<String>) -> Vec<String> {
    let mut seen = BTreeSet::new();
    lines.retain(|line| seen.insert(line.clone()));
    lines
}

// ---- Reading host/src -----------------------------------------------------------------------

/// One .rs file under host/src: its path there, its module path (`x/mod.rs` is `x`, `x/y.rs`
/// is `x::y`, lib.rs and main.rs the root), what its code names line by line (its lines with
/// comments and literals blanked, and each `use` leaf spelled out, so `use std::{env, fs};`
/// names `std::fs`), and its `crate::`/`super::`/`self::` paths resolved from the crate root.
struct Source {
    file: String,
    module: Vec<String>,
    text: String,
    mentions: Vec<(usize, String)>,
    references: Paths,
}

fn sources() -> Vec<Source> {
    let src = workspace().join("host/src");
    let source = |path: PathBuf| {
        let file = path
            .strip_prefix(&src)
            .expect("under host/src")
            .to_string_lossy()
            .replace('\\', "/");
        let mut module: Vec<String> = file
            .trim_end_matches(".rs")
            .split('/')
            .map(String::from)
            .collect();
        if module.last().is_some_and(|m| m == "mod") || file == "lib.rs" || file == "main.rs" {
            module.pop();
        }
        let text = read(&path);
        let code = code_of(&text);
        let (uses, references) = paths(&module, &code);
        let lines = code
            .lines()
            .enumerate()
            .map(|(n, code)| (n + 1, code.to_string()));
        let mut mentions: Vec<_> = lines
            .chain(uses.into_iter().map(|(n, path)| (n, path.join("::"))))
            .collect();
        mentions.sort_by_key(|(line, _)| *line);
        Source {
            file,
            module,
            text,
            mentions,
            references,
        }
    };
    rust_files(&src).into_iter().map(source).collect()
}

impl Source {
    fn at(&self, line: usize) -> String {
        let text = self.text.lines().nth(line - 1).unwrap_or("").trim();
        format!("host/src/{}:{line}: {text}", self.file)
    }
}

/// `text` with comments and the insides of string and char literals blanked, newlines kept:
/// code on the same lines. More than skipping `//` lines: a `// crate::x` after code, or a
/// "crate::x" or "http://" in a string, is not code.
fn code_of(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let at = |k: usize| chars.get(k).copied().unwrap_or('\0');
    let (mut out, mut i) = (String::with_capacity(text.len()), 0);
    while i < chars.len() {
        let after_ident = i > 0 && is_ident(chars[i - 1]);
        let end = match (chars[i], at(i + 1)) {
            ('/', '/') => (i..chars.len())
                .find(|&k| chars[k] == '\n')
                .unwrap_or(chars.len()),
            ('/', '*') => {
                let (mut depth, mut k) = (0, i); // block comments nest
                while k < chars.len() {
                    match (chars[k], at(k + 1)) {
                        ('/', '*') => (depth, k) = (depth + 1, k + 2),
                        ('*', '/') => (depth, k) = (depth - 1, k + 2),
                        _ => k += 1,
                    }
                    if depth == 0 {
                        break;
                    }
                }
                k
            }
            ('"', _) => quoted_end(&chars, i + 1, '"'),
            ('\'', '\\') => quoted_end(&chars, i + 1, '\''),
            ('\'', _) if at(i + 2) == '\'' => i + 3, // 'x'; a lifetime 'a has no closing quote
            ('r', '#' | '"') | ('b', 'r') if !after_ident => {
                let open = i + usize::from(chars[i] == 'b') + 1;
                let hashes = chars[open..].iter().take_while(|&&c| c == '#').count();
                if at(open + hashes) != '"' {
                    i // `r#ident`, or an identifier such as `break`
                } else {
                    let close: Vec<char> = "\"".chars().chain("#".repeat(hashes).chars()).collect();
                    let body = open + hashes + 1;
                    let found = chars[body..].windows(close.len()).position(|w| w == close);
                    found.map_or(chars.len(), |k| body + k + close.len())
                }
            }
            _ => i,
        };
        if end == i {
            out.push(chars[i]);
            i += 1;
        } else {
            out.extend(
                chars[i..end]
                    .iter()
                    .map(|&c| if c == '\n' { '\n' } else { ' ' }),
            );
            i = end;
        }
    }
    out
}

fn quoted_end(chars: &[char], mut k: usize, quote: char) -> usize {
    while k < chars.len() {
        match chars[k] {
            '\\' => k += 2,
            c if c == quote => return k + 1,
            _ => k += 1,
        }
    }
    chars.len()
}

type Paths = Vec<(usize, Vec<String>)>;

/// The `use` leaves of blanked `code` (`use crate::{a::b, c::{d, e}};` has three; a glob
/// `x::*` is `x`), and every path starting with `crate`, `super` or `self`, in a `use` or in
/// an expression or type (`crate::llm::tls_init()`), resolved from the crate root. Inline
/// modules (`mod tests { … }`) are followed by brace depth: `super::` in one is its parent.
fn paths(module: &[String], code: &str) -> (Paths, Paths) {
    let tokens = tokens(code);
    let token = |k: usize| tokens.get(k).map_or("", |t| t.1);
    let (mut uses, mut references) = (Vec::new(), Vec::new());
    let mut inline: Vec<(String, usize)> = Vec::new(); // inline modules and the depth inside
    let (mut depth, mut i) = (0, 0);
    while i < tokens.len() {
        let (line, t) = tokens[i];
        let mut found = Vec::new();
        match t {
            "{" => depth += 1,
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|m| m.1 > depth) {
                    inline.pop();
                }
            }
            "mod" if token(i + 2) == "{" => {
                depth += 1;
                inline.push((token(i + 1).to_string(), depth));
                i += 2;
            }
            "use"
                if token(i + 1) == "::"
                    || token(i + 1) == "{"
                    || token(i + 1).starts_with(is_ident) =>
            {
                i += 1;
                use_tree(&tokens, &mut i, Vec::new(), &mut found);
                uses.extend(found.iter().cloned());
                i -= 1; // at the `;`
            }
            "crate" | "super" | "self"
                if token(i + 1) == "::" && !["$", "::"].contains(&token(i.wrapping_sub(1))) =>
            {
                let mut path = vec![t.to_string()];
                while token(i + 1) == "::" && token(i + 2).starts_with(is_ident) {
                    path.push(token(i + 2).to_string());
                    i += 2;
                }
                found.push((line, path));
            }
            _ => {}
        }
        if !found.is_empty() {
            let here: Vec<String> = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|m| m.0.clone()))
                .collect();
            references.extend(
                found
                    .into_iter()
                    .filter_map(|(line, path)| Some((line, resolve(&here, &path)?))),
            );
        }
        i += 1;
    }
    (uses, references)
}

/// Reads one use tree from `tokens[*i]` on, pushing each leaf as a full path with the line of
/// its last segment (`self` in a group is the group's path; `as` renames are skipped).
fn use_tree(tokens: &[(usize, &str)], i: &mut usize, mut path: Vec<String>, out: &mut Paths) {
    let next_is = |i: usize, text: &str| tokens.get(i).is_some_and(|t| t.1 == text);
    while let Some(&(line, t)) = tokens.get(*i) {
        *i += 1;
        if t == "*" {
            return out.push((line, path));
        } else if t == "{" {
            while tokens.get(*i).is_some_and(|t| t.1 != "}") {
                let before = *i;
                use_tree(tokens, i, path.clone(), out);
                if next_is(*i, ",") || *i == before {
                    *i += 1;
                }
            }
            *i += 1;
            return;
        } else if t.starts_with(is_ident) {
            if t != "self" || path.is_empty() {
                path.push(t.to_string());
            }
            if next_is(*i, "::") {
                continue;
            }
            if next_is(*i, "as") {
                *i += 2;
            }
            return out.push((line, path));
        } else if t != "::" {
            *i -= 1; // not part of a use tree
            return;
        }
    }
}

/// A path written in `module`, from the crate root; `None` when it starts elsewhere (another
/// crate, or a name in scope: a child module, which is in the same part).
fn resolve(module: &[String], path: &[String]) -> Option<Vec<String>> {
    let mut resolved = match path.first()?.as_str() {
        "crate" => Vec::new(),
        "super" | "self" => module.to_vec(),
        _ => return None,
    };
    for segment in &path[usize::from(path[0] == "crate")..] {
        match segment.as_str() {
            "super" => drop(resolved.pop()?),
            "self" => {}
            name => resolved.push(name.to_string()),
        }
    }
    Some(resolved)
}

/// Identifiers, `::`, and single characters, with their line numbers.
fn tokens(code: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (n, mut rest) in code.lines().enumerate() {
        while let Some(c) = rest.chars().next() {
            let len = match c {
                _ if is_ident(c) => rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len()),
                ':' if rest.starts_with("::") => 2,
                _ => c.len_utf8(),
            };
            if !c.is_whitespace() {
                out.push((n + 1, &rest[..len]));
            }
            rest = &rest[len..];
        }
    }
    out
}

// ---- Small helpers --------------------------------------------------------------------------

/// Whether `code` names `name` as a whole: not inside a longer identifier, not a method or
/// field (`.name`); `eprintln!(` does not name `println!(`.
fn mentions(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at]
            .chars()
            .next_back()
            .is_some_and(|c| is_ident(c) || c == '.');
        let after = code[at + name.len()..].chars().next().is_some_and(is_ident);
        let continues = after && name.ends_with(is_ident);
        !(before || continues)
    })
}

/// Whether a path under host/src is one of `places` (a folder if it ends in `/`, else a file).
fn under(file: &str, places: &[&str]) -> bool {
    places.iter().any(|p| {
        if p.ends_with('/') {
            file.starts_with(p)
        } else {
            file == *p
        }
    })
}

fn table() -> BTreeMap<String, BTreeSet<String>> {
    let targets = |targets: &[&str]| targets.iter().map(|t| t.to_string()).collect();
    PARTS
        .iter()
        .map(|(part, to)| (part.to_string(), targets(to)))
        .collect()
}

/// A cycle in the table, if it has one: what a topological sort cannot remove.
fn cycle(table: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let mut left: BTreeSet<&String> = table.keys().collect();
    loop {
        let free: Vec<&String> = left
            .iter()
            .filter(|p| table[**p].iter().all(|t| !left.contains(t)))
            .copied()
            .collect();
        if free.is_empty() {
            break;
        }
        for part in free {
            left.remove(part);
        }
    }
    // Each part left points at another part left: walk until one repeats.
    let mut walk = vec![*left.first()?];
    loop {
        let next = table[*walk.last()?].iter().find(|t| left.contains(t))?;
        if let Some(start) = walk.iter().position(|p| *p == next) {
            return Some(
                walk[start..]
                    .iter()
                    .chain([&next])
                    .map(|p| p.to_string())
                    .collect(),
            );
        }
        walk.push(next);
    }
}

/// FNV-1a, 64 bits (the host's `util::stable_hash`, restated so this check stands alone).
fn fnv1a(bytes: &[u8]) -> u64 {
    let step = |hash: u64, byte: &u8| (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, step)
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
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
