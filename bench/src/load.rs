//! `flowhost-bench load URL WORKLOAD key=value...`: the load client of `scripts/scale-test`,
//! pointed at any flowhost (or at nginx in front of several). Prints one JSON object. Every
//! workload is bounded in count and time; loopback only.
//!
//! Workloads: `streams flow=F count=N n=C` (N concurrent streams of C chunks), `single flow=F
//! n=C`, `nonstream flow=F workers=W seconds=S`, `first-chunk flow=F` (one slow stream: first
//! chunk vs end), `steady seconds=S stream=F json=G workers=W` (mixed load that counts every
//! failure: for restarts and kills).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::compare::read_stream;

pub fn run(args: &[String]) -> Value {
    let (Some(url), Some(workload)) = (args.first(), args.get(1)) else {
        return json!({"error": "usage: flowhost-bench load URL WORKLOAD key=value..."});
    };
    let options: HashMap<&str, &str> = args[2..].iter().filter_map(|a| a.split_once('=')).collect();
    let text = |key: &str, default: &'static str| -> String {
        options.get(key).copied().unwrap_or(default).to_string()
    };
    let number = |key: &str, default: u64| -> u64 {
        options
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let url = url.trim_end_matches('/').to_string();
    flowhost::llm::tls_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        match workload.as_str() {
            "streams" => {
                streams(
                    &url,
                    &text("flow", "stream"),
                    number("count", 1000) as usize,
                    number("n", 100),
                )
                .await
            }
            "single" => single(&url, &text("flow", "stream"), number("n", 1_000_000)).await,
            "nonstream" => {
                nonstream(
                    &url,
                    &text("flow", "echo"),
                    number("workers", 32) as usize,
                    Duration::from_secs(number("seconds", 5)),
                )
                .await
            }
            "first-chunk" => first_chunk(&url, &text("flow", "slow")).await,
            "steady" => {
                steady(
                    &url,
                    &text("stream", "ticks"),
                    &text("json", "echo"),
                    number("workers", 8) as usize,
                    Duration::from_secs(number("seconds", 10)),
                )
                .await
            }
            other => json!({"error": format!("unknown workload {other}")}),
        }
    })
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

async fn streams(url: &str, flow: &str, count: usize, n: u64) -> Value {
    let client = client();
    let target = format!("{url}/{flow}");
    let started = Instant::now();
    let tasks: Vec<_> = (0..count)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move { read_stream(&client, &target, &json!({"n": n})).await })
        })
        .collect();
    let (mut received, mut with_done, mut failed) = (0u64, 0usize, 0usize);
    let mut first = Vec::new();
    for task in tasks {
        match task.await {
            Ok((chunks, done, ttfc, _, status)) => {
                received += chunks;
                with_done += usize::from(done);
                failed += usize::from(status != 200 || chunks != n || !done);
                first.push(ttfc.as_secs_f64() * 1e3);
            }
            Err(_) => failed += 1,
        }
    }
    first.sort_by(f64::total_cmp);
    json!({
        "streams": count, "per_stream": n,
        "ms": started.elapsed().as_secs_f64() * 1e3,
        "received": received, "expected": count as u64 * n,
        "with_done": with_done, "failed": failed,
        "first_chunk_ms_p50": first.get(first.len() / 2).copied().unwrap_or(0.0),
        "first_chunk_ms_p99": first.get(first.len() * 99 / 100).copied().unwrap_or(0.0),
    })
}

async fn single(url: &str, flow: &str, n: u64) -> Value {
    let (chunks, done, first, total, status) =
        read_stream(&client(), &format!("{url}/{flow}"), &json!({"n": n})).await;
    json!({
        "chunks": chunks, "expected": n, "done": done, "status": status,
        "first_chunk_ms": first.as_secs_f64() * 1e3,
        "chunks_per_sec": chunks as f64 / total.as_secs_f64(),
    })
}

async fn first_chunk(url: &str, flow: &str) -> Value {
    let (chunks, done, first, total, status) =
        read_stream(&client(), &format!("{url}/{flow}"), &json!({})).await;
    json!({
        "chunks": chunks, "done": done, "status": status,
        "first_chunk_ms": first.as_secs_f64() * 1e3,
        "end_ms": total.as_secs_f64() * 1e3,
    })
}

async fn nonstream(url: &str, flow: &str, workers: usize, duration: Duration) -> Value {
    let client = client();
    let target = format!("{url}/{flow}");
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, target) = (client.clone(), target.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline && latencies.len() < 500_000 {
                    let at = Instant::now();
                    match client
                        .post(&target)
                        .json(&json!({"query": "hi"}))
                        .send()
                        .await
                    {
                        Ok(r) if r.status().is_success() => {
                            let _ = r.bytes().await;
                            latencies.push(at.elapsed().as_secs_f64() * 1e3);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        if let Ok((latencies, e)) = task.await {
            all.extend(latencies);
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    json!({
        "workers": workers, "requests": all.len(), "errors": errors,
        "requests_per_sec": all.len() as f64 / seconds,
        "p50_ms": pct(0.5), "p99_ms": pct(0.99),
    })
}

/// Half the workers loop on JSON calls, half on short streams, until `duration` ends; every
/// request that fails (connection error, non-200, a stream without `[DONE]`) is counted with
/// its reason.
async fn steady(
    url: &str,
    stream: &str,
    json_flow: &str,
    workers: usize,
    duration: Duration,
) -> Value {
    let client = client();
    let deadline = Instant::now() + duration;
    let ok_json = Arc::new(AtomicU64::new(0));
    let ok_streams = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let tasks: Vec<_> = (0..workers.max(2))
        .map(|i| {
            let client = client.clone();
            let (ok_json, ok_streams, failures) =
                (ok_json.clone(), ok_streams.clone(), failures.clone());
            let target = if i % 2 == 0 {
                format!("{url}/{json_flow}")
            } else {
                format!("{url}/{stream}")
            };
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let failure = if i % 2 == 0 {
                        match client
                            .post(&target)
                            .json(&json!({"query": "steady"}))
                            .send()
                            .await
                        {
                            Ok(r) if r.status().is_success() => match r.json::<Value>().await {
                                Ok(body) if body["answer"] == "steady" => {
                                    ok_json.fetch_add(1, Ordering::Relaxed);
                                    None
                                }
                                Ok(body) => Some(format!("json: unexpected body {body}")),
                                Err(err) => Some(format!("json: body cut: {err}")),
                            },
                            Ok(r) => Some(format!("json: status {}", r.status())),
                            Err(err) => Some(format!("json: {err}")),
                        }
                    } else {
                        let (chunks, done, _, _, status) =
                            read_stream(&client, &target, &json!({})).await;
                        if status == 200 && done {
                            ok_streams.fetch_add(1, Ordering::Relaxed);
                            None
                        } else {
                            Some(format!(
                                "stream: status {status}, {chunks} chunks, done {done}"
                            ))
                        }
                    };
                    if let Some(failure) = failure {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(failure);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let failures = failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    json!({
        "json_ok": ok_json.load(Ordering::Relaxed),
        "streams_ok": ok_streams.load(Ordering::Relaxed),
        "failed": failures.len(),
        "failures": failures.iter().take(20).collect::<Vec<_>>(),
    })
}
