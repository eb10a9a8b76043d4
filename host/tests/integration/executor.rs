//! Executor semantics with the real op-basic plugin: serial order, parallel timing and merge,
//! failure propagation, limits, cancellation and backpressure.

use std::time::Duration;

use flowhost::chunk::ChunkKind;
use flowhost::exec;
use serde_json::json;

use crate::util::*;

const FLOWS: &str = r#"
serial:
  flow_content: GenSystemPromptOp(template="About {topic}.") >> EchoOp()
parallel_ticks:
  flow_content: TickOp(n=20, interval_ms=50, text="a") | TickOp(n=20, interval_ms=50, text="b")
  stream: true
merge:
  flow_content: (TickOp(n=2, interval_ms=30) >> GenSystemPromptOp(template="A")) | GenSystemPromptOp(template="B")
failing_branch:
  flow_content: TickOp(n=100000, interval_ms=25, text="sibling") | (TickOp(n=2, interval_ms=25, text="doomed") >> FailOp(message="bad input"))
  stream: true
first_chunk_limit:
  flow_content: TickOp(n=1, delay_ms=600000)
  limits: {first_chunk_timeout: 0.2}
idle_limit:
  flow_content: TickOp(n=3, interval_ms=600000)
  limits: {idle_timeout: 0.2}
total_limit:
  flow_content: TickOp(n=100000, interval_ms=20)
  limits: {total_timeout: 2}
output_limit:
  flow_content: CountOp(n=100000, text="0123456789")
  limits: {max_output_bytes: 1000}
endless:
  flow_content: TickOp(n=100000, interval_ms=10)
  stream: true
flood:
  flow_content: CountOp(n=10000000)
  stream: true
echo:
  flow_content: EchoOp()
one_tick:
  flow_content: TickOp(n=1)
three_ticks:
  flow_content: TickOp(n=3, interval_ms=300)
one_count:
  flow_content: CountOp(n=1)
"#;

