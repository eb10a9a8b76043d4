//! FlowLLM's per-op keywords, handled by the host around any op: `max_retries`,
//! `raise_exception`, `enable_cache` / `cache_expire_hours` and `name`, with the real op-basic
//! plugin and a fixture op that fails on demand.

use std::time::{Duration, Instant};

use flowhost::chunk::ChunkKind;
use serde_json::json;

use crate::util::*;

const FLOWS: &str = r#"
retried:
  flow_content: FlakyOp(key="retried", fails=2, max_retries=3)
no_retry_after_output:
  flow_content: FlakyOp(key="emitted", fails=1, emit_first=True, max_retries=3)
retries_run_out:
  flow_content: FlakyOp(key="out", fails=5, max_retries=2)
goes_on:
  flow_content: FailOp(message="optional step broke", raise_exception=False, name="optional_step") >> EchoOp()
cached:
  flow_content: FlakyOp(key="cached", enable_cache=True)
cache_expires:
  flow_content: FlakyOp(key="expires", enable_cache=True, cache_expire_hours=0.00001)
renamed:
  flow_content: CountOp(n=2, name="counter", max_retries=2)
"#;

fn setup() -> (
    tempfile::TempDir,
    tempfile::TempDir,
    std::sync::Arc<flowhost::catalog::Catalog>,
) {
    let flows = folder(&[("f.yaml", FLOWS)]);
    let plugins = plugin_folder(&[(&fixture("op_fixture"), &so("op_fixture"))]);
    let catalog = catalog(flows.path(), &[bin_dir(), plugins.path().to_path_buf()]);
    let errors: Vec<String> = catalog.snapshot().errors().map(|d| d.to_string()).collect();
    assert!(errors.is_empty(), "{errors:?}");
    (flows, plugins, catalog)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_retries_calls_again_only_while_nothing_was_emitted() {
    let (_flows, _plugins, catalog) = setup();
    let started = Instant::now();
    let (chunks, outcome) = run(&catalog, "retried", json!({})).await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(texts(&chunks), ["call 3\n"]);
    assert_eq!(outcome.context["calls"], 3);
    // Two waits of the LLM service's backoff (0.5 s and 1 s, each ±25%).
    assert!(
        started.elapsed() >= Duration::from_millis(1100),
        "{:?}",
        started.elapsed()
    );

    let (chunks, outcome) = run(&catalog, "no_retry_after_output", json!({})).await;
    assert!(!outcome.success());
    assert_eq!(texts(&chunks)[0], "call 1\n");
    assert!(outcome
        .error
        .unwrap()
        .contains("call 1 of key emitted fails"));

    let (chunks, outcome) = run(&catalog, "retries_run_out", json!({})).await;
    assert!(
        outcome
            .error
            .as_deref()
            .unwrap_or("")
            .contains("call 2 of key out fails (called 2 times, max_retries)"),
        "{outcome:?}"
    );
    // The error chunk says how many calls were made.
    let error = chunks.last().expect("the error chunk");
    let mut wire = String::new();
    error.write_json("f", &mut wire);
    let wire: serde_json::Value = serde_json::from_str(&wire).unwrap();
    assert_eq!(wire["chunk_type"], "error");
    assert_eq!(wire["metadata"]["attempts"], 2, "{wire}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raise_exception_false_records_the_failure_and_the_flow_goes_on() {
    let (_flows, _plugins, catalog) = setup();
    let (chunks, outcome) = run(&catalog, "goes_on", json!({"query": "still answered"})).await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(outcome.answer, "still answered");
    let error = chunks
        .iter()
        .find(|c| c.kind == ChunkKind::Error)
        .expect("the failure as a chunk");
    assert!(error.tolerated);
    assert_eq!(error.op, "optional_step");
    assert!(error.text.contains("optional step broke"), "{}", error.text);
    let mut wire = String::new();
    error.write_json("f", &mut wire);
    let wire: serde_json::Value = serde_json::from_str(&wire).unwrap();
    assert_eq!(wire["metadata"]["raise_exception"], false);
    assert_eq!(
        outcome.failed_ops,
        [json!({"op": "optional_step", "error": "optional step broke"})]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enable_cache_reuses_chunks_and_writes_for_the_same_input() {
    let (_flows, _plugins, catalog) = setup();
    let (chunks, first) = run(&catalog, "cached", json!({"query": "a"})).await;
    assert_eq!(texts(&chunks), ["call 1\n"]);
    assert_eq!(first.context["calls"], 1);
    let (chunks, again) = run(&catalog, "cached", json!({"query": "a"})).await;
    assert_eq!(texts(&chunks), ["call 1\n"], "a hit replays the chunks");
    assert_eq!(again.context["calls"], 1, "a hit gives the writes back");
    let (_, other) = run(&catalog, "cached", json!({"query": "b"})).await;
    assert_eq!(other.context["calls"], 2, "another input is another call");

    let (_, first) = run(&catalog, "cache_expires", json!({})).await;
    assert_eq!(first.context["calls"], 1);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, after) = run(&catalog, "cache_expires", json!({})).await;
    assert_eq!(after.context["calls"], 2, "expired after 0.036 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_keywords_are_the_hosts_and_checked_at_compile_time() {
    let (_flows, _plugins, catalog) = setup();
    // CountOp refuses arguments it does not know: these never reach it.
    let (chunks, outcome) = run(&catalog, "renamed", json!({})).await;
    assert!(outcome.success(), "{outcome:?}");
    assert_eq!(chunks.len(), 2);
    assert!(chunks.iter().all(|c| c.op == "counter"));

    let bad = folder(&[(
        "bad.yaml",
        "a:\n  flow_content: EchoOp(max_retries=0)\nb:\n  flow_content: EchoOp(raise_exception=\"no\")\nc:\n  flow_content: EchoOp(enable_cache=True, cache_expire_hours=-1)\n",
    )]);
    let catalog = catalog_with_basic(bad.path());
    let errors: Vec<String> = catalog.snapshot().errors().map(|d| d.to_string()).collect();
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors[0].contains("bad.yaml:2:") && errors[0].contains("max_retries must be"),
        "{}",
        errors[0]
    );
    assert!(
        errors[1].contains("raise_exception must be True or False"),
        "{}",
        errors[1]
    );
    assert!(
        errors[2].contains("cache_expire_hours must be"),
        "{}",
        errors[2]
    );
    assert!(errors[0].contains('^'), "a caret: {}", errors[0]);
}

/// FlowLLM's shipped `skill_agent` line, with fixture ops of those names: the tools get
/// FlowLLM's short names and the agent calls them all at once, their chunks forwarded, their
/// results back in the order asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flowllm_s_skill_agent_line_compiles_and_runs() {
    let flows = folder(&[(
        "f.yaml",
        "skill_agent:\n  flow_content: SkillAgentOp() << [LoadSkillOp(), ReadReferenceFileOp(), RunShellCommandOp()]\n  stream: true\n",
    )]);
    let plugins = plugin_folder(&[(&fixture("op_fixture"), &so("op_fixture"))]);
    let catalog = catalog(flows.path(), &[plugins.path().to_path_buf()]);
    let (chunks, outcome) = run(&catalog, "skill_agent", json!({})).await;
    assert!(outcome.success(), "{outcome:?}");
    // The three run side by side: their forwarded chunks come in any order.
    let mut forwarded = texts(&chunks);
    forwarded.sort();
    assert_eq!(
        forwarded,
        [
            "LoadSkillOp: load_skill",
            "ReadReferenceFileOp: read_reference_file",
            "RunShellCommandOp: run_shell_command"
        ]
    );
    assert_eq!(
        outcome.answer,
        "LoadSkillOp: load_skill | ReadReferenceFileOp: read_reference_file | RunShellCommandOp: run_shell_command"
    );
}

/// `cache.dir`: a cached call is a file another process reuses (here: a second `flowhost run`
/// answers from a file edited in between, so the answer can only come from the file).
#[test]
fn cache_dir_keeps_answers_across_processes() {
    let flows = folder(&[(
        "f.yaml",
        "cached:\n  flow_content: EchoOp(enable_cache=True)\n",
    )]);
    let cache = tempfile::tempdir().expect("temp dir");
    let set = format!("cache.dir={}", cache.path().display());
    let flows_dir = flows.path().to_str().expect("utf-8 path");
    let args = [
        "run", "cached", "--flows", flows_dir, "--set", &set, "query=hi",
    ];
    let (code, out, err) = flowhost(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""answer":"hi""#), "{out}");
    let files: Vec<_> = std::fs::read_dir(cache.path())
        .expect("the cache folder")
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let text = std::fs::read_to_string(&files[0]).expect("the cache file");
    std::fs::write(&files[0], text.replace("\"hi\"", "\"from the file\"")).expect("edit");
    let (code, out, err) = flowhost(&args);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(r#""answer":"from the file""#), "{out}");
    assert!(out.contains(r#""chunk":"from the file""#), "{out}");
}
