//! Traces (issue 26): what spans cost. The same non-stream JSON flow under load, and one
//! 1,000,000-chunk stream, with tracing off (no endpoint), on with the `always_on` sampler
//! (every request makes a server, a run and an op span, all exported), and on with
//! `traceidratio 0.01`. The OTLP receiver is this process: it answers every export at once
//! and counts the spans' bytes, so the figure is the host's cost, not a collector's.
//! Alternating rounds (each starting with a different setup), the median of each, and the
//! median of each round's own ratio to the round's tracing-off host CPU (steadier when the
//! machine's speed drifts).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::compare::{free_port, serve_command, start};
use crate::sse::read_stream;

const FLOWS: &str = "fake_echo_flow:\n  flow_content: EchoOp()\ncount_stream_flow:\n  flow_content: CountOp()\n  stream: true\n";
const ROUNDS: usize = 5;
const SECONDS: u64 = 5;
const WORKERS: usize = 32;
const CHUNKS: u64 = 1_000_000;

/// An OTLP/HTTP sink on loopback: answers 200 at once; counts the exports' bytes.
async fn sink(bytes: Arc<AtomicU64>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the sink");
    let url = format!("http://{}", listener.local_addr().expect("its address"));
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let bytes = bytes.clone();
            async move {
                bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                ""
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let dir = tempfile::tempdir().expect("a temp folder");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).expect("flows folder");
    std::fs::write(flows.join("f.yaml"), FLOWS).expect("flow file");
    let exported = Arc::new(AtomicU64::new(0));
    let endpoint = sink(exported.clone()).await;
    let config = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("config");
        path
    };
    let off = config("off.yaml", String::new());
    let on = config(
        "on.yaml",
        format!("telemetry:\n  endpoint: {endpoint}\n  sampler: always_on\n"),
    );
    let ratio = config(
        "ratio.yaml",
        format!(
            "telemetry:\n  endpoint: {endpoint}\n  sampler: traceidratio\n  sampler_arg: 0.01\n"
        ),
    );
    let setups: [(&str, &Path); 3] = [
        ("tracing off", &off),
        ("always_on", &on),
        ("traceidratio 0.01", &ratio),
    ];
    let mut rounds: Vec<Vec<(Value, f64)>> = vec![Vec::new(); setups.len()];
    for round in 0..ROUNDS {
        // Each round starts with a different setup: no setup always runs first (on a fresh
        // machine) or last.
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let config = setups[i].1;
            let port = free_port();
            let mut command = serve_command(bin_dir, port, &flows);
            command.arg("--config").arg(config);
            let server = start("flowhost", command, port, Duration::from_secs(60)).await;
            // The stream first, on the fresh host: after the load the exporter is still
            // sending the load's spans, and one short stream measured beside it moved ±30%.
            let client = reqwest::Client::new();
            let url = format!("{}/count_stream_flow", server.url);
            let (chunks, done, _, took, _) =
                read_stream(&client, &url, &json!({"n": CHUNKS})).await;
            assert!(done && chunks >= CHUNKS, "the stream ended early: {chunks}");
            let cpu_before = server.cpu_seconds();
            let mut load = crate::load::nonstream(
                &server.url,
                "fake_echo_flow",
                WORKERS,
                Duration::from_secs(SECONDS),
            )
            .await;
            // The host's own CPU per request: what tracing costs it, whatever the client and
            // the receiver (on the same two cores) take.
            let requests = load["requests"].as_f64().unwrap_or(0.0).max(1.0);
            load["cpu_us_per_request"] =
                json!((server.cpu_seconds() - cpu_before) * 1e6 / requests);
            rounds[i].push((load, CHUNKS as f64 / took.as_secs_f64()));
        }
    }
    let median = |mut values: Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let rps = |i: usize| {
        median(
            rounds[i]
                .iter()
                .filter_map(|(r, _)| r["requests_per_sec"].as_f64())
                .collect(),
        )
    };
    let cps = |i: usize| median(rounds[i].iter().map(|(_, c)| *c).collect());
    let cpu = |i: usize| {
        median(
            rounds[i]
                .iter()
                .filter_map(|(r, _)| r["cpu_us_per_request"].as_f64())
                .collect(),
        )
    };
    // Each round's setups ran one after another: the ratio within a round is steadier than
    // the ratio of medians when the machine's speed drifts between rounds.
    let paired = |i: usize| -> Vec<f64> {
        rounds[i]
            .iter()
            .zip(&rounds[0])
            .filter_map(|((r, _), (base, _))| {
                Some(
                    ((r["cpu_us_per_request"].as_f64()? / base["cpu_us_per_request"].as_f64()?
                        - 1.0)
                        * 1000.0)
                        .round()
                        / 10.0,
                )
            })
            .collect()
    };
    let (base_rps, base_cps) = (rps(0), cps(0));
    let mut report = serde_json::Map::new();
    for (i, (name, _)) in setups.iter().enumerate() {
        report.insert(
            name.to_string(),
            json!({
                "requests_per_sec": rps(i).round(),
                "vs_off_pct": ((rps(i) / base_rps - 1.0) * 1000.0).round() / 10.0,
                "host_cpu_us_per_request": (cpu(i) * 10.0).round() / 10.0,
                "host_cpu_vs_off_pct": ((cpu(i) / cpu(0) - 1.0) * 1000.0).round() / 10.0,
                "host_cpu_vs_off_pct_paired_median": median(paired(i)),
                "host_cpu_vs_off_pct_per_round": paired(i),
                "p50_ms": median(rounds[i].iter().filter_map(|(r, _)| r["p50_ms"].as_f64()).collect()),
                "p99_ms": median(rounds[i].iter().filter_map(|(r, _)| r["p99_ms"].as_f64()).collect()),
                "errors": rounds[i].iter().filter_map(|(r, _)| r["errors"].as_u64()).sum::<u64>(),
                "stream_chunks_per_sec": cps(i).round(),
                "stream_vs_off_pct": ((cps(i) / base_cps - 1.0) * 1000.0).round() / 10.0,
                "rounds_rps": rounds[i].iter().map(|(r, _)| r["requests_per_sec"].as_f64().unwrap_or(0.0).round()).collect::<Vec<_>>(),
            }),
        );
    }
    report.insert(
        "exported_bytes".into(),
        json!(exported.load(Ordering::Relaxed)),
    );
    report.insert(
        "setup".into(),
        json!(format!("{WORKERS} workers, {SECONDS} s per round, one {CHUNKS}-chunk stream on the fresh host, then the load; {ROUNDS} alternating rounds, median; a JSON flow (EchoOp: server, run and op spans) and CountOp (plus its own span); the receiver answers at once")),
    );
    Value::Object(report)
}