fn setup() -> (
    tempfile::TempDir,
    std::sync::Arc<flowhost::catalog::Catalog>,
) {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let catalog = catalog_with_basic(flows.path());
    let errors: Vec<String> = catalog.snapshot().errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    (flows, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serial_steps_share_the_context_in_order() {
    let (_flows, catalog) = setup();
    let (chunks, outcome) = run(&catalog, "serial", json!({"query": "q?", "topic": "owls"})).await;
    assert_eq!(texts(&chunks), ["q?"]);
    assert_eq!(chunks[0].op, "EchoOp");
    assert_eq!(outcome.context["system_prompt"], "About owls.");
    assert_eq!(
        outcome.context["messages"],
        json!([{"role": "user", "content": "q?"}])
    );
    assert_eq!(outcome.answer, "q?");
    assert!(outcome.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_branches_overlap_and_interleave() {
    let (_flows, catalog) = setup();
    let (chunks, outcome) = run(&catalog, "parallel_ticks", json!({})).await;
    assert!(outcome.success());
    assert_eq!(chunks.len(), 40);
    // One branch after the other would give twenty `a` then twenty `b` (or the reverse); run
    // together, each branch's first tick comes before the other's last (how fast the
    // branches run is a benchmark's business).
    let letters: Vec<&str> = chunks.iter().map(|c| &c.text[..1]).collect();
    let first = |l: &str| letters.iter().position(|x| *x == l).unwrap();
    let last = |l: &str| letters.iter().rposition(|x| *x == l).unwrap();
    assert!(
        first("a") < last("b") && first("b") < last("a"),
        "not interleaved: {letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_writes_merge_in_declaration_order() {
    let (_flows, catalog) = setup();
    for _ in 0..10 {
        // Branch B finishes first; declaration order still puts A's write before B's.
        let (_, outcome) = run(&catalog, "merge", json!({})).await;
        assert_eq!(outcome.context["system_prompt"], "B");
        assert_eq!(outcome.context["ticks"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_branch_cancels_its_sibling() {
    let (_flows, catalog) = setup();
    // The sibling ticks for ~40 minutes unless the failure cancels it.
    let (chunks, outcome) = tokio::time::timeout(
        Duration::from_secs(60),
        run(&catalog, "failing_branch", json!({})),
    )
    .await
    .expect("the sibling was not cancelled");
    let last = chunks.last().unwrap();
    assert_eq!(last.kind, ChunkKind::Error);
    assert_eq!(last.text, "FailOp failed: bad input");
    assert_eq!(outcome.error.as_deref(), Some("FailOp failed: bad input"));
    let sibling = chunks
        .iter()
        .filter(|c| c.text.starts_with("sibling"))
        .count();
    assert!(sibling < 1000, "the sibling kept going: {sibling} ticks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_end_runs_with_an_error_chunk() {
    let (_flows, catalog) = setup();
    let cases = [
        (
            "first_chunk_limit",
            "no first chunk within limits.first_chunk_timeout (0.2s)",
            0,
        ),
        (
            "idle_limit",
            "no chunk within limits.idle_timeout (0.2s)",
            1,
        ),
        (
            "total_limit",
            "not finished within limits.total_timeout (2s)",
            1,
        ),
        (
            "output_limit",
            "exceeded its output limit of 1000 bytes",
            100,
        ),
    ];
    for (flow, message, min_before) in cases {
        // Without the limit each of these runs for at least ten minutes.
        let (chunks, outcome) =
            tokio::time::timeout(Duration::from_secs(60), run(&catalog, flow, json!({})))
                .await
                .unwrap_or_else(|_| panic!("{flow}: the limit did not end it"));
        let last = chunks.last().unwrap();
        assert_eq!(last.kind, ChunkKind::Error, "{flow}");
        assert!(last.text.contains(message), "{flow}: {}", last.text);
        assert!(chunks.len() > min_before, "{flow}: {} chunks", chunks.len());
        assert!(outcome.error.unwrap().contains(message));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_op_promptly() {
    let (_flows, catalog) = setup();
    for _ in 0..5 {
        let mut run = start(&catalog, "endless", json!({}));
        let mut batch = Vec::new();
        assert!(run.next_batch(&mut batch).await);
        let cancel = run.cancel_token();
        cancel.cancel();
        // `finish` waits for the op thread to return; uncancelled, it would tick for 1,000 s.
        // (How soon it stops is `flowhost-bench load URL disconnect`'s figure.)
        let outcome = tokio::time::timeout(Duration::from_secs(30), run.finish())
            .await
            .expect("the op did not stop after cancel");
        assert!(outcome.context["ticks"].as_u64().unwrap() < 1000);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_holds_the_producer() {
    let (_flows, catalog) = setup();
    let mut options = exec::Options::default();
    options.buffer = 256;
    options.collect_answer = false;
    let snapshot = catalog.snapshot();
    let flow = snapshot.get("flood").unwrap().flow.clone().unwrap();
    let mut run = exec::start(flow, input(json!({})), &options);
    let mut batch = Vec::new();
    let mut received = 0;
    for _ in 0..3 {
        assert!(run.next_batch(&mut batch).await);
        assert!(
            batch.len() <= 256,
            "batch of {} exceeds the bound",
            batch.len()
        );
        received += batch.len();
        batch.clear();
        // A slow reader: the producer must wait instead of buffering millions of chunks.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(run.next_batch(&mut batch).await);
    assert!(
        batch.len() <= 256,
        "after a pause the buffer held {}",
        batch.len()
    );
    received += batch.len();
    assert!(received < 2000, "received {received}");
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_run_has_its_own_flow_id() {
    let (_flows, catalog) = setup();
    let a = start(&catalog, "serial", json!({"query": "x"}));
    let b = start(&catalog, "serial", json!({"query": "x"}));
    assert_ne!(a.flow_id, b.flow_id);
}

/// A caller that collects the answer (non-stream HTTP, MCP, `flowhost run`) holds it whole:
/// it is capped at 16 MiB by default, with an error naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collected_answer_is_capped_by_default() {
    let (_flows, catalog) = setup();
    let huge = "x".repeat(flowhost::exec::DEFAULT_MAX_ANSWER_BYTES as usize + 1);
    let (_, outcome) = run(&catalog, "echo", json!({"query": huge})).await;
    let error = outcome.error.expect("over the cap");
    assert!(error.contains("limits.max_output_bytes"), "{error}");
    let (_, fine) = run(&catalog, "echo", json!({"query": "small"})).await;
    assert!(fine.success());
}

fn placement(catalog: &flowhost::catalog::Catalog, op: &str) -> &'static str {
    catalog.snapshot().registry.get(op).expect(op).speed.label()
}

/// Runs `flow` until `op` has served its probation and runs inline. Probation is
/// `PROBATION_CALLS` fast calls *in a row*: on a loaded 2-core machine (tests run two at once,
/// in a debug build) one call can use over 200 µs of CPU and start the count again, so the
/// bound is generous; an op that is never promoted still fails.
async fn until_inline(catalog: &flowhost::catalog::Catalog, flow: &str, op: &str) {
    let mut calls = 0;
    while placement(catalog, op) != "inline" && calls < 20 * flowhost::ops::PROBATION_CALLS {
        let (chunks, outcome) = run(catalog, flow, json!({})).await;
        assert!(outcome.success(), "{chunks:?}");
        calls += 1;
    }
    assert!(
        calls >= flowhost::ops::PROBATION_CALLS,
        "{op} went inline after {calls} calls"
    );
    assert_eq!(placement(catalog, op), "inline", "after {calls} calls");
}

/// A fast op goes inline after its probation; when an inline call then waits (sleep, a full
/// buffer), the wait leaves the runtime thread (`block_in_place`), the run completes, and the
/// op goes back to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_op_runs_inline_and_a_waiting_inline_call_still_completes() {
    let (_flows, catalog) = setup();
    until_inline(&catalog, "one_tick", "TickOp").await;
    // Another task keeps ticking on the runtime while the inline op sleeps (600 ms in all).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let beat = tokio::spawn({
        let done = done.clone();
        async move {
            let mut beats = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(5)).await;
                beats += 1;
            }
            beats
        }
    });
    let (chunks, outcome) = run(&catalog, "three_ticks", json!({})).await;
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(outcome.success(), "{chunks:?}");
    assert_eq!(texts(&chunks), ["tick 0\n", "tick 1\n", "tick 2\n"]);
    assert!(beat.await.unwrap() >= 3, "the runtime stalled");
    assert_eq!(placement(&catalog, "TickOp"), "pooled");

    // An inline op whose reader is slow: the full buffer is waited for off the runtime thread.
    until_inline(&catalog, "one_count", "CountOp").await;
    let mut flood = start(&catalog, "flood", json!({}));
    let mut batch = Vec::new();
    let mut received = 0;
    while flood.next_batch(&mut batch).await {
        received += batch.len();
        batch.clear();
        if received > 100_000 {
            break;
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    drop(flood);
    assert!(received > 100_000);
    // The op sees the drop at its next emit, then its call is recorded.
    let demoted = wait_async(Duration::from_secs(5), || async {
        placement(&catalog, "CountOp") == "pooled"
    })
    .await;
    assert!(demoted.is_some(), "{}", placement(&catalog, "CountOp"));
}

/// A current-thread runtime cannot hand its work to another thread: its op calls stay on the
/// pool whatever the op's record.
#[tokio::test]
async fn a_current_thread_runtime_keeps_ops_on_the_pool() {
    let (_flows, catalog) = setup();
    for _ in 0..flowhost::ops::PROBATION_CALLS + 5 {
        run(&catalog, "one_tick", json!({})).await;
    }
    let (chunks, outcome) = run(&catalog, "three_ticks", json!({})).await;
    assert!(outcome.success(), "{chunks:?}");
    assert_eq!(texts(&chunks).len(), 3);
}

/// `FlowOp(flow=...)` runs another flow inside this one (its chunks in this stream, its
/// writes in this context); a cycle or a missing flow is refused when flows load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_op_runs_another_flow_and_cycles_are_refused() {
    let flows = folder(&[(
        "f.yaml",
        r#"
inner:
  flow_content: GenSystemPromptOp(template="About {topic}.") >> EchoOp()
outer:
  flow_content: TickOp(n=1, text="before") >> FlowOp(flow="inner")
loop_a:
  flow_content: EchoOp() >> FlowOp(flow="loop_b")
loop_b:
  flow_content: FlowOp(flow="loop_a")
dangling:
  flow_content: FlowOp(flow="innr")
"#,
    )]);
    let catalog = catalog_with_basic(flows.path());
    let snapshot = catalog.snapshot();
    let outer = snapshot
        .get("outer")
        .unwrap()
        .flow
        .clone()
        .expect("outer is live");
    let mut options = exec::Options::default();
    options.flows = Some(catalog.lookup());
    let (chunks, outcome) = exec::start(
        outer,
        input(json!({"query": "q", "topic": "owls"})),
        &options,
    )
    .collect()
    .await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(texts(&chunks), ["before 0\n", "q"]);
    assert_eq!(outcome.answer, "q");
    assert_eq!(outcome.context["system_prompt"], "About owls.");

    for name in ["loop_a", "loop_b"] {
        let entry = snapshot.get(name).unwrap();
        assert_eq!(entry.status(), "broken", "{name}");
        let error = entry.error.as_ref().unwrap().to_string();
        assert!(error.contains("FlowOp makes a cycle"), "{error}");
    }
    let error = snapshot
        .get("loop_a")
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .to_string();
    assert!(error.contains("loop_a → loop_b → loop_a"), "{error}");
    assert!(error.contains("f.yaml:7:29:"), "{error}");
    let error = snapshot
        .get("dangling")
        .unwrap()
        .error
        .as_ref()
        .unwrap()
        .to_string();
    assert!(
        error.contains("no flow `innr` is defined (did you mean `inner`?)"),
        "{error}"
    );
}
