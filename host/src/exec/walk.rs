//! The walk over the plan: what every op of a run shares ([`Env`]), and a node run on a
//! context: serial steps share one context, parallel branches run on copies and merge in
//! declaration order (the first failure cancels the rest), `FlowOp` runs a live flow.

use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::batch;
use super::client::Client;
use super::host::LogSink;
use super::journal::{self, Journal};
use super::place::Placement;
use super::run::Failure;
use super::step::run_step;
use crate::plan::Flow;
use crate::plan::Node;

/// Finds a live flow by name (`FlowOp`); given by whoever owns the catalog.
#[derive(Clone)]
pub struct FlowLookup(Arc<FindFlow>);

type FindFlow = dyn Fn(&str) -> Option<Arc<Flow>> + Send + Sync;

impl FlowLookup {
    pub(crate) fn new(
        find: impl Fn(&str) -> Option<Arc<Flow>> + Send + Sync + 'static,
    ) -> FlowLookup {
        FlowLookup(Arc::new(find))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Flow>> {
        (self.0)(name)
    }
}

impl std::fmt::Debug for FlowLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FlowLookup")
    }
}

/// `FlowOp` inside `FlowOp` at most this deep (cycles are refused when flows load; this
/// bounds one made by a reload in the middle of a run).
const MAX_FLOW_DEPTH: u32 = 16;

type NodeFuture<'a> = std::pin::Pin<
    Box<dyn std::future::Future<Output = Result<Map<String, Value>, Failure>> + Send + 'a>,
>;

