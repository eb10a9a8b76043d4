//! Durable async runs (issue 24): what keeping runs in a store costs against keeping them in
//! memory (runs/s and the latency of a 100-chunk run from `POST` to its last event), the bytes
//! on disk per 1,000 finished runs and whether the file stays bounded, and how long a run takes
//! to resume after `kill -9` (from the restart to the first resumed chunk). Stores: memory,
//! the embedded SQLite file, and Redis when `redis-server` is installed (`scripts/redis`).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::compare::{free_port, serve_command, start, Server};

const FLOWS: &str = "hundred:\n  flow_content: CountOp(n=100)\nlong:\n  flow_content: TickOp(n=100000, interval_ms=10)\n";

async fn host(bin_dir: &Path, flows: &Path, settings: &[String]) -> Server {
    let port = free_port();
    let mut command = serve_command(bin_dir, port, flows);
    command.args(settings);
    start("flowhost", command, port, Duration::from_secs(60)).await
}

/// One async run of `flow`, from `POST` to its events' `[DONE]`.
async fn one_run(client: &reqwest::Client, url: &str, flow: &str) -> Duration {
    let started = Instant::now();
    let accepted: Value = client
        .post(format!("{url}/{flow}"))
        .header("prefer", "respond-async")
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("POST async")
        .json()
        .await
        .expect("202 body");
    let id = accepted["run_id"].as_str().expect("run id");
    let events = client
        .get(format!("{url}/runs/{id}/events"))
        .send()
        .await
        .expect("GET events")
        .text()
        .await
        .expect("events");
    assert!(events.ends_with("data:[DONE]\n\n"), "{events}");
    started.elapsed()
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 1e2
}

async fn measure(bin_dir: &Path, flows: &Path, settings: &[String]) -> Value {
    let server = host(bin_dir, flows, settings).await;
    let client = reqwest::Client::new();
    for _ in 0..50 {
        one_run(&client, &server.url, "hundred").await;
    }
    let mut latencies: Vec<Duration> = Vec::new();
    for _ in 0..300 {
        latencies.push(one_run(&client, &server.url, "hundred").await);
    }
    latencies.sort();
    let seconds = 5.0;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (client, url) = (client.clone(), server.url.clone());
            tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    one_run(&client, &url, "hundred").await;
                    done += 1;
                }
                done
            })
        })
        .collect();
    let mut runs = 0;
    for worker in workers {
        runs += worker.await.unwrap_or(0);
    }
    json!({
        "settings": settings,
        "run_of_100_chunks_ms_p50": ms(latencies[latencies.len() / 2]),
        "run_of_100_chunks_ms_p99": ms(latencies[latencies.len() * 99 / 100]),
        "runs_per_sec_8_clients": (runs as f64 / seconds).round(),
    })
}

fn file_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// Bytes on disk per 1,000 finished runs, and the file over 5,000 runs with `runs.max_runs`
/// 1,000 (it must level off).
async fn disk(bin_dir: &Path, flows: &Path) -> Value {
    let dir = tempfile::tempdir().expect("temp folder");
    let path = dir.path().join("runs.db");
    let settings = vec![format!("store.path={}", path.display())];
    let server = host(bin_dir, flows, &settings).await;
    let client = reqwest::Client::new();
    let empty = file_bytes(dir.path());
    let mut sizes = Vec::new();
    for round in 1..=5 {
        let workers: Vec<_> = (0..8)
            .map(|_| {
                let (client, url) = (client.clone(), server.url.clone());
                tokio::spawn(async move {
                    for _ in 0..125 {
                        one_run(&client, &url, "hundred").await;
                    }
                })
            })
            .collect();
        for worker in workers {
            let _ = worker.await;
        }
        // The keeper prunes once a second.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        sizes.push(json!({"runs": round * 1000, "file_bytes": file_bytes(dir.path())}));
    }
    let first = sizes[0]["file_bytes"].as_u64().unwrap_or(0);
    json!({
        "bytes_per_1000_finished_runs_of_100_chunks": first.saturating_sub(empty),
        "file_over_5000_runs_with_max_runs_1000": sizes,
    })
}

