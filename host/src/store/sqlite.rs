//! The embedded store: one SQLite file in WAL mode. Every host on the machine that opens the
//! same file shares it (two `serve`s from one folder see each other's runs; a writer waits for
//! another's transaction rather than failing); a write is in the WAL before the call returns,
//! so a `kill -9` loses nothing written. Finished runs past `runs:` bounds are deleted with
//! their events, and freed pages are given back to the file system, so the file stays bounded.
//!
//! Long because it is one implementation of the store's interface (runs, events, tasks, the
//! op cache) plus its schema, each method one short transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{Backend, Bounds, Created, End, Event, Kept, NewRun, Result, RunRow, TaskRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    flow TEXT NOT NULL,
    input TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    status TEXT NOT NULL,
    owner TEXT NOT NULL,
    lease_ms INTEGER NOT NULL,
    cancel INTEGER NOT NULL DEFAULT 0,
    resumes INTEGER NOT NULL DEFAULT 0,
    chunks INTEGER NOT NULL DEFAULT 0,
    bytes INTEGER NOT NULL DEFAULT 0,
    truncated INTEGER NOT NULL DEFAULT 0,
    answer TEXT,
    error TEXT,
    failed_ops TEXT,
    finished_ms INTEGER,
    subject TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, owner);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_ms);
CREATE INDEX IF NOT EXISTS runs_by_finished ON runs (finished_ms);
CREATE TABLE IF NOT EXISTS events (
    run TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    kind TEXT NOT NULL,
    json INTEGER NOT NULL,
    op TEXT NOT NULL,
    text TEXT NOT NULL,
    flags INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (run, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    run TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checkpoints_by_run ON checkpoints (run);
CREATE TABLE IF NOT EXISTS keys (
    flow TEXT NOT NULL,
    key TEXT NOT NULL,
    run TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    input INTEGER NOT NULL,
    PRIMARY KEY (flow, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS keys_by_run ON keys (run);
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS task_requests (
    task TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    request TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS task_requests_by_task ON task_requests (task);
CREATE TABLE IF NOT EXISTS cache (
    name TEXT PRIMARY KEY,
    text TEXT NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_by_expiry ON cache (expires_ms);
";

const TOLERATED: i64 = 1;
const RESUMED: i64 = 2;

/// The SQLite store.
pub(crate) struct Sqlite {
    path: PathBuf,
    /// Writes go through one connection, reads through another (WAL lets them overlap).
    write: Mutex<Connection>,
    read: Mutex<Connection>,
}

impl Sqlite {
    /// Opens (creating it and its folder) the file at `path`.
    pub(crate) fn open(path: &Path) -> Result<Sqlite> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|err| {
                format!(
                    "cannot create {} for the run store (store.path): {err}",
                    dir.display()
                )
            })?;
        }
        let fail = |err: rusqlite::Error| {
            format!(
                "cannot open the run store {} (store.path; `store.path=:memory:` keeps runs in memory): {err}",
                path.display()
            )
        };
        let write = connect(path).map_err(fail)?;
        // Pages freed by deleted runs go back to the file system (set before the first table).
        write
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(fail)?;
        let mode: String = write
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(fail)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "the run store {} cannot use a write-ahead log (journal_mode is {mode}): put store.path on a local file system",
                path.display()
            ));
        }
        write.execute_batch(SCHEMA).map_err(fail)?;
        // A file from before runs had owners (subjects) gets the column.
        let has_subject = write.prepare("SELECT subject FROM runs LIMIT 0").is_ok();
        if !has_subject {
            write
                .execute_batch("ALTER TABLE runs ADD COLUMN subject TEXT NOT NULL DEFAULT ''")
                .map_err(fail)?;
        }
        let read = connect(path).map_err(fail)?;
        Ok(Sqlite {
            path: path.to_path_buf(),
            write: Mutex::new(write),
            read: Mutex::new(read),
        })
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.read.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self, what: &str) -> impl Fn(rusqlite::Error) -> String + '_ {
        let what = what.to_string();
        move |err| format!("run store {}: {what}: {err}", self.path.display())
    }
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    // Another host's transaction is waited for, not reported as "database is locked".
    connection.busy_timeout(Duration::from_secs(10))?;
    connection.execute_batch(
        "PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; PRAGMA journal_size_limit = 16777216;",
    )?;
    Ok(connection)
}