/// Op failures a run went on after (`raise_exception=False`): the name and the message.
pub(super) type Failures = Arc<Mutex<Vec<(&'static str, String)>>>;

/// What every op of a run shares: the chunk channel, cancellation, the log sink.
#[derive(Clone)]
pub(super) struct Env {
    pub(super) tx: batch::Sender,
    pub(super) cancel: CancellationToken,
    pub(super) logs: Option<LogSink>,
    pub(super) llm: Option<Arc<crate::llm::Service>>,
    pub(super) isolation: Placement,
    pub(super) failed: Failures,
    /// Set for a sub-op call: its answer chunks are gathered here, and go to the run's stream
    /// only when the parent asked to forward them.
    pub(super) collect: Option<Collect>,
    pub(super) flows: Option<FlowLookup>,
    pub(super) client: Option<Client>,
    /// `FlowOp`s this node runs inside.
    pub(super) depth: u32,
    /// A durable run's journal: calls that completed before (skipped), and a checkpoint
    /// chunk after each call that completes now.
    pub(super) journal: Option<Arc<Journal>>,
    /// The span new spans go under: the run's, or the op call's inside one.
    pub(super) trace: crate::telemetry::Cx,
}

/// Where a sub-op call's answer text is gathered.
#[derive(Clone)]
pub(super) struct Collect {
    pub(super) answer: Arc<Mutex<String>>,
    pub(super) forward: bool,
}

impl Collect {
    /// Gathers an answer chunk's text; whether the chunk also goes to the run's stream.
    pub(super) fn take(&self, chunk: &crate::chunk::Chunk) -> bool {
        if chunk.kind == crate::chunk::ChunkKind::Answer {
            self.answer
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push_str(&chunk.text);
        }
        self.forward
    }
}

/// One call (an op's or an MCP tool's) in a durable run's journal: skipped when it completed
/// before, followed by a checkpoint when it completes now.
async fn journaled(
    id: u64,
    name: &'static str,
    env: &Env,
    call: impl std::future::Future<Output = Result<Map<String, Value>, Failure>>,
) -> Result<Map<String, Value>, Failure> {
    let Some(journal) = env.journal.as_ref().filter(|_| env.collect.is_none()) else {
        return call.await;
    };
    if let Some(writes) = journal.done(id, name) {
        return Ok(writes.clone());
    }
    let writes = call.await?;
    if !env.cancel.is_cancelled() {
        let checkpoint = journal::Checkpoint {
            node: id,
            op: name.to_string(),
            writes: writes.clone(),
        };
        env.tx.push_final(checkpoint.to_chunk());
    }
    Ok(writes)
}

/// Runs a node on `context`; returns what it wrote, in write order. `id` is the node's place
/// in the walk ([`journal::child`]), which a durable run's checkpoints name.
pub(super) fn run_node<'a>(
    node: &'a Node,
    id: u64,
    context: Arc<Map<String, Value>>,
    env: &'a Env,
) -> NodeFuture<'a> {
    Box::pin(async move {
        match node {
            Node::Call(step) => {
                journaled(id, step.name(), env, run_step(step, &context, env)).await
            }
            Node::Mcp(step) => {
                journaled(id, step.name, env, super::mcp::run_mcp(step, &context, env)).await
            }
            Node::Flow(target) => {
                let failure = |message: String| Failure {
                    op: "FlowOp",
                    message,
                    crashed: false,
                    attempts: 0,
                };
                let Some(flow) = env
                    .flows
                    .as_ref()
                    .and_then(|lookup| lookup.get(&target.name))
                else {
                    return Err(failure(format!(
                        "no live flow `{}` to run (GET /flows lists them)",
                        target.name
                    )));
                };
                if env.depth >= MAX_FLOW_DEPTH {
                    return Err(failure(format!(
                        "flows run each other more than {MAX_FLOW_DEPTH} deep (at `{}`)",
                        target.name
                    )));
                }
                let span = env.trace.start_with(
                    crate::telemetry::Kind::Internal,
                    || format!("FlowOp {}", target.name),
                    |attributes| attributes.set("flowhost.flow", &target.name),
                );
                span.role(crate::telemetry::Role::Chain);
                let inner = Env {
                    depth: env.depth + 1,
                    trace: span.cx(),
                    ..env.clone()
                };
                let result = run_node(&flow.root, journal::child(id, 0), context, &inner).await;
                if let (Err(failure), true) = (&result, span.is_recording()) {
                    span.fail(&failure.to_string());
                }
                result
            }
            Node::Seq(items) => {
                let mut context = context;
                let mut writes = Map::new();
                for (index, item) in items.iter().enumerate() {
                    if env.cancel.is_cancelled() {
                        break;
                    }
                    let item_id = journal::child(id, index);
                    let step_writes = run_node(item, item_id, context.clone(), env).await?;
                    if !step_writes.is_empty() {
                        let shared = Arc::make_mut(&mut context);
                        for (key, value) in &step_writes {
                            shared.insert(key.clone(), value.clone());
                        }
                        writes.extend(step_writes);
                    }
                }
                Ok(writes)
            }
            Node::Par(branches) => {
                let group = env.cancel.child_token();
                let mut set = JoinSet::new();
                for (index, branch) in branches.iter().enumerate() {
                    let branch = branch.clone();
                    let context = context.clone();
                    let branch_env = Env {
                        cancel: group.clone(),
                        ..env.clone()
                    };
                    let branch_id = journal::child(id, index);
                    set.spawn(async move {
                        (
                            index,
                            run_node(&branch, branch_id, context, &branch_env).await,
                        )
                    });
                }
                let mut results: Vec<Option<Map<String, Value>>> = vec![None; branches.len()];
                let mut first_failure = None;
                while let Some(joined) = set.join_next().await {
                    let (index, result) = match joined {
                        Ok(done) => done,
                        Err(join) => {
                            group.cancel();
                            first_failure.get_or_insert(Failure {
                                op: "flow",
                                message: format!("a parallel branch crashed: {join}"),
                                crashed: false,
                                attempts: 0,
                            });
                            continue;
                        }
                    };
                    match result {
                        Ok(writes) => results[index] = Some(writes),
                        Err(failure) => {
                            // The first failure wins; the siblings it cancels fail after it.
                            group.cancel();
                            first_failure.get_or_insert(failure);
                        }
                    }
                }
                if let Some(failure) = first_failure {
                    return Err(failure);
                }
                let mut writes = Map::new();
                for branch_writes in results.into_iter().flatten() {
                    writes.extend(branch_writes);
                }
                Ok(writes)
            }
        }
    })
}
