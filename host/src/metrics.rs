//! Prometheus metrics: the names flowhost records and the process-wide recorder. Knows nothing
//! of what is measured beyond these names.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub(crate) const REQUESTS: &str = "flowhost_http_requests_total";
pub(crate) const ACTIVE_STREAMS: &str = "flowhost_active_streams";
pub(crate) const CHUNKS: &str = "flowhost_chunks_total";
pub(crate) const FIRST_CHUNK: &str = "flowhost_first_chunk_seconds";
pub(crate) const FLOW_ERRORS: &str = "flowhost_flow_errors_total";
pub(crate) const CANCELLATIONS: &str = "flowhost_cancellations_total";
pub(crate) const RELOADS: &str = "flowhost_reloads_total";
pub(crate) const OPS_RUNNING: &str = "flowhost_ops_running";
pub(crate) const OPS_LOWERED: &str = "flowhost_op_calls_lowered_total";
pub(crate) const LOGS_DROPPED: &str = "flowhost_op_logs_dropped_total";
pub(crate) const RUNS_QUEUED: &str = "flowhost_runs_queued";
pub(crate) const WORKERS: &str = "flowhost_workers";
pub(crate) const WORKER_CRASHES: &str = "flowhost_worker_crashes_total";
pub(crate) const RUNS_REJECTED: &str = "flowhost_runs_rejected_total";
pub(crate) const RUNS_RESUMED: &str = "flowhost_runs_resumed_total";
/// Flow calls by caller (`subject`: a configured key's name, `default`, `jwt`, `anonymous`,
/// `local`) and outcome (`ok`, `error`, `cancelled`, `denied`, `rate_limited`).
pub(crate) const CALLS: &str = "flowhost_calls_total";
/// Requests refused for a missing or bad credential (`reason`: `missing`, `invalid`).
pub(crate) const AUTH_FAILURES: &str = "flowhost_auth_failures_total";
pub(crate) const CACHE_HITS: &str = "flowhost_op_cache_hits_total";
pub(crate) const CACHE_MISSES: &str = "flowhost_op_cache_misses_total";
pub(crate) const OP_RETRIES: &str = "flowhost_op_retries_total";
pub(crate) const OP_FAILURES_TOLERATED: &str = "flowhost_op_failures_tolerated_total";
pub(crate) const CONNECTIONS: &str = "flowhost_http_connections";
pub(crate) const CONNECTIONS_REFUSED: &str = "flowhost_http_connections_refused_total";
pub(crate) const CONNECTIONS_TIMED_OUT: &str = "flowhost_http_connections_timed_out_total";
/// Spans sent to the OTLP receiver (`telemetry`).
pub(crate) const SPANS_EXPORTED: &str = "flowhost_trace_spans_exported_total";
/// Spans lost (`reason`: `queue_full` while the exporter is behind, `export_failed` when the
/// receiver refused or did not answer).
pub(crate) const SPANS_DROPPED: &str = "flowhost_trace_spans_dropped_total";
/// Per outside MCP server (`external_mcp`, label `server`): 1 while its session is open.
pub(crate) const UPSTREAM_UP: &str = "flowhost_mcp_upstream_up";
/// Sessions of an outside MCP server that ended (crash, exit, hang) and were opened again.
pub(crate) const UPSTREAM_RESTARTS: &str = "flowhost_mcp_upstream_restarts_total";
/// Tool calls to an outside MCP server (`outcome`: `ok`, `tool_error` for an `isError`
/// result, `error` when the server failed or did not answer).
pub(crate) const UPSTREAM_CALLS: &str = "flowhost_mcp_upstream_calls_total";
/// Always 1; its labels carry the served flow and plugin set hashes.
pub(crate) const SERVED_INFO: &str = "flowhost_served_info";

/// The `flowhost_ops_running` gauge, looked up once (op calls are the hot path).
pub(crate) fn ops_running() -> &'static metrics::Gauge {
    static GAUGE: OnceLock<metrics::Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| metrics::gauge!(OPS_RUNNING))
}