fn row_to_run(row: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: row.get(0)?,
        flow: row.get(1)?,
        input: row.get(2)?,
        created_ms: row.get(3)?,
        status: row.get(4)?,
        owner: row.get(5)?,
        lease_until_ms: row.get(6)?,
        cancel_requested: row.get::<_, i64>(7)? != 0,
        resumes: row.get::<_, i64>(8)?.max(0) as u32,
        chunks: row.get::<_, i64>(9)?.max(0) as u64,
        bytes: row.get::<_, i64>(10)?.max(0) as u64,
        truncated: row.get::<_, i64>(11)? != 0,
        answer: row.get(12)?,
        error: row.get(13)?,
        failed_ops: row.get(14)?,
        finished_ms: row.get(15)?,
        subject: row.get(16)?,
    })
}

const RUN_COLUMNS: &str = "id, flow, input, created_ms, status, owner, lease_ms, cancel, resumes, chunks, bytes, truncated, answer, error, failed_ops, finished_ms, subject";

impl Backend for Sqlite {
    fn describe(&self) -> String {
        format!("SQLite file {}", self.path.display())
    }

    fn create(&self, run: &NewRun, bounds: Bounds) -> Result<Created> {
        let mut connection = self.writer();
        let err = self.err("starting a run");
        // Immediate: the key is read and written under one write lock, so two hosts sending
        // the same key at once start one run.
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        if let Some((key, _)) = &run.key {
            let existing = tx
                .query_row(
                    "SELECT run, input FROM keys WHERE flow = ?1 AND key = ?2",
                    params![run.flow, key],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()
                .map_err(&err)?;
            if let Some((id, input)) = existing {
                return Ok(Created::Existing {
                    id,
                    input: input as u64,
                });
            }
        }
        tx.execute(
            "INSERT INTO runs (id, flow, input, created_ms, status, owner, lease_ms, subject) VALUES (?1, ?2, ?3, ?4, 'running', ?5, ?6, ?7)",
            params![run.id, run.flow, run.input, run.created_ms, run.owner, run.lease_until_ms, run.subject],
        )
        .map_err(&err)?;
        if let Some((key, input)) = &run.key {
            tx.execute(
                "INSERT INTO keys (flow, key, run, input) VALUES (?1, ?2, ?3, ?4)",
                params![run.flow, key, run.id, *input as i64],
            )
            .map_err(&err)?;
        }
        // The bounds hold for every host sharing the file: kept in the same commit.
        prune_in(&tx, bounds, run.created_ms).map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(Created::New)
    }

    fn key(&self, flow: &str, key: &str) -> Result<Option<(String, u64)>> {
        self.reader()
            .query_row(
                "SELECT run, input FROM keys WHERE flow = ?1 AND key = ?2",
                params![flow, key],
                |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64)),
            )
            .optional()
            .map_err(self.err("reading an idempotency key"))
    }

    fn append(
        &self,
        id: &str,
        owner: &str,
        first: u64,
        events: &[Event],
        checkpoints: &[Kept],
        bytes: u64,
        truncated: bool,
    ) -> Result<bool> {
        let mut connection = self.writer();
        let err = self.err("keeping a run's events");
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        // Fenced: a host that lost the run (another took it over) writes nothing more.
        if !owns(&tx, id, owner).map_err(&err)? {
            return Ok(false);
        }
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO events (run, seq, kind, json, op, text, flags, attempts) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )
                .map_err(&err)?;
            for (i, event) in events.iter().enumerate() {
                let flags = if event.tolerated { TOLERATED } else { 0 }
                    | if event.resumed { RESUMED } else { 0 };
                insert
                    .execute(params![
                        id,
                        (first + i as u64) as i64,
                        event.kind,
                        event.json,
                        event.op,
                        event.text,
                        flags,
                        event.attempts
                    ])
                    .map_err(&err)?;
            }
            let mut insert = tx
                .prepare_cached("INSERT INTO checkpoints (run, seq, body) VALUES (?1, ?2, ?3)")
                .map_err(&err)?;
            for (seq, body) in checkpoints {
                insert
                    .execute(params![id, *seq as i64, body])
                    .map_err(&err)?;
            }
        }
        tx.execute(
            "UPDATE runs SET chunks = ?2, bytes = ?3, truncated = ?4 WHERE id = ?1",
            params![
                id,
                (first + events.len() as u64) as i64,
                bytes as i64,
                truncated
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(true)
    }

    fn finish(&self, id: &str, owner: &str, end: &End) -> Result<bool> {
        self.writer()
            .execute(
                "UPDATE runs SET status = ?2, answer = ?3, error = ?4, failed_ops = ?5, finished_ms = ?6 WHERE id = ?1 AND owner = ?7",
                params![id, end.status, end.answer, end.error, end.failed_ops, end.finished_ms, owner],
            )
            .map(|n| n > 0)
            .map_err(self.err("recording a run's end"))
    }

    fn run(&self, id: &str) -> Result<Option<RunRow>> {
        self.reader()
            .query_row(
                &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
                params![id],
                row_to_run,
            )
            .optional()
            .map_err(self.err("reading a run"))
    }

    fn events(&self, id: &str, from: u64, max: usize) -> Result<Vec<Event>> {
        let connection = self.reader();
        let err = self.err("reading a run's events");
        let mut select = connection
            .prepare_cached(
                "SELECT kind, json, op, text, flags, attempts, seq FROM events WHERE run = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
            )
            .map_err(&err)?;
        let rows = select
            .query_map(params![id, from as i64, max as i64], |row| {
                let flags: i64 = row.get(4)?;
                Ok(Event {
                    seq: row.get::<_, i64>(6)?.max(0) as u64,
                    kind: row.get(0)?,
                    json: row.get(1)?,
                    op: row.get(2)?,
                    text: row.get(3)?,
                    tolerated: flags & TOLERATED != 0,
                    resumed: flags & RESUMED != 0,
                    attempts: row.get::<_, i64>(5)?.clamp(0, 255) as u8,
                })
            })
            .map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    fn checkpoints(&self, id: &str) -> Result<Vec<Kept>> {
        let connection = self.reader();
        let err = self.err("reading a run's checkpoints");
        let mut select = connection
            .prepare_cached("SELECT seq, body FROM checkpoints WHERE run = ?1 ORDER BY rowid")
            .map_err(&err)?;
        let rows = select
            .query_map(params![id], |row| {
                Ok((row.get::<_, i64>(0)?.max(0) as u64, row.get(1)?))
            })
            .map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    fn cancel(&self, id: &str) -> Result<bool> {
        self.writer()
            .execute(
                "UPDATE runs SET cancel = 1 WHERE id = ?1 AND status = 'running'",
                params![id],
            )
            .map(|n| n > 0)
            .map_err(self.err("asking for a cancel"))
    }

    fn cancelled(&self, owner: &str) -> Result<Vec<String>> {
        let connection = self.reader();
        let err = self.err("reading cancel requests");
        let mut select = connection
            .prepare_cached(
                "SELECT id FROM runs WHERE status = 'running' AND owner = ?1 AND cancel = 1",
            )
            .map_err(&err)?;
        let rows = select
            .query_map(params![owner], |row| row.get(0))
            .map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    fn renew(&self, owner: &str, ids: &[String], until_ms: i64) -> Result<()> {
        let mut connection = self.writer();
        let err = self.err("renewing leases");
        let tx = connection.transaction().map_err(&err)?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE runs SET lease_ms = ?3 WHERE id = ?1 AND owner = ?2 AND status = 'running'",
                )
                .map_err(&err)?;
            for id in ids {
                update.execute(params![id, owner, until_ms]).map_err(&err)?;
            }
        }
        tx.commit().map_err(&err)
    }

    fn release(&self, owner: &str, id: Option<&str>) -> Result<()> {
        let connection = self.writer();
        let done = match id {
            Some(id) => connection.execute(
                "UPDATE runs SET lease_ms = 0 WHERE id = ?1 AND owner = ?2 AND status = 'running'",
                params![id, owner],
            ),
            None => connection.execute(
                "UPDATE runs SET lease_ms = 0 WHERE owner = ?1 AND status = 'running'",
                params![owner],
            ),
        };
        done.map(drop).map_err(self.err("giving up leases"))
    }

    fn running(&self) -> Result<Vec<RunRow>> {
        let connection = self.reader();
        let err = self.err("reading running runs");
        let mut select = connection
            .prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running'"
            ))
            .map_err(&err)?;
        let rows = select.query_map([], row_to_run).map_err(&err)?;
        rows.collect::<rusqlite::Result<Vec<_>>>().map_err(&err)
    }

    fn claim(
        &self,
        id: &str,
        from: &str,
        lease_ms: i64,
        owner: &str,
        until_ms: i64,
    ) -> Result<bool> {
        self.writer()
            .execute(
                "UPDATE runs SET owner = ?4, lease_ms = ?5, resumes = resumes + 1 WHERE id = ?1 AND owner = ?2 AND lease_ms = ?3 AND status = 'running'",
                params![id, from, lease_ms, owner, until_ms],
            )
            .map(|n| n > 0)
            .map_err(self.err("taking a run over"))
    }

    fn put_task(&self, task: &TaskRow) -> Result<()> {
        self.writer()
            .execute(
                "INSERT INTO tasks (id, owner, state, updated_ms, expires_ms) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET owner = ?2, state = ?3, updated_ms = ?4, expires_ms = ?5",
                params![task.id, task.owner, task.state, task.updated_ms, task.expires_ms],
            )
            .map(drop)
            .map_err(self.err("keeping an MCP task"))
    }

    fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        self.reader()
            .query_row(
                "SELECT id, owner, state, updated_ms, expires_ms FROM tasks WHERE id = ?1",
                params![id],
                |row| {
                    Ok(TaskRow {
                        id: row.get(0)?,
                        owner: row.get(1)?,
                        state: row.get(2)?,
                        updated_ms: row.get(3)?,
                        expires_ms: row.get(4)?,
                    })
                },
            )
            .optional()
            .map_err(self.err("reading an MCP task"))
    }

    fn ask_task(&self, id: &str, request: &str) -> Result<bool> {
        self.writer()
            .execute(
                "INSERT INTO task_requests (task, request) SELECT id, ?2 FROM tasks WHERE id = ?1",
                params![id, request],
            )
            .map(|n| n > 0)
            .map_err(self.err("asking an MCP task"))
    }

    fn task_requests(&self, id: &str) -> Result<Vec<String>> {
        let mut connection = self.writer();
        let err = self.err("reading an MCP task's requests");
        let tx = connection
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(&err)?;
        let requests = {
            let mut select = tx
                .prepare_cached("SELECT request FROM task_requests WHERE task = ?1 ORDER BY rowid")
                .map_err(&err)?;
            let rows = select
                .query_map(params![id], |row| row.get(0))
                .map_err(&err)?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
                .map_err(&err)?
        };
        if !requests.is_empty() {
            tx.execute("DELETE FROM task_requests WHERE task = ?1", params![id])
                .map_err(&err)?;
        }
        tx.commit().map_err(&err)?;
        Ok(requests)
    }

    fn cache_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.reader()
            .query_row(
                "SELECT text FROM cache WHERE name = ?1 AND expires_ms > ?2",
                params![name, super::now_ms()],
                |row| row.get::<_, String>(0),
            )
            .optional()
            .map(|text| text.map(String::into_bytes))
            .map_err(self.err("reading the op cache"))
    }

    fn cache_put(&self, name: &str, text: &str, expires_ms: i64) -> Result<()> {
        self.writer()
            .execute(
                "INSERT OR REPLACE INTO cache (name, text, expires_ms) VALUES (?1, ?2, ?3)",
                params![name, text, expires_ms],
            )
            .map(drop)
            .map_err(self.err("keeping an op cache entry"))
    }

    fn cache_remove(&self, name: &str) -> Result<()> {
        self.writer()
            .execute("DELETE FROM cache WHERE name = ?1", params![name])
            .map(drop)
            .map_err(self.err("forgetting an op cache entry"))
    }

    fn prune(&self, bounds: Bounds, now_ms: i64) -> Result<usize> {
        let mut connection = self.writer();
        let err = self.err("forgetting old runs");
        let tx = connection.transaction().map_err(&err)?;
        tx.execute("DELETE FROM tasks WHERE expires_ms < ?1", params![now_ms])
            .map_err(&err)?;
        tx.execute("DELETE FROM cache WHERE expires_ms < ?1", params![now_ms])
            .map_err(&err)?;
        tx.execute(
            "DELETE FROM cache WHERE name IN (SELECT name FROM cache ORDER BY expires_ms DESC LIMIT -1 OFFSET ?1)",
            params![super::MAX_CACHE_ENTRIES as i64],
        )
        .map_err(&err)?;
        let gone = prune_in(&tx, bounds, now_ms).map_err(&err)?;
        tx.commit().map_err(&err)?;
        if gone > 0 {
            connection
                .execute_batch("PRAGMA incremental_vacuum;")
                .map_err(&err)?;
        }
        Ok(gone)
    }
}

