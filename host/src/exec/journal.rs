//! A durable run's journal: which op calls of the walk completed and what they wrote. A run
//! started with a [`Journal`] marks each op call of its own walk (not sub-op calls, which run
//! again with their parent) with a checkpoint chunk when it completes, in order with the
//! chunks it emitted; whoever keeps the run stores them (`transport/http/runs`). A run resumed
//! after its host died starts with the calls that completed: they are not called again, their
//! writes are restored, and the walk goes on from the first one that did not complete.
//! Knows nothing of where checkpoints are kept.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::chunk::{Chunk, ChunkKind};
use crate::plan::{Flow, Node};

/// The `op` of a checkpoint chunk: no op can have this name (a NUL is not an identifier).
pub const CHECKPOINT_OP: &str = "\u{0}checkpoint";

/// The walk's id of the root node.
pub(crate) const ROOT: u64 = 0xcbf2_9ce4_8422_2325;

/// The id of a node's `index`th child (a serial step, a parallel branch, a flow's root):
/// stable for one plan, the same in every process.
pub(crate) fn child(parent: u64, index: usize) -> u64 {
    let mut hash = parent;
    for byte in (index as u64 + 1).to_le_bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The calls of a run that completed (node id → the call's name and what it wrote).
#[derive(Debug, Default)]
pub struct Journal {
    done: HashMap<u64, (String, Map<String, Value>)>,
}

/// A completed call, as its checkpoint chunk carries it.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub node: u64,
    pub op: String,
    pub writes: Map<String, Value>,
}

impl Journal {
    /// A journal with these calls completed.
    pub fn new(done: impl IntoIterator<Item = Checkpoint>) -> Journal {
        Journal {
            done: done
                .into_iter()
                .map(|c| (c.node, (c.op, c.writes)))
                .collect(),
        }
    }

    /// What call `op` at `node` wrote, if it completed. A call by another name at that place
    /// (the flow was edited since) did not: it runs.
    pub(crate) fn done(&self, node: u64, op: &str) -> Option<&Map<String, Value>> {
        self.done
            .get(&node)
            .filter(|(name, _)| name == op)
            .map(|(_, writes)| writes)
    }

    /// The op a resumed run calls first (the one that was running when its host died): the
    /// first call in source order that did not complete.
    pub fn next_op(&self, flow: &Flow) -> Option<String> {
        fn first(node: &Node, id: u64, journal: &Journal) -> Option<String> {
            match node {
                Node::Call(step) => journal
                    .done(id, step.name())
                    .is_none()
                    .then(|| step.name().to_string()),
                Node::Flow(target) => Some(format!("FlowOp(flow={})", target.name)),
                Node::Mcp(step) => journal
                    .done(id, step.name)
                    .is_none()
                    .then(|| step.name.to_string()),
                Node::Seq(items) | Node::Par(items) => items
                    .iter()
                    .enumerate()
                    .find_map(|(i, item)| first(item, child(id, i), journal)),
            }
        }
        first(&flow.root, ROOT, self)
    }
}

impl Checkpoint {
    /// The chunk that carries it through the run's channel.
    pub(crate) fn to_chunk(&self) -> Chunk {
        let text = serde_json::json!({
            "node": self.node.to_string(),
            "op": self.op,
            "writes": self.writes,
        })
        .to_string();
        Chunk {
            json: true,
            ..Chunk::text(ChunkKind::Usage, CHECKPOINT_OP, text)
        }
    }

    /// The checkpoint a chunk carries, if it is one.
    pub fn of(chunk: &Chunk) -> Option<Checkpoint> {
        if chunk.op != CHECKPOINT_OP {
            return None;
        }
        Checkpoint::parse(&chunk.text)
    }

    /// A checkpoint from its JSON text (as [`Checkpoint::to_chunk`] writes it).
    pub fn parse(text: &str) -> Option<Checkpoint> {
        let value: Value = serde_json::from_str(text).ok()?;
        Some(Checkpoint {
            node: value["node"].as_str()?.parse().ok()?,
            op: value["op"].as_str()?.to_string(),
            writes: value["writes"].as_object()?.clone(),
        })
    }

    /// Its JSON text.
    pub fn text(&self) -> String {
        self.to_chunk().text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_differ_by_place_and_checkpoints_round_trip() {
        assert_ne!(child(ROOT, 0), child(ROOT, 1));
        assert_ne!(child(child(ROOT, 0), 1), child(child(ROOT, 1), 0));
        assert_eq!(child(ROOT, 3), child(ROOT, 3));
        let mut writes = Map::new();
        writes.insert("x".into(), serde_json::json!([1, "two"]));
        let checkpoint = Checkpoint {
            node: child(ROOT, 2),
            op: "EchoOp".into(),
            writes,
        };
        assert_eq!(Checkpoint::of(&checkpoint.to_chunk()), Some(checkpoint));
        assert_eq!(
            Checkpoint::of(&Chunk::text(ChunkKind::Usage, "EchoOp", "{}")),
            None
        );
    }
}
