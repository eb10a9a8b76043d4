//! Where async runs outlive the process that started them: each run's record, its event log,
//! the checkpoints of its completed op calls, its idempotency key, and who runs it (an owner
//! with a lease); MCP tasks as their host sees them; the op cache's entries. [`Backend`] is the small interface the runs code keeps them through;
//! `sqlite.rs` is the embedded default (one file, shared safely by every host on the machine
//! that opens it); `redis.rs` the shared one (`store.url`, replicas on several machines).
//! `store.path=:memory:` opens none: runs then live in the memory of the
//! process that started them (`transport/http/runs/store.rs`), as before.
//!
//! Calls block (a file, a lock): callers run them off the async runtime's threads.

mod redis;
mod sqlite;

pub(crate) use self::redis::Redis;
pub(crate) use self::sqlite::Sqlite;

/// A run being started.
#[derive(Debug, Clone)]
pub(crate) struct NewRun {
    pub(crate) id: String,
    pub(crate) flow: String,
    /// The run's input, as JSON text (what a resumed run starts from again).
    pub(crate) input: String,
    pub(crate) created_ms: i64,
    /// `Idempotency-Key` and a hash of the input it came with.
    pub(crate) key: Option<(String, u64)>,
    pub(crate) owner: String,
    pub(crate) lease_until_ms: i64,
    /// Who started it (`auth`'s subject): only they may read or cancel it.
    pub(crate) subject: String,
}

/// What starting a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Created {
    New,
    /// The key was taken already, by this run with this input hash.
    Existing {
        id: String,
        input: u64,
    },
}

/// One kept chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Event {
    /// Its place in the run's log (0, 1, 2, ...); set by reads, ignored by writes (which
    /// number events from `first`).
    pub(crate) seq: u64,
    pub(crate) kind: String,
    pub(crate) json: bool,
    pub(crate) op: String,
    pub(crate) text: String,
    pub(crate) tolerated: bool,
    pub(crate) attempts: u8,
    /// The first chunk after a resume (its metadata says `"resumed": true`).
    pub(crate) resumed: bool,
}

/// A run as kept.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RunRow {
    pub(crate) id: String,
    pub(crate) flow: String,
    pub(crate) input: String,
    pub(crate) created_ms: i64,
    /// `running`, `completed`, `failed`, `cancelled`.
    pub(crate) status: String,
    pub(crate) owner: String,
    pub(crate) lease_until_ms: i64,
    pub(crate) cancel_requested: bool,
    pub(crate) resumes: u32,
    pub(crate) chunks: u64,
    pub(crate) bytes: u64,
    pub(crate) truncated: bool,
    /// JSON text, once finished.
    pub(crate) answer: Option<String>,
    pub(crate) error: Option<String>,
    /// JSON text (an array), once finished.
    pub(crate) failed_ops: Option<String>,
    pub(crate) finished_ms: Option<i64>,
    /// Who started it; empty for runs kept before runs had subjects.
    pub(crate) subject: String,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub(crate) struct End {
    pub(crate) status: &'static str,
    pub(crate) answer: String,
    pub(crate) error: Option<String>,
    pub(crate) failed_ops: String,
    pub(crate) finished_ms: i64,
}

/// An MCP task as kept: its state (rmcp's `DetailedTask` as JSON), who runs it, when it was
/// last written and when it is forgotten.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TaskRow {
    pub(crate) id: String,
    pub(crate) owner: String,
    pub(crate) state: String,
    pub(crate) updated_ms: i64,
    pub(crate) expires_ms: i64,
}

/// A checkpoint as kept: the event count when it was taken and its JSON text
/// (`exec::Checkpoint::text`).
pub(crate) type Kept = (u64, String);

/// The bounds of `runs:` as the store applies them to finished runs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) keep_ms: i64,
    pub(crate) max_runs: usize,
    pub(crate) max_bytes: u64,
}

pub(crate) type Result<T> = std::result::Result<T, String>;