/// From the restart of a host killed with `kill -9` to the first chunk of its resumed run.
async fn resume(bin_dir: &Path, flows: &Path) -> Value {
    let dir = tempfile::tempdir().expect("temp folder");
    let settings = vec![format!(
        "store.path={}",
        dir.path().join("runs.db").display()
    )];
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..5 {
        let port = free_port();
        let spawn = |port: u16| -> Child {
            serve_command(bin_dir, port, flows)
                .args(&settings)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn flowhost")
        };
        let mut first = spawn(port);
        let url = format!("http://127.0.0.1:{port}");
        let accepted: Value = loop {
            let sent = client
                .post(format!("{url}/long"))
                .header("prefer", "respond-async")
                .header("content-type", "application/json")
                .body("{}")
                .send()
                .await;
            if let Ok(response) = sent {
                break response.json().await.expect("202 body");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let id = accepted["run_id"].as_str().expect("run id").to_string();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _ = first.kill();
        let _ = first.wait();
        let restarted = Instant::now();
        let mut second = spawn(port);
        let resumed = loop {
            if let Ok(response) = client.get(format!("{url}/runs/{id}")).send().await {
                let run: Value = response.json().await.unwrap_or_default();
                if run["resumes"].as_u64() == Some(1) {
                    break restarted.elapsed();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        times.push(ms(resumed));
        let _ = client.delete(format!("{url}/runs/{id}")).send().await;
        let _ = second.kill();
        let _ = second.wait();
    }
    json!({"restart_to_resumed_ms": times})
}

/// A `DELETE` on host B of a run host A drives: from the request to the answer that says
/// `cancelled` (B waits for A to have stopped the op and recorded the end).
async fn cancel_across(bin_dir: &Path, flows: &Path) -> Value {
    let dir = tempfile::tempdir().expect("temp folder");
    let settings = vec![format!(
        "store.path={}",
        dir.path().join("runs.db").display()
    )];
    let a = host(bin_dir, flows, &settings).await;
    let b = host(bin_dir, flows, &settings).await;
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for _ in 0..10 {
        let accepted: Value = client
            .post(format!("{}/long", a.url))
            .header("prefer", "respond-async")
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .expect("POST async")
            .json()
            .await
            .expect("202 body");
        let id = accepted["run_id"].as_str().expect("run id").to_string();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let started = Instant::now();
        let answer: Value = client
            .delete(format!("{}/runs/{id}", b.url))
            .send()
            .await
            .expect("DELETE")
            .json()
            .await
            .expect("run json");
        assert_eq!(answer["status"], "cancelled", "{answer}");
        times.push(ms(started.elapsed()));
    }
    json!({"delete_on_b_to_cancelled_ms": times})
}

struct Redis(Child, String);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn redis() -> Option<Redis> {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(300));
    Some(Redis(child, format!("redis://127.0.0.1:{port}/0")))
}

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let flows = tempfile::tempdir().expect("temp folder");
    std::fs::write(flows.path().join("f.yaml"), FLOWS).expect("write flows");
    let dir = tempfile::tempdir().expect("temp folder");
    let mut rows = serde_json::Map::new();
    eprintln!("   async runs kept in memory");
    rows.insert(
        "memory".into(),
        measure(bin_dir, flows.path(), &["store.path=:memory:".into()]).await,
    );
    eprintln!("   async runs kept in SQLite");
    let sqlite = vec![format!(
        "store.path={}",
        dir.path().join("runs.db").display()
    )];
    rows.insert(
        "sqlite".into(),
        measure(bin_dir, flows.path(), &sqlite).await,
    );
    if let Some(redis) = redis() {
        eprintln!("   async runs kept in Redis");
        let settings = vec![format!("store.url={}", redis.1)];
        rows.insert(
            "redis".into(),
            measure(bin_dir, flows.path(), &settings).await,
        );
    }
    eprintln!("   the SQLite file over 5,000 runs");
    rows.insert("sqlite_disk".into(), disk(bin_dir, flows.path()).await);
    eprintln!("   a cancel on another host");
    rows.insert(
        "sqlite_cancel_across_hosts".into(),
        cancel_across(bin_dir, flows.path()).await,
    );
    eprintln!("   resume after kill -9");
    rows.insert("sqlite_resume".into(), resume(bin_dir, flows.path()).await);
    Value::Object(rows)
}