/// Whether `owner` owns run `id`.
fn owns(tx: &rusqlite::Transaction<'_>, id: &str, owner: &str) -> rusqlite::Result<bool> {
    tx.query_row(
        "SELECT owner = ?2 FROM runs WHERE id = ?1",
        params![id, owner],
        |row| row.get::<_, bool>(0),
    )
    .optional()
    .map(|owns| owns.unwrap_or(false))
}

/// Deletes the finished runs past `bounds` (with their events, checkpoints and keys), in
/// `tx`; how many went.
fn prune_in(
    tx: &rusqlite::Transaction<'_>,
    bounds: Bounds,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    let mut gone = tx.execute(
        "DELETE FROM runs WHERE status != 'running' AND finished_ms < ?1",
        params![now_ms.saturating_sub(bounds.keep_ms)],
    )?;
    let count: i64 = tx.query_row("SELECT COUNT(*) FROM runs", [], |row| row.get(0))?;
    let over = (count.max(0) as usize).saturating_sub(bounds.max_runs);
    if over > 0 {
        gone += tx.execute(
            "DELETE FROM runs WHERE id IN (SELECT id FROM runs WHERE status != 'running' ORDER BY created_ms LIMIT ?1)",
            params![over as i64],
        )?;
    }
    let bytes: i64 = tx.query_row("SELECT COALESCE(SUM(bytes), 0) FROM runs", [], |row| {
        row.get(0)
    })?;
    let mut excess = (bytes.max(0) as u64).saturating_sub(bounds.max_bytes);
    if excess > 0 {
        let oldest: Vec<(String, i64)> = {
            let mut select = tx.prepare(
                "SELECT id, bytes FROM runs WHERE status != 'running' ORDER BY created_ms",
            )?;
            let rows = select.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        for (id, size) in oldest {
            if excess == 0 {
                break;
            }
            gone += tx.execute("DELETE FROM runs WHERE id = ?1", params![id])?;
            excess = excess.saturating_sub(size.max(0) as u64);
        }
    }
    Ok(gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(text: &str) -> Event {
        Event {
            seq: 0,
            kind: "answer".into(),
            json: false,
            op: "EchoOp".into(),
            text: text.into(),
            tolerated: false,
            attempts: 0,
            resumed: false,
        }
    }

    const BOUNDS: Bounds = Bounds {
        keep_ms: 1000,
        max_runs: 10,
        max_bytes: 1 << 20,
    };

    fn new_run(id: &str, key: Option<(&str, u64)>) -> NewRun {
        NewRun {
            id: id.into(),
            flow: "f".into(),
            input: "{}".into(),
            created_ms: 1,
            key: key.map(|(k, h)| (k.to_string(), h)),
            owner: "a".into(),
            subject: "alice".into(),
            lease_until_ms: 10_000,
        }
    }

    #[test]
    fn runs_events_keys_and_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/runs.db");
        let store = Sqlite::open(&path).unwrap();
        assert_eq!(
            store
                .create(&new_run("r1", Some(("k", 7))), BOUNDS)
                .unwrap(),
            Created::New
        );
        assert_eq!(
            store
                .create(&new_run("r2", Some(("k", 8))), BOUNDS)
                .unwrap(),
            Created::Existing {
                id: "r1".into(),
                input: 7
            }
        );
        assert!(store.run("r2").unwrap().is_none());
        store
            .append(
                "r1",
                "a",
                0,
                &[event("a"), event("b")],
                &[(2, "{}".into())],
                20,
                false,
            )
            .unwrap();
        store
            .append("r1", "a", 2, &[event("c")], &[], 30, false)
            .unwrap();
        let texts: Vec<String> = store
            .events("r1", 1, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.text)
            .collect();
        assert_eq!(texts, ["b", "c"]);
        assert_eq!(store.events("r1", 1, 10).unwrap()[1].seq, 2);
        assert_eq!(
            store.checkpoints("r1").unwrap(),
            vec![(2, "{}".to_string())]
        );
        // A second process's connection sees the same runs.
        let other = Sqlite::open(&path).unwrap();
        assert_eq!(other.run("r1").unwrap().unwrap().chunks, 3);
        assert!(other.cancel("r1").unwrap());
        assert_eq!(store.cancelled("a").unwrap(), ["r1"]);
        assert_eq!(other.running().unwrap().len(), 1);
        // A claim with a lease other than the one held loses (the owner renewed).
        assert!(!other.claim("r1", "a", 5, "b", 20_000).unwrap());
        assert!(other.claim("r1", "a", 10_000, "b", 20_000).unwrap());
        assert!(!store.claim("r1", "a", 10_000, "c", 20_000).unwrap());
        assert_eq!(store.run("r1").unwrap().unwrap().resumes, 1);
        // The host that lost the run writes nothing more.
        assert!(!store
            .append("r1", "a", 3, &[event("late")], &[], 40, false)
            .unwrap());
        assert_eq!(store.events("r1", 3, 10).unwrap(), []);
        let end = End {
            status: "completed",
            answer: "\"abc\"".into(),
            error: None,
            failed_ops: "[]".into(),
            finished_ms: 100,
        };
        assert!(!store.finish("r1", "a", &end).unwrap());
        assert!(other.finish("r1", "b", &end).unwrap());
        let bounds = Bounds {
            keep_ms: 1000,
            max_runs: 10,
            max_bytes: 1 << 20,
        };
        assert_eq!(store.prune(bounds, 500).unwrap(), 0);
        assert_eq!(store.prune(bounds, 5000).unwrap(), 1);
        assert!(store.run("r1").unwrap().is_none());
        assert!(store.events("r1", 0, 10).unwrap().is_empty());
        assert!(store.key("f", "k").unwrap().is_none());
    }
}
