//! Wiring: what `serve` and the one-shot commands start from. Builds the runtime, loads the
//! catalog, sets the process-wide settings (worker pool size, the op cache's files, MCP's
//! state key, claiming stdout in stdio mode), and hands a catalog and run options to a
//! transport.

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use crate::app::config::{self, Config};
use crate::catalog::Catalog;
use crate::exec;

pub(super) fn load_catalog(config: &Config) -> Catalog {
    load_catalog_with(config, crate::plan::McpCatalog::default())
}

/// The catalog compiled against the outside MCP servers' tools (`mcp`).
pub(super) fn load_catalog_with(config: &Config, mcp: crate::plan::McpCatalog) -> Catalog {
    Catalog::load_with(
        config.flow_dirs.clone(),
        config.plugin_dirs.clone(),
        config.filter.clone(),
        mcp,
    )
}

/// How long the host waits at start for the outside MCP servers' first tool lists.
const UPSTREAM_START_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// Starts the outside MCP servers (`external_mcp`) on the current runtime and waits for their
/// first tool lists; None when there are none.
pub(super) async fn start_upstreams(config: &Config) -> Option<Arc<crate::upstream::Upstreams>> {
    if config.upstream.servers.is_empty() {
        return None;
    }
    // HTTP servers' clients need the TLS provider (every command comes here, not only serve).
    crate::llm::tls_init();
    Some(crate::upstream::Upstreams::start(&config.upstream, UPSTREAM_START_WAIT).await)
}

/// A one-shot command's catalog: the outside MCP servers are started (on a runtime of their
/// own, stopped when the command has its catalog) so flows using them compile.
pub(super) fn load_catalog_listing(config: &Config) -> Result<Catalog, String> {
    if config.upstream.servers.is_empty() {
        return Ok(load_catalog(config));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))?;
    let mcp = runtime.block_on(async {
        start_upstreams(config)
            .await
            .map(|upstreams| upstreams.catalog())
            .unwrap_or_default()
    });
    Ok(load_catalog_with(config, mcp))
}

/// Keeps the catalog compiled against the servers' tools as they change (on the current
/// runtime, until the host stops).
pub(super) fn follow_upstreams(
    upstreams: &Arc<crate::upstream::Upstreams>,
    catalog: &Arc<Catalog>,
) {
    let mut changes = upstreams.subscribe();
    let (upstreams, catalog) = (upstreams.clone(), Arc::downgrade(catalog));
    tokio::spawn(async move {
        // Once now: a server that listed its tools while the catalog loaded, before this
        // subscription, is not missed.
        changes.mark_changed();
        while changes.changed().await.is_ok() {
            let Some(catalog) = catalog.upgrade() else {
                return;
            };
            let mcp = upstreams.catalog();
            let _ = tokio::task::spawn_blocking(move || catalog.set_mcp(mcp)).await;
        }
    });
}

/// A runtime for one-shot commands, with the same op thread bound as the server.
pub(crate) fn runtime(config: &Config) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.backend == config::Backend::Stdio {
        // One stdio connection: its protocol work fits one thread, and hops between worker
        // threads cost more than the work. Multi-threaded all the same, so that fast ops can
        // run inline and hand the runtime on when they wait (`ops::Speed`).
        builder.worker_threads(1);
    }
    crate::exec::set_max_op_threads(config.ops.max_op_threads);
    builder
        .enable_all()
        .max_blocking_threads(config.ops.max_op_threads)
        .build()
        .map_err(|err| format!("cannot start the async runtime: {err}"))
}

/// What every run starts with: the LLM service from the configuration. The op cache's entries
/// are also kept in `cache.dir`, else in `store` (an HTTP host's run store), if either is set.
pub(super) fn run_options(
    config: &Config,
    store: Option<&Arc<dyn crate::store::Backend>>,
) -> exec::Options {
    crate::exec::worker::set_max_workers(config.ops.max_workers);
    crate::exec::worker::set_idle_timeout(config.ops.worker_idle_timeout);
    let files: Option<Box<dyn crate::exec::cache::CacheFiles>> = match (&config.cache_dir, store) {
        (Some(dir), _) => Some(Box::new(crate::app::cache_files::Folder::new(dir.clone()))),
        (None, Some(store)) => Some(Box::new(crate::app::cache_files::Stored(store.clone()))),
        (None, None) => None,
    };
    crate::exec::cache::set_files(files);
    exec::Options {
        llm: Some(Arc::new(crate::llm::Service::new(config.llm.clone()))),
        admission: crate::exec::admission::Global::new(
            config.ops.max_concurrency,
            config.ops.max_queue,
        ),
        isolation: Arc::new(config.ops.isolation.clone()),
        ..exec::Options::default()
    }
}

/// Run options that can run other flows (`FlowOp`) from `catalog`.
pub(super) fn run_options_with_flows(
    config: &Config,
    catalog: &Arc<crate::catalog::Catalog>,
    store: Option<&Arc<dyn crate::store::Backend>>,
) -> exec::Options {
    exec::Options {
        flows: Some(catalog.lookup()),
        ..run_options(config, store)
    }
}