/// Runs kept outside a process's memory.
pub(crate) trait Backend: Send + Sync {
    /// What it is, for the log (`SQLite file .flowhost/runs.db`).
    fn describe(&self) -> String;
    /// Keeps a new run, and its key unless the key is taken (then nothing is kept); then
    /// forgets the finished runs past `bounds` (they hold for every host sharing the store).
    fn create(&self, run: &NewRun, bounds: Bounds) -> Result<Created>;
    /// The run started under `key` for `flow`, and its input hash.
    fn key(&self, flow: &str, key: &str) -> Result<Option<(String, u64)>>;
    /// Appends events (the first is event number `first`) and checkpoints, and sets the
    /// run's totals, in one transaction, if `owner` still owns the run; false when it does
    /// not (another host took it over: the caller stops driving it).
    #[allow(clippy::too_many_arguments)]
    fn append(
        &self,
        id: &str,
        owner: &str,
        first: u64,
        events: &[Event],
        checkpoints: &[Kept],
        bytes: u64,
        truncated: bool,
    ) -> Result<bool>;
    /// Records how the run ended, if `owner` still owns it (else false).
    fn finish(&self, id: &str, owner: &str, end: &End) -> Result<bool>;
    fn run(&self, id: &str) -> Result<Option<RunRow>>;
    /// Events `from` on, at most `max`.
    fn events(&self, id: &str, from: u64, max: usize) -> Result<Vec<Event>>;
    fn checkpoints(&self, id: &str) -> Result<Vec<Kept>>;
    /// Asks whoever runs `id` to cancel it; false when it is not running.
    fn cancel(&self, id: &str) -> Result<bool>;
    /// `owner`'s running runs that someone asked to cancel.
    fn cancelled(&self, owner: &str) -> Result<Vec<String>>;
    /// Extends the lease on the runs `ids` that `owner` runs.
    fn renew(&self, owner: &str, ids: &[String], until_ms: i64) -> Result<()>;
    /// Ends `owner`'s lease on every run it owns (it is stopping) or on `id` alone.
    fn release(&self, owner: &str, id: Option<&str>) -> Result<()>;
    /// Every running run (whoever owns it).
    fn running(&self) -> Result<Vec<RunRow>>;
    /// Takes `id` over from `from`, if it still owns it with the lease `lease_ms` that was
    /// seen (so a renewal in between wins); false when someone else did first.
    fn claim(
        &self,
        id: &str,
        from: &str,
        lease_ms: i64,
        owner: &str,
        until_ms: i64,
    ) -> Result<bool>;
    /// Forgets finished runs past `bounds`; how many went.
    fn prune(&self, bounds: Bounds, now_ms: i64) -> Result<usize>;
    /// Keeps an MCP task's state (rmcp's task as JSON) as the host running it sees it.
    fn put_task(&self, task: &TaskRow) -> Result<()>;
    fn task(&self, id: &str) -> Result<Option<TaskRow>>;
    /// Leaves a request (`cancel`, or input responses as JSON) for the host running task `id`;
    /// false when no host keeps it.
    fn ask_task(&self, id: &str, request: &str) -> Result<bool>;
    /// Takes the requests left for task `id`, oldest first.
    fn task_requests(&self, id: &str) -> Result<Vec<String>>;
    /// The op cache (`enable_cache`): an entry by name, kept until `expires_ms`.
    fn cache_get(&self, name: &str) -> Result<Option<Vec<u8>>>;
    fn cache_put(&self, name: &str, text: &str, expires_ms: i64) -> Result<()>;
    fn cache_remove(&self, name: &str) -> Result<()>;
    /// Whether [`Backend::take_token`] shares rate-limit buckets between processes.
    fn shares_buckets(&self) -> bool {
        false
    }
    /// Takes one token from bucket `key` (holding `capacity`, refilled at `per_second`):
    /// zero when there was one, else how long until the next. Only stores that share buckets
    /// across processes implement it.
    fn take_token(
        &self,
        key: &str,
        _capacity: f64,
        _per_second: f64,
    ) -> Result<std::time::Duration> {
        Err(format!(
            "{} does not keep rate-limit buckets (`{key}`)",
            self.describe()
        ))
    }
    /// Waits (at most `at_most`) for event `from` of run `id` to be kept; the caller reads
    /// again either way. A store that cannot be told when it is sleeps a tenth of a second.
    fn wait(&self, _id: &str, _from: u64, at_most: std::time::Duration) -> Result<()> {
        std::thread::sleep(at_most.min(std::time::Duration::from_millis(100)));
        Ok(())
    }
}

/// Runs `call` on `store` off the async runtime's threads (the calls block: a file lock, a
/// round trip); the one way the async parts call a store.
pub(crate) async fn call<T: Send + 'static>(
    store: &std::sync::Arc<dyn Backend>,
    call: impl FnOnce(&dyn Backend) -> Result<T> + Send + 'static,
) -> Result<T> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || call(&*store))
        .await
        .unwrap_or_else(|err| Err(format!("run store call failed: {err}")))
}

/// A store URL as shown (logs, `flowhost config`): without its password.
pub(crate) fn shown_url(url: &str) -> String {
    self::redis::redact(url)
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `store:` in the config: where async runs are kept.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Settings {
    /// `store.url`: a shared store (`redis://HOST:PORT/DB`); when set, `path` is not used.
    pub(crate) url: Option<String>,
    /// `store.path`: the SQLite file (default `.flowhost/runs.db` in the working folder);
    /// None for `:memory:`.
    pub(crate) path: Option<std::path::PathBuf>,
    /// `path` is the default (no `store.path` given): a folder where it cannot be made keeps
    /// runs in memory with a warning instead of stopping the host.
    pub(crate) path_is_default: bool,
    /// `store.lease`: how long a run's owner may go silent before another host takes the run
    /// over (its owner renews the lease at a third of it).
    pub(crate) lease: std::time::Duration,
    /// `store.max_resumes`: a run resumed more times than this fails.
    pub(crate) max_resumes: u32,
}

/// Op cache entries the store keeps at most (the newest go last).
pub(crate) const MAX_CACHE_ENTRIES: usize = 4096;

/// Where the embedded store is kept unless `store.path` says otherwise.
pub(crate) const DEFAULT_PATH: &str = ".flowhost/runs.db";

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            url: None,
            path: Some(DEFAULT_PATH.into()),
            path_is_default: true,
            lease: std::time::Duration::from_secs(10),
            max_resumes: 3,
        }
    }
}

/// Opens the store `settings` name; None when runs are kept in memory.
pub(crate) fn open(settings: &Settings) -> Result<Option<std::sync::Arc<dyn Backend>>> {
    if let Some(url) = &settings.url {
        return Ok(Some(std::sync::Arc::new(Redis::open(url)?)));
    }
    match &settings.path {
        None => Ok(None),
        Some(path) => match Sqlite::open(path) {
            Ok(store) => Ok(Some(std::sync::Arc::new(store))),
            Err(err) if settings.path_is_default => {
                tracing::warn!(
                    "{err}; async runs are kept in memory only (set store.path to a writable file, or store.url)"
                );
                Ok(None)
            }
            Err(err) => Err(err),
        },
    }
}
