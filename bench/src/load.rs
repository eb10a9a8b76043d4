//! `flowhost-bench load URL WORKLOAD key=value...`: the load client of `scripts/scale-test`,
//! pointed at any flowhost (or at nginx in front of several). Prints one JSON object. Every
//! workload is bounded in count and time; loopback only.
//!
//! Workloads: `streams flow=F count=N n=C` (N concurrent streams of C chunks), `single flow=F
//! n=C`, `nonstream flow=F workers=W seconds=S`, `first-chunk flow=F` (one slow stream: first
//! chunk vs end), `steady seconds=S stream=F json=G workers=W` (mixed load that counts every
//! failure: for restarts and kills), `starvation streams=N flow=F json=G seconds=S pid=P`
//! (N slow streams held open while a JSON flow is timed; every tick counted; the server's
//! threads and RSS read from /proc when its pid is given; `query=Q` sends it, for chat flows), `crash flow=F json=G times=N`
//! (an isolated op that crashes, then the next call: how long each takes), `disconnect
//! flow=F times=N` (read one chunk of an endless stream, drop it, poll `/metrics` until
//! `flowhost_ops_running` is 0: client disconnect to op stopped).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sse::read_stream;

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
    let query = options.get("query").map(|q| q.to_string());
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
            "starvation" => {
                starvation(
                    &url,
                    &text("flow", "slow"),
                    &text("json", "echo"),
                    number("streams", 5000) as usize,
                    Duration::from_secs(number("seconds", 20)),
                    number("pid", 0) as u32,
                    query.as_deref(),
                )
                .await
            }
            "disconnect" => disconnect(&url, &text("flow", "ticks"), number("times", 20)).await,
            "crash" => {
                crash(
                    &url,
                    &text("flow", "segv"),
                    &text("json", "echo"),
                    number("times", 20),
                )
                .await
            }
            other => json!({"error": format!("unknown workload {other}")}),
        }
    })
}

/// The `p` quantile (0..=1) of sorted values; 0 for none.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
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

pub async fn nonstream(url: &str, flow: &str, workers: usize, duration: Duration) -> Value {
    nonstream_as(url, flow, workers, duration, None).await
}