/// The allocator (mimalloc, `main.rs`) gives a freed page back to the system at once while
/// the host loads: what loading freed is not kept (idle RSS). Once it serves, a freed page is
/// kept 10 ms: under load a page one request emptied is filled again by the next, and giving
/// it back each time (`madvise`, then a page fault and a zeroed page on reuse) was 15-20% of
/// a non-stream request's CPU (BENCHMARKS.md, issue 21). A delay set in the environment
/// still wins (`MIMALLOC_PURGE_DELAY`, or its old name `MIMALLOC_RESET_DELAY`, in any case as
/// mimalloc reads them).
fn keep_freed_pages_while_serving() {
    let set_by_user = std::env::vars_os().any(|(name, _)| {
        name.to_str().is_some_and(|name| {
            name.eq_ignore_ascii_case("MIMALLOC_PURGE_DELAY")
                || name.eq_ignore_ascii_case("MIMALLOC_RESET_DELAY")
        })
    });
    if set_by_user {
        return;
    }
    // mimalloc v3's `mi_option_purge_delay` (include/mimalloc.h); the crate names only some.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: a plain setter of one of mimalloc's options, which it reads on every purge; with
    // another global allocator (the tests' builds of this library) it changes nothing. Other
    // threads may be purging as it is set: mimalloc's options are plain `long`s written and
    // read without atomics (as `mi_option_set` is meant to be used at any time); a purge reads
    // the old or the new value, either of which is a valid delay.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, 10) };
}

pub(super) fn serve(config: &Config, dev: bool) -> Result<ExitCode, String> {
    // A flows folder that is not there at start is a mistake (a wrong --flows, the wrong
    // working folder), not an empty host. (One that goes away later keeps its last flows.)
    if let Some(missing) = config.flow_dirs.iter().find(|dir| !dir.is_dir()) {
        return Err(format!(
            "the flows folder {} does not exist (check --flows or flows_dir, or create it)",
            missing.display()
        ));
    }
    if let Some(key) = &config.http.mcp_state_key {
        crate::transport::mcp::set_state_key(key)?;
    }
    if config.backend == config::Backend::Stdio {
        // Before any plugin is loaded: stray prints must never reach the protocol stream.
        crate::transport::mcp::claim_stdout()?;
    }
    let mut config = config.clone();
    let dev = if dev {
        let plan = crate::app::dev::plan(Path::new("plugins"))?;
        // Where the builds land must be a plugin folder.
        let known = config
            .plugin_dirs
            .iter()
            .any(|dir| dir.canonicalize().ok().as_deref() == Some(plan.out_dir.as_path()));
        if !known {
            config.plugin_dirs.push(plan.out_dir.clone());
        }
        // A rebuilt library only goes live through the plugin watcher.
        config.watch = true;
        Some(plan)
    } else {
        None
    };
    let config = &config;
    // While serving HTTP, log lines reach stderr a millisecond's worth at a time
    // (`util/logs.rs`); what is left is written when this drops, before an error is printed.
    // Not over stdio: an MCP client may end the host with a signal, which nothing catches
    // there, and its log is a line per call at most.
    let _logs = (config.backend == config::Backend::Http).then(crate::util::logs::start);
    // Before the runtime: its threads' first spans find the tracer. Kept to the end: its drop
    // sends the spans still queued.
    crate::llm::tls_init();
    let _traces = crate::telemetry::init(&config.telemetry, &|name| std::env::var(name).ok())?;
    let runtime = runtime(config)?;
    // Kept past the runtime: the audit lines of calls ended by its shutdown are flushed last.
    let mut auth_kept: Option<Arc<crate::auth::Auth>> = None;
    runtime.block_on(async {
        let upstreams = start_upstreams(config).await;
        let mcp = upstreams.as_ref().map(|u| u.catalog()).unwrap_or_default();
        let catalog = Arc::new(load_catalog_with(config, mcp));
        if let Some(upstreams) = &upstreams {
            follow_upstreams(upstreams, &catalog);
        }
        let _watching = if config.watch {
            Some(crate::catalog::watch::start(
                catalog.clone(),
                config.debounce,
            )?)
        } else {
            None
        };
        let _dev = dev.map(crate::app::dev::start).transpose()?;
        keep_freed_pages_while_serving();
        match config.backend {
            config::Backend::Http => {
                // Opening may wait on another process's lock or a Redis server: off the runtime.
                let settings = config.store.clone();
                let store = tokio::task::spawn_blocking(move || crate::store::open(&settings))
                    .await
                    .map_err(|err| format!("opening the run store failed: {err}"))??;
                let options = run_options_with_flows(config, &catalog, store.as_ref());
                let auth =
                    Arc::new(crate::auth::Auth::new(config.auth.clone(), store.clone()).await?);
                auth_kept = Some(auth.clone());
                let durable = store.map(|backend| {
                    crate::transport::http::Durable::new(backend, config.store.clone())
                });
                crate::transport::http::serve(catalog, config.http.clone(), options, durable, auth)
                    .await
            }
            config::Backend::Stdio => {
                let snapshot = catalog.snapshot();
                tracing::info!(
                    "flowhost {} serving MCP on stdio: {} tools",
                    env!("CARGO_PKG_VERSION"),
                    snapshot.live().count()
                );
                drop(snapshot);
                let max_line = crate::transport::mcp::MAX_LINE_BYTES;
                let options = run_options_with_flows(config, &catalog, None);
                // The agent tool that started the host is its one caller (`local`); only the
                // audit trail applies.
                let audit = crate::auth::Settings {
                    audit: config.auth.audit.clone(),
                    ..Default::default()
                };
                let auth = Arc::new(crate::auth::Auth::new(audit, None).await?);
                auth_kept = Some(auth.clone());
                crate::transport::mcp::serve_stdio(catalog, options, max_line, auth).await
            }
        }
    })?;
    // The stdio session ends when stdin closes; op threads still sleeping must not hold the
    // process open.
    crate::upstream::stop_all();
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    if let Some(auth) = auth_kept {
        auth.flush();
    }
    Ok(ExitCode::SUCCESS)
}
