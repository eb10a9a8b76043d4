//! Small helpers every part may use: a stable hash, "did you mean" hints, taking stdout for a
//! protocol, log lines to stderr in batches and their plain-text format.

pub(crate) mod logs;
pub(crate) mod plain;
pub(crate) mod stdio;
pub(crate) mod suggest;

/// FNV-1a, 64 bits: a hash that is the same in every process and every build, so replicas
/// can compare what they serve (`flows_hash`, `plugins_hash`) and content hashes are stable.
pub(crate) fn stable_hash(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