/// Installs the recorder once per process and returns the handle that renders `/metrics`.
pub(crate) fn handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    metrics_exporter_prometheus::Matcher::Full(FIRST_CHUNK.into()),
                    &[0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0],
                )
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(err) => {
                    tracing::warn!("metrics disabled: {err}");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(REQUESTS, "HTTP requests by route and status");
    metrics::describe_gauge!(CONNECTIONS, "Open HTTP connections");
    metrics::describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections refused at once because http.max_connections were open"
    );
    metrics::describe_counter!(
        CONNECTIONS_TIMED_OUT,
        "Connections closed by http.header_timeout or http.keepalive_timeout"
    );
    metrics::describe_gauge!(ACTIVE_STREAMS, "SSE streams being served");
    metrics::describe_counter!(CHUNKS, "chunks streamed to clients");
    metrics::describe_histogram!(FIRST_CHUNK, "time from request to first chunk");
    metrics::describe_counter!(FLOW_ERRORS, "flow runs that ended with an error");
    metrics::describe_counter!(CANCELLATIONS, "runs cancelled because the client went away");
    metrics::describe_counter!(RELOADS, "catalog reloads (flow files or plugins changed)");
    metrics::describe_gauge!(OPS_RUNNING, "op calls executing on op threads");
    metrics::describe_counter!(
        LOGS_DROPPED,
        "op log lines dropped because a client read too slowly"
    );
    metrics::describe_gauge!(WORKERS, "op worker processes alive (isolation: process)");
    metrics::describe_counter!(
        OPS_LOWERED,
        "op calls on the op pool moved to nice 19 for burning CPU without a chunk or a wait"
    );
    metrics::describe_counter!(WORKER_CRASHES, "op workers that died or were killed");
    metrics::describe_counter!(
        CACHE_HITS,
        "op calls answered from the cache (enable_cache)"
    );
    metrics::describe_counter!(CACHE_MISSES, "cached op calls that ran (enable_cache)");
    metrics::describe_counter!(
        OP_RETRIES,
        "op calls made again after a failure (max_retries)"
    );
    metrics::describe_counter!(
        OP_FAILURES_TOLERATED,
        "op failures recorded while the flow went on (raise_exception=False)"
    );
    metrics::describe_counter!(
        RUNS_RESUMED,
        "async runs taken over and resumed after the host running them stopped (store.path)"
    );
    metrics::describe_counter!(
        CALLS,
        "flow calls by caller (auth.keys name, default, jwt, anonymous, local) and outcome"
    );
    metrics::describe_counter!(
        AUTH_FAILURES,
        "requests refused with 401: no credential, or one that does not verify"
    );
    metrics::describe_counter!(
        SPANS_EXPORTED,
        "trace spans sent to the OTLP receiver (telemetry)"
    );
    metrics::describe_counter!(
        SPANS_DROPPED,
        "trace spans lost: queue_full (the exporter is behind), export_failed (the receiver refused or timed out)"
    );
    metrics::describe_gauge!(
        UPSTREAM_UP,
        "outside MCP servers (external_mcp) with an open session"
    );
    metrics::describe_counter!(
        UPSTREAM_RESTARTS,
        "sessions of outside MCP servers that ended and were opened again"
    );
    metrics::describe_counter!(
        UPSTREAM_CALLS,
        "tool calls to outside MCP servers by outcome"
    );
    metrics::describe_gauge!(RUNS_QUEUED, "runs waiting for a turn (admission control)");
    metrics::describe_counter!(
        RUNS_REJECTED,
        "runs refused because their flow or the host was busy"
    );
    // Every family is there from the start, at zero, with its HELP and TYPE: a dashboard or
    // an alert on a counter that has not moved yet shows 0, not "no data". (Families whose
    // every sample has labels appear with their first event.)
    for counter in [
        CONNECTIONS_REFUSED,
        CHUNKS,
        FLOW_ERRORS,
        CANCELLATIONS,
        RELOADS,
        LOGS_DROPPED,
        OPS_LOWERED,
        WORKER_CRASHES,
        CACHE_HITS,
        CACHE_MISSES,
        OP_RETRIES,
        OP_FAILURES_TOLERATED,
        RUNS_RESUMED,
        SPANS_EXPORTED,
    ] {
        metrics::counter!(counter).absolute(0);
    }
    for reason in ["missing", "invalid"] {
        metrics::counter!(AUTH_FAILURES, "reason" => reason).absolute(0);
    }
    for reason in ["queue_full", "export_failed"] {
        metrics::counter!(SPANS_DROPPED, "reason" => reason).absolute(0);
    }
    for timeout in ["http.header_timeout", "http.keepalive_timeout"] {
        metrics::counter!(CONNECTIONS_TIMED_OUT, "timeout" => timeout).absolute(0);
    }
    for gauge in [
        CONNECTIONS,
        ACTIVE_STREAMS,
        OPS_RUNNING,
        WORKERS,
        RUNS_QUEUED,
    ] {
        metrics::gauge!(gauge).set(0.0);
    }
}
