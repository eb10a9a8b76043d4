//! flowhost: a plugin host for LLM flows. The binary (`main.rs`) is glue over this library:
//! `config` turns arguments into a [`config::Config`], `catalog` serves snapshots of flows
//! compiled against the `ops` registry, `watch` reloads them live, and `exec` runs a flow into
//! a stream of chunks. See ARCHITECTURE.md for the map and its invariants.

pub mod admission;
pub mod batch;
pub mod cache;
pub mod catalog;
pub mod chunk;
pub mod cli;
pub mod config;
pub mod content;
pub mod dev;
pub mod exec;
pub mod expr;
pub mod flow;
pub mod llm;
pub mod metrics;
pub mod ops;
pub mod plan;
pub mod scaffold;
pub mod stdio;
pub mod transport;
pub mod watch;
pub mod worker;

/// FNV-1a, 64 bits: a hash that is the same in every process and every build, so replicas
/// can compare what they serve (`flows_hash`, `plugins_hash`) and content hashes are stable.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
