//! The op answer cache (`enable_cache=True` on an op call): the chunks a call emitted and the
//! context it wrote, reused for `cache_expire_hours` by a call of the same op build with the
//! same arguments and context. In memory, bounded in entries and bytes (the oldest go first);
//! with a [`CacheFiles`] store set (`cache.dir`: one JSON file per call in that folder, see
//! `app/cache_files.rs`), also kept there, so answers outlive a restart and are shared by
//! processes that share the folder. Knows nothing of running ops, nor of files.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use crate::chunk::{Chunk, ChunkKind};

/// Entries kept at most.
pub(crate) const MAX_ENTRIES: usize = 4096;
/// Bytes kept at most (chunk text and written JSON).
pub(crate) const MAX_BYTES: usize = 64 << 20;
/// A call that emitted more than this is not kept.
pub(crate) const MAX_ENTRY_BYTES: usize = 1 << 20;

/// What a cached call produced.
#[derive(Debug)]
pub(crate) struct Cached {
    pub(crate) chunks: Vec<Chunk>,
    pub(crate) writes: Map<String, Value>,
}

/// A call's identity: two independent 64-bit hashes of the op build, its arguments and the
/// context it was given (a false hit would need both to collide).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64, u64);

impl Key {
    /// The name its stored form is kept under (`cache.dir`: the file name without `.json`).
    fn name(&self) -> String {
        format!("{:016x}{:016x}", self.0, self.1)
    }

    pub(crate) fn of(library_hash: u64, op: &str, args_json: &str, context_json: &str) -> Key {
        let text = format!("{library_hash:x}\u{0}{op}\u{0}{args_json}\u{0}{context_json}");
        // FNV-1a and SipHash (the cache lives in one process, so any fixed keys do).
        let mut sip = std::collections::hash_map::DefaultHasher::new();
        text.hash(&mut sip);
        Key(crate::util::stable_hash(text.as_bytes()), sip.finish())
    }
}

struct Entry {
    expires: Instant,
    bytes: usize,
    value: Arc<Cached>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    order: VecDeque<Key>,
    bytes: usize,
}

/// The host's cache.
#[derive(Default)]
pub(crate) struct Cache {
    inner: Mutex<Inner>,
}

/// Where cached calls are also kept, by name, outside this process's memory (`cache.dir`, in
/// `app/cache_files.rs`). Called off the runtime thread.
pub(crate) trait CacheFiles: Send + Sync {
    /// What is kept under `name`, if anything.
    fn load(&self, name: &str) -> Option<Vec<u8>>;
    /// Keeps `text` under `name`, whole or not at all; a failure is the store's to report.
    fn save(&self, name: &str, text: &str);
    /// Forgets `name` (expired or unreadable).
    fn remove(&self, name: &str);
}

static FILES: OnceLock<Option<Box<dyn CacheFiles>>> = OnceLock::new();

/// `cache.dir`: where cached calls are also kept (set once, at startup).
pub(crate) fn set_files(files: Option<Box<dyn CacheFiles>>) {
    let _ = FILES.set(files);
}

fn files() -> Option<&'static dyn CacheFiles> {
    FILES.get().and_then(|f| f.as_deref())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A cached call as a file: `{expires_ms, chunks: [{kind, json, op, text}], writes}`.
fn to_file(cached: &Cached, ttl: Duration) -> Value {
    let chunks: Vec<Value> = cached
        .chunks
        .iter()
        .map(|c| serde_json::json!({"kind": c.kind.as_str(), "json": c.json, "op": c.op, "text": c.text}))
        .collect();
    serde_json::json!({
        "expires_ms": now_ms() + ttl.as_millis() as u64,
        "chunks": chunks,
        "writes": cached.writes,
    })
}

fn from_file(value: &Value) -> Option<(Cached, Duration)> {
    let expires = value["expires_ms"].as_u64()?;
    let left = expires.checked_sub(now_ms()).filter(|ms| *ms > 0)?;
    let kinds = [
        ChunkKind::Answer,
        ChunkKind::Think,
        ChunkKind::Tool,
        ChunkKind::Usage,
        ChunkKind::Error,
    ];
    let mut chunks = Vec::new();
    for chunk in value["chunks"].as_array()? {
        let kind = chunk["kind"].as_str()?;
        let kind = *kinds.iter().find(|k| k.as_str() == kind)?;
        chunks.push(Chunk {
            kind,
            json: chunk["json"].as_bool().unwrap_or(false),
            op: crate::ops::intern(chunk["op"].as_str()?),
            text: chunk["text"].as_str()?.to_string(),
            tolerated: false,
            attempts: 0,
            resumed: false,
        });
    }
    let writes = value["writes"].as_object()?.clone();
    Some((Cached { chunks, writes }, Duration::from_millis(left)))
}

/// Looks in memory, then (with `cache.dir`) in the folder; a file found is kept in memory
/// for what is left of its time. The file is read off the runtime thread.
pub(crate) async fn lookup(key: Key) -> Option<Arc<Cached>> {
    if let Some(hit) = global().get(key) {
        return Some(hit);
    }
    let files = files()?;
    let name = key.name();
    let loaded = tokio::task::spawn_blocking(move || {
        let text = files.load(&name)?;
        let found = serde_json::from_slice::<Value>(&text)
            .ok()
            .and_then(|v| from_file(&v));
        if found.is_none() {
            // Expired or unreadable: not worth keeping.
            files.remove(&name);
        }
        found
    })
    .await
    .ok()??;
    let (cached, left) = loaded;
    global().insert(key, cached, left);
    global().get(key)
}

