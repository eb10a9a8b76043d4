//! One step with its policy: the answer cache (lookup, replay, store), calls made again after
//! a failure before any output, and failures the flow goes on after.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::place::call_once;
use super::run::Failure;
use super::walk::Env;
use crate::chunk::{Chunk, ChunkKind};
use crate::plan::Step;

/// One step with its policy (`Step::policy`): answered from the cache, called (again, after a
/// failure before any output, up to `max_retries` calls), and a failure either fails the run
/// or, with `raise_exception=False`, is recorded while the run goes on.
pub(super) async fn run_step(
    step: &Step,
    context: &Map<String, Value>,
    env: &Env,
) -> Result<Map<String, Value>, Failure> {
    let name = step.name();
    let library = &step.op.library;
    let span = env.trace.start_with(
        crate::telemetry::Kind::Internal,
        || step.span_name,
        |attributes| {
            let (plugin, version) = library.labels;
            attributes.extend(crate::telemetry::block_of(
                "op",
                [step.op.name, plugin, version],
                || {
                    crate::telemetry::Block::new(&[
                        ("flowhost.op.name", step.op.name.into()),
                        ("flowhost.op.plugin", plugin.into()),
                        ("flowhost.op.plugin_version", version.into()),
                    ])
                },
            ));
        },
    );
    // Unsampled (or no tracing): what the op asks for goes under the parent; nothing records.
    if !span.is_recording() {
        return run_policy(step, name, context, env, (&span, &env.trace)).await;
    }
    span.role(crate::telemetry::Role::Op);
    // What the op asks for (LLM calls, sub-ops, its own spans) goes under its span (the call
    // takes it into its own copy of `env`).
    let trace = span.cx();
    let result = run_policy(step, name, context, env, (&span, &trace)).await;
    if let Err(failure) = &result {
        span.fail(&failure.to_string());
    }
    result
}

/// [`run_step`] under the call's span (`span` gets the call's placement, cache hit and
/// attempts; `trace` is where what the op asks for goes).
async fn run_policy(
    step: &Step,
    name: &'static str,
    context: &Map<String, Value>,
    env: &Env,
    (span, trace): (&crate::telemetry::Span, &crate::telemetry::Cx),
) -> Result<Map<String, Value>, Failure> {
    let context_json = serde_json::to_string(context).map_err(|err| Failure {
        op: name,
        message: format!("context is not serialisable: {err}"),
        crashed: false,
        attempts: 0,
    })?;
    let policy = &step.policy;
    let cache_key = policy.cache_ttl.map(|_| {
        crate::exec::cache::Key::of(
            step.op.library.hash,
            // The call's name tags its chunks.
            &format!("{}\u{0}{name}", step.op.name),
            &step.args_json,
            &context_json,
        )
    });
    if let Some(key) = cache_key {
        let hit = crate::exec::cache::lookup(key).await;
        span.set("flowhost.op.cache_hit", hit.is_some());
        if let Some(hit) = hit {
            metrics::counter!(crate::metrics::CACHE_HITS).increment(1);
            replay(&hit, env).await;
            return Ok(hit.writes.clone());
        }
        metrics::counter!(crate::metrics::CACHE_MISSES).increment(1);
    }
    let mut attempt = 1;
    loop {
        let (result, report) =
            call_once(step, &context_json, env, trace, cache_key.is_some()).await;
        // Set by the last call (a later set replaces an earlier one: set once, not per call).
        let last = |span: &crate::telemetry::Span| {
            span.set_all(&[
                ("flowhost.op.placement", report.placement.into()),
                ("flowhost.op.attempts", i64::from(attempt).into()),
            ]);
        };
        let mut failure = match result {
            Ok(writes) => {
                if let (Some(key), Some(ttl), Some(chunks)) =
                    (cache_key, policy.cache_ttl, report.recorded)
                {
                    let cached = crate::exec::cache::Cached {
                        chunks,
                        writes: writes.clone(),
                    };
                    crate::exec::cache::store(key, cached, ttl);
                }
                last(span);
                return Ok(writes);
            }
            Err(failure) => failure,
        };
        failure.attempts = attempt;
        if env.cancel.is_cancelled() {
            last(span);
            return Err(failure);
        }
        if attempt < policy.attempts && report.emitted == 0 {
            let wait = crate::llm::backoff(attempt - 1);
            tracing::warn!(
                op = name,
                "{failure}; calling it again in {:.2}s (call {} of {}, max_retries)",
                wait.as_secs_f64(),
                attempt + 1,
                policy.attempts
            );
            metrics::counter!(crate::metrics::OP_RETRIES).increment(1);
            if span.is_recording() {
                span.event(
                    "retry",
                    &[("exception.message", failure.to_string().into())],
                );
            }
            tokio::select! {
                _ = env.cancel.cancelled() => return Err(failure),
                _ = tokio::time::sleep(wait) => {}
            }
            attempt += 1;
            continue;
        }
        last(span);
        if !policy.tolerate_failure {
            return Err(failure);
        }
        let message = format!("{failure} (raise_exception=False: the flow goes on)");
        span.fail(&message);
        tracing::warn!(op = name, "{message}");
        metrics::counter!(crate::metrics::OP_FAILURES_TOLERATED).increment(1);
        if env.collect.as_ref().is_none_or(|c| c.forward) {
            env.tx.push_final(Chunk {
                tolerated: true,
                attempts: attempt.min(255) as u8,
                ..Chunk::error(name, message)
            });
        }
        env.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, failure.message));
        return Ok(Map::new());
    }
}

/// Sends a cached call's chunks into the run: at once while the buffer has room, the rest
/// from an op thread (a full buffer blocks, which the runtime thread must not).
async fn replay(hit: &Arc<crate::exec::cache::Cached>, env: &Env) {
    if let Some(collect) = &env.collect {
        let mut answer = collect.answer.lock().unwrap_or_else(|p| p.into_inner());
        for chunk in hit.chunks.iter().filter(|c| c.kind == ChunkKind::Answer) {
            answer.push_str(&chunk.text);
        }
        if !collect.forward {
            return;
        }
    }
    let mut sent = 0;
    for chunk in &hit.chunks {
        match env.tx.try_push(chunk.clone(), &env.cancel) {
            Ok(true) => sent += 1,
            Ok(false) => return,
            Err(_) => break,
        }
    }
    if sent < hit.chunks.len() {
        let (hit, tx, cancel) = (hit.clone(), env.tx.clone(), env.cancel.clone());
        let _ = tokio::task::spawn_blocking(move || {
            for chunk in &hit.chunks[sent..] {
                if !tx.push(chunk.clone(), &cancel) {
                    return;
                }
            }
        })
        .await;
    }
}