/// [`nonstream`] with `Authorization: Bearer <bearer>` on every request.
pub async fn nonstream_as(
    url: &str,
    flow: &str,
    workers: usize,
    duration: Duration,
    bearer: Option<&str>,
) -> Value {
    let client = client();
    let bearer = bearer.map(|b| format!("Bearer {b}"));
    let target = format!("{url}/{flow}");
    let deadline = Instant::now() + duration;
    let started = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (client, target, bearer) = (client.clone(), target.clone(), bearer.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                while Instant::now() < deadline && latencies.len() < 500_000 {
                    let at = Instant::now();
                    let mut request = client.post(&target).json(&json!({"query": "hi"}));
                    if let Some(bearer) = &bearer {
                        request = request.header("authorization", bearer);
                    }
                    match request.send().await {
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
    let pct = |p: f64| percentile(&all, p);
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

fn proc_status(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `streams` slow streams (one tick a second) held for `hold`, while one client times a JSON
/// flow call every 50 ms: does waiting work starve unrelated flows?
async fn starvation(
    url: &str,
    flow: &str,
    json_flow: &str,
    streams: usize,
    hold: Duration,
    pid: u32,
    query: Option<&str>,
) -> Value {
    let body = match query {
        Some(query) => json!({"query": query}),
        None => json!({}),
    };
    use futures_util::StreamExt;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(hold + Duration::from_secs(60))
        .build()
        .expect("client");
    let rss_before = proc_status(pid, "VmRSS:");
    let ticks = Arc::new(AtomicU64::new(0));
    let open = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..streams)
        .map(|_| {
            let (client, target, body) = (client.clone(), format!("{url}/{flow}"), body.clone());
            let (ticks, open, stop) = (ticks.clone(), open.clone(), stop.clone());
            tokio::spawn(async move {
                let Ok(response) = client.post(&target).json(&body).send().await else {
                    return 0u64;
                };
                let mut stream = response.bytes_stream();
                let mut mine = 0u64;
                let mut counted = false;
                while !stop.load(Ordering::Relaxed) {
                    match tokio::time::timeout(Duration::from_millis(300), stream.next()).await {
                        Ok(Some(Ok(bytes))) => {
                            if !counted {
                                counted = true;
                                open.fetch_add(1, Ordering::Relaxed);
                            }
                            let n = memchr::memmem::find_iter(&bytes, b"\n\n").count() as u64;
                            mine += n;
                            ticks.fetch_add(n, Ordering::Relaxed);
                        }
                        Ok(_) => break,
                        Err(_) => {}
                    }
                }
                mine
            })
        })
        .collect();
    // Let the streams open, then time the JSON calls while they are all held.
    let opening = Instant::now();
    while (open.load(Ordering::Relaxed) as usize) < streams
        && opening.elapsed() < Duration::from_secs(60)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let opened_in = opening.elapsed();
    let held_from = Instant::now();
    let ticks_at_start = ticks.load(Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut peak_threads = 0;
    let mut peak_rss = rss_before;
    let target = format!("{url}/{json_flow}");
    while held_from.elapsed() < hold {
        let at = Instant::now();
        match client
            .post(&target)
            .json(&json!({"query": "probe"}))
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                let _ = r.bytes().await;
                latencies.push(at.elapsed().as_secs_f64() * 1e3);
            }
            _ => errors += 1,
        }
        peak_threads = peak_threads.max(proc_status(pid, "Threads:"));
        peak_rss = peak_rss.max(proc_status(pid, "VmRSS:"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = held_from.elapsed().as_secs_f64();
    let ticks_held = ticks.load(Ordering::Relaxed) - ticks_at_start;
    stop.store(true, Ordering::Relaxed);
    let mut per_stream = Vec::new();
    for task in tasks {
        per_stream.push(task.await.unwrap_or(0));
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&latencies, p);
    let established = open.load(Ordering::Relaxed);
    json!({
        "streams": streams, "established": established,
        "opened_in_s": opened_in.as_secs_f64(), "held_s": held,
        "json_calls": latencies.len(), "json_errors": errors,
        "json_p50_ms": pct(0.5), "json_p99_ms": pct(0.99), "json_max_ms": pct(1.0),
        "ticks_while_held": ticks_held,
        "ticks_expected_while_held": (established as f64 * held).round(),
        "fewest_ticks_per_stream": per_stream.iter().min().copied().unwrap_or(0),
        "server_threads_peak": peak_threads,
        "server_rss_before_kib": rss_before, "server_rss_peak_kib": peak_rss,
        "rss_per_stream_kib": peak_rss.saturating_sub(rss_before) as f64 / streams.max(1) as f64,
    })
}

/// Isolated ops: a cold call (a worker starts), then `times` rounds of a call whose worker
/// crashes (a new worker starts, the op crashes, the host reports it) followed by an
/// unrelated isolated call (served by a waiting worker).
async fn crash(url: &str, flow: &str, json_flow: &str, times: u64) -> Value {
    let client = client();
    let call = |target: String| {
        let client = client.clone();
        async move {
            let at = Instant::now();
            let status = match client
                .post(&target)
                .json(&json!({"query": "x"}))
                .send()
                .await
            {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let _ = r.bytes().await;
                    status
                }
                Err(_) => 0,
            };
            (status, at.elapsed().as_secs_f64() * 1e3)
        }
    };
    let (cold_status, cold_ms) = call(format!("{url}/{json_flow}")).await;
    let (_, warm_ms) = call(format!("{url}/{json_flow}")).await;
    let mut crashed = Vec::new();
    let mut next = Vec::new();
    let mut wrong = 0;
    for _ in 0..times {
        let (status, ms) = call(format!("{url}/{flow}")).await;
        wrong += u64::from(status != 500);
        crashed.push(ms);
        let (status, ms) = call(format!("{url}/{json_flow}")).await;
        wrong += u64::from(status != 200);
        next.push(ms);
    }
    crashed.sort_by(f64::total_cmp);
    next.sort_by(f64::total_cmp);
    json!({
        "cold_call_ms": cold_ms, "cold_status": cold_status, "warm_call_ms": warm_ms,
        "crash_reported_ms_p50": crashed.get(crashed.len() / 2),
        "next_call_ms_p50": next.get(next.len() / 2),
        "next_call_ms_max": next.last(),
        "unexpected_statuses": wrong,
    })
}

async fn ops_running(client: &reqwest::Client, url: &str) -> f64 {
    let Ok(response) = client.get(format!("{url}/metrics")).send().await else {
        return -1.0;
    };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with("flowhost_ops_running "))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn disconnect(url: &str, flow: &str, times: u64) -> Value {
    use futures_util::StreamExt;
    let client = client();
    let mut stopped = Vec::new();
    for _ in 0..times {
        let Ok(response) = client
            .post(format!("{url}/{flow}"))
            .json(&json!({}))
            .send()
            .await
        else {
            continue;
        };
        let mut body = response.bytes_stream();
        let _ = body.next().await;
        drop(body);
        let at = Instant::now();
        while ops_running(&client, url).await > 0.0 && at.elapsed() < Duration::from_secs(5) {}
        stopped.push(at.elapsed().as_secs_f64() * 1e3);
    }
    stopped.sort_by(f64::total_cmp);
    json!({
        "times": stopped.len(),
        "op_stopped_ms_p50": stopped.get(stopped.len() / 2),
        "op_stopped_ms_max": stopped.last(),
    })
}
