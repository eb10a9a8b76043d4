//! The inline stall (issue 21): `BurnOp` is promoted to run inline by fast calls (`ms` = 0),
//! then N calls at once each burn 3 s of CPU on a runtime worker while one client calls
//! `EchoOp` every 5 ms and another asks `/ready` every 5 ms. Reported: the worst and p99
//! latencies of both, for N = 2 × (runtime workers) and N = 8. Without the inline bound, the
//! echo calls waited out the burn (3,007 ms).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::compare::{free_port, serve_command, start};

const FLOWS: &str = "burn:\n  flow_content: BurnOp()\necho:\n  flow_content: EchoOp()\n";

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let flows = tempfile::tempdir().expect("temp folder");
    std::fs::write(flows.path().join("f.yaml"), FLOWS).expect("write flows");
    let port = free_port();
    let command = serve_command(bin_dir, port, flows.path());
    let server = start("flowhost", command, port, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.url);
    // Promotion: fast calls until /ops says inline.
    let mut promoted_after = 0;
    for calls in 0..5000 {
        let ops: Value = client
            .get(url("/ops"))
            .send()
            .await
            .expect("GET /ops")
            .json()
            .await
            .expect("ops json");
        let inline = ops["ops"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|op| op["name"] == "BurnOp" && op["runs"] == "inline");
        if inline {
            promoted_after = calls;
            break;
        }
        let _ = client
            .post(url("/burn"))
            .json(&json!({"ms": 0}))
            .send()
            .await;
    }
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut rows = serde_json::Map::new();
    rows.insert("promoted_after_calls".into(), json!(promoted_after));
    rows.insert("runtime_workers".into(), json!(workers));
    for slow in [2 * workers, 8] {
        eprintln!("   {slow} inline calls burning 3 s while echo and /ready are called every 5 ms");
        let burns: Vec<_> = (0..slow)
            .map(|_| {
                let (client, url) = (client.clone(), url("/burn"));
                tokio::spawn(async move {
                    client
                        .post(url)
                        .json(&json!({"ms": 3000}))
                        .send()
                        .await
                        .is_ok()
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (echo, ready) = tokio::join!(
            probe(&client, url("/echo"), true),
            probe(&client, url("/ready"), false)
        );
        for burn in burns {
            let _ = burn.await;
        }
        rows.insert(
            format!("slow_{slow}"),
            json!({"echo": echo, "ready": ready}),
        );
    }
    Value::Object(rows)
}

/// Calls `url` every 5 ms for 2.5 s; the worst and p99 latency in ms.
async fn probe(client: &reqwest::Client, url: String, post: bool) -> Value {
    let started = Instant::now();
    let mut times = Vec::new();
    while started.elapsed() < Duration::from_millis(2500) {
        let asked = Instant::now();
        let request = if post {
            client.post(&url).json(&json!({"query": "hi"}))
        } else {
            client.get(&url)
        };
        let ok = request.send().await.is_ok_and(|r| r.status().is_success());
        times.push((asked.elapsed().as_secs_f64() * 1e3, ok));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let failed = times.iter().filter(|(_, ok)| !ok).count();
    let mut ms: Vec<f64> = times.iter().map(|(t, _)| *t).collect();
    ms.sort_by(f64::total_cmp);
    json!({
        "calls": ms.len(), "failed": failed,
        "worst_ms": ms.last().copied().unwrap_or_default(),
        "p99_ms": ms.get(ms.len() * 99 / 100).copied().unwrap_or_default(),
        "p50_ms": ms.get(ms.len() / 2).copied().unwrap_or_default(),
    })
}