/// Keeps a call in memory and (with `cache.dir`) writes its file off the runtime thread.
pub(crate) fn store(key: Key, cached: Cached, ttl: Duration) {
    let file = files().map(|files| (files, key.name(), to_file(&cached, ttl)));
    if !global().insert(key, cached, ttl) {
        return;
    }
    if let Some((files, name, value)) = file {
        SAVING.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        tokio::task::spawn_blocking(move || {
            files.save(&name, &value.to_string());
            SAVING.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        });
    }
}

/// Entries being written to the cache's files.
static SAVING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Waits (at most `limit`) for the entries being written to the cache's files: a one-shot
/// process (`flowhost run`) calls it before it exits, so what it cached is kept.
pub(crate) async fn flush(limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while SAVING.load(std::sync::atomic::Ordering::Acquire) > 0
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The process-wide cache.
pub(crate) fn global() -> &'static Cache {
    static CACHE: OnceLock<Cache> = OnceLock::new();
    CACHE.get_or_init(Cache::default)
}

fn size(cached: &Cached) -> usize {
    cached
        .chunks
        .iter()
        .map(|c| c.text.len() + 32)
        .sum::<usize>()
        + cached
            .writes
            .iter()
            .map(|(k, v)| k.len() + v.to_string().len())
            .sum::<usize>()
}

impl Cache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A live entry for `key`; an expired one is dropped.
    pub(crate) fn get(&self, key: Key) -> Option<Arc<Cached>> {
        let mut inner = self.lock();
        let entry = inner.map.get(&key)?;
        if entry.expires > Instant::now() {
            return Some(entry.value.clone());
        }
        let bytes = entry.bytes;
        inner.map.remove(&key);
        inner.bytes -= bytes;
        None
    }

    /// Keeps `cached` for `ttl`; refuses (false) an entry over [`MAX_ENTRY_BYTES`].
    pub(crate) fn insert(&self, key: Key, cached: Cached, ttl: Duration) -> bool {
        let bytes = size(&cached);
        if bytes > MAX_ENTRY_BYTES {
            return false;
        }
        let mut inner = self.lock();
        if let Some(old) = inner.map.remove(&key) {
            inner.bytes -= old.bytes;
        }
        while inner.map.len() >= MAX_ENTRIES || inner.bytes + bytes > MAX_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(old) = inner.map.remove(&oldest) {
                inner.bytes -= old.bytes;
            }
        }
        inner.order.push_back(key);
        // The order queue may hold keys already replaced or expired; keep it from growing
        // past the entries it orders.
        if inner.order.len() > 2 * MAX_ENTRIES {
            let Inner { map, order, .. } = &mut *inner;
            order.retain(|k| map.contains_key(k));
        }
        inner.bytes += bytes;
        inner.map.insert(
            key,
            Entry {
                expires: Instant::now() + ttl,
                bytes,
                value: Arc::new(cached),
            },
        );
        true
    }

    /// Entries held now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().map.len()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cached(text: &str) -> Cached {
        Cached {
            chunks: vec![Chunk::text(ChunkKind::Answer, "T", text)],
            writes: Map::new(),
        }
    }

    #[test]
    fn entries_expire_and_keys_differ_by_every_part() {
        let cache = Cache::default();
        let key = Key::of(1, "EchoOp", "{}", r#"{"query":"a"}"#);
        assert_ne!(key, Key::of(2, "EchoOp", "{}", r#"{"query":"a"}"#));
        assert_ne!(key, Key::of(1, "EchoOp", r#"{"x":1}"#, r#"{"query":"a"}"#));
        assert_ne!(key, Key::of(1, "EchoOp", "{}", r#"{"query":"b"}"#));
        assert!(cache.insert(key, cached("a"), Duration::from_secs(600)));
        assert_eq!(cache.get(key).unwrap().chunks[0].text, "a");
        let short = Key::of(1, "EchoOp", "{}", r#"{"query":"short"}"#);
        assert!(cache.insert(short, cached("s"), Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(cache.get(short).is_none());
        assert_eq!(cache.get(key).unwrap().chunks[0].text, "a");
        assert!(!cache.is_empty());
    }

    #[test]
    fn a_cached_call_survives_the_trip_through_a_file() {
        let cached = Cached {
            chunks: vec![
                Chunk::text(ChunkKind::Answer, "T", "hi"),
                Chunk {
                    json: true,
                    ..Chunk::text(ChunkKind::Tool, "T", "{\"a\":1}")
                },
            ],
            writes: serde_json::json!({"answer": "hi"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        };
        let file = to_file(&cached, Duration::from_secs(60));
        let (back, left) = from_file(&file).expect("read back");
        assert_eq!(back.chunks, cached.chunks);
        assert_eq!(back.writes, cached.writes);
        assert!(left > Duration::from_secs(58));
        assert!(
            from_file(&to_file(&cached, Duration::ZERO)).is_none(),
            "expired"
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = Cache::default();
        let big = "x".repeat(MAX_ENTRY_BYTES + 1);
        assert!(!cache.insert(Key(0, 0), cached(&big), Duration::from_secs(60)));
        for i in 0..(MAX_ENTRIES as u64 + 10) {
            cache.insert(Key(i, i), cached("v"), Duration::from_secs(60));
        }
        assert_eq!(cache.len(), MAX_ENTRIES);
        assert!(cache.get(Key(0, 0)).is_none(), "the oldest went first");
        assert!(cache
            .get(Key(MAX_ENTRIES as u64 + 9, MAX_ENTRIES as u64 + 9))
            .is_some());
        let half = "y".repeat(MAX_ENTRY_BYTES - 64);
        for i in 0..100u64 {
            cache.insert(Key(1 << 40 | i, i), cached(&half), Duration::from_secs(60));
        }
        assert!(cache.lock().bytes <= MAX_BYTES);
    }
}
