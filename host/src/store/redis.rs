//! The shared store: one Redis (`store.url=redis://HOST:PORT/DB`) for replicas on several
//! machines. A run is a hash, its events a Redis stream whose entry ids are the events'
//! places (`seq+1`-0, so `XRANGE` reads from any place and `XREAD BLOCK` follows it live), its
//! checkpoints a list, an idempotency key a string made with the run in one Lua script; the
//! running runs are a set and every run is in a sorted set by creation time, which pruning
//! walks. Compare-and-set steps (start, cancel, take over, end) are Lua scripts and appends
//! are under `WATCH`, so they are atomic and fenced.
//!
//! Long because it is one implementation of the store's interface (runs, events, tasks, the
//! op cache), each method a short sequence of Redis commands over the one connection helper.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use redis::{Commands as _, Connection};

use super::{Backend, Bounds, Created, End, Event, Kept, NewRun, Result, RunRow, TaskRow};

const PREFIX: &str = "flowhost:";
const TOLERATED: i64 = 1;
const RESUMED: i64 = 2;

fn run_key(id: &str) -> String {
    format!("{PREFIX}run:{id}")
}
fn events_key(id: &str) -> String {
    format!("{PREFIX}events:{id}")
}
fn checkpoints_key(id: &str) -> String {
    format!("{PREFIX}checkpoints:{id}")
}
fn task_key(id: &str) -> String {
    format!("{PREFIX}task:{id}")
}
fn task_requests_key(id: &str) -> String {
    format!("{PREFIX}task-requests:{id}")
}
fn cache_key(name: &str) -> String {
    format!("{PREFIX}cache:{name}")
}
fn bucket_key(subject: &str) -> String {
    format!("{PREFIX}bucket:{subject}")
}
fn idempotency_key(flow: &str, key: &str) -> String {
    format!("{PREFIX}key:{}:{flow}:{key}", flow.len())
}
const RUNNING: &str = "flowhost:running";
const ALL: &str = "flowhost:runs";

/// The Redis store.
pub(crate) struct Redis {
    url: String,
    client: redis::Client,
    /// Calls share one connection; readers that block (`XREAD BLOCK`) take their own.
    connection: Mutex<Option<Connection>>,
    blocking: Mutex<Vec<Connection>>,
}

impl Redis {
    /// Connects to `url` (and checks that the server answers).
    pub(crate) fn open(url: &str) -> Result<Redis> {
        let shown = redact(url);
        let client = redis::Client::open(url)
            .map_err(|err| format!("store.url {shown} is not a Redis URL: {err}"))?;
        let store = Redis {
            url: shown,
            client,
            connection: Mutex::new(None),
            blocking: Mutex::new(Vec::new()),
        };
        store.with("connecting", |con| redis::cmd("PING").query::<String>(con))?;
        Ok(store)
    }

    fn connect(&self) -> redis::RedisResult<Connection> {
        let con = self
            .client
            .get_connection_with_timeout(Duration::from_secs(5))?;
        con.set_read_timeout(Some(Duration::from_secs(10)))?;
        con.set_write_timeout(Some(Duration::from_secs(10)))?;
        Ok(con)
    }

    /// Runs `call` on the shared connection, connecting (again) when needed; a call that
    /// failed for a dropped connection is made once more on a new one.
    fn with<T>(
        &self,
        what: &str,
        mut call: impl FnMut(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T> {
        let mut slot = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        let mut last = None;
        for _ in 0..2 {
            if slot.is_none() {
                match self.connect() {
                    Ok(con) => *slot = Some(con),
                    Err(err) => {
                        last = Some(err);
                        continue;
                    }
                }
            }
            let Some(con) = slot.as_mut() else { continue };
            match call(con) {
                Ok(value) => return Ok(value),
                Err(err) => {
                    let retry = err.is_io_error() || err.is_connection_dropped();
                    *slot = None;
                    if !retry {
                        return Err(format!("run store {}: {what}: {err}", self.url));
                    }
                    last = Some(err);
                }
            }
        }
        Err(format!(
            "run store {}: {what}: {}",
            self.url,
            last.map_or_else(|| "no connection".to_string(), |e| e.to_string())
        ))
    }
}

/// The URL without its password.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn row_of(id: &str, fields: &HashMap<String, String>) -> Option<RunRow> {
    let text = |name: &str| fields.get(name).cloned();
    let int = |name: &str| {
        fields
            .get(name)
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0)
    };
    Some(RunRow {
        id: id.to_string(),
        flow: text("flow")?,
        input: text("input").unwrap_or_default(),
        created_ms: int("created_ms"),
        status: text("status")?,
        owner: text("owner").unwrap_or_default(),
        lease_until_ms: int("lease_ms"),
        cancel_requested: int("cancel") != 0,
        resumes: int("resumes").max(0) as u32,
        chunks: int("chunks").max(0) as u64,
        bytes: int("bytes").max(0) as u64,
        truncated: int("truncated") != 0,
        answer: text("answer"),
        error: text("error"),
        failed_ops: text("failed_ops"),
        finished_ms: fields.get("finished_ms").and_then(|v| v.parse().ok()),
        subject: text("subject").unwrap_or_default(),
    })
}

fn event_of(fields: &[String]) -> Event {
    let mut map = HashMap::new();
    for pair in fields.chunks(2) {
        if let [name, value] = pair {
            map.insert(name.as_str(), value.as_str());
        }
    }
    let flags: i64 = map.get("f").and_then(|v| v.parse().ok()).unwrap_or(0);
    Event {
        seq: 0,
        kind: map.get("k").copied().unwrap_or("think").to_string(),
        json: map.get("j") == Some(&"1"),
        op: map.get("o").copied().unwrap_or_default().to_string(),
        text: map.get("t").copied().unwrap_or_default().to_string(),
        tolerated: flags & TOLERATED != 0,
        resumed: flags & RESUMED != 0,
        attempts: map.get("a").and_then(|v| v.parse::<u8>().ok()).unwrap_or(0),
    }
}

type Entries = Vec<(String, Vec<String>)>;

const CANCEL: &str = "if redis.call('HGET', KEYS[1], 'status') == 'running' then redis.call('HSET', KEYS[1], 'cancel', '1') return 1 end return 0";
const CLAIM: &str = "if redis.call('HGET', KEYS[1], 'status') == 'running' and redis.call('HGET', KEYS[1], 'owner') == ARGV[1] and redis.call('HGET', KEYS[1], 'lease_ms') == ARGV[4] then redis.call('HSET', KEYS[1], 'owner', ARGV[2], 'lease_ms', ARGV[3]) redis.call('HINCRBY', KEYS[1], 'resumes', 1) return 1 end return 0";
/// ARGV: owner, until, the run key prefix, then the ids.
const RENEW: &str = "for i = 4, #ARGV do local k = ARGV[3] .. ARGV[i] if redis.call('HGET', k, 'owner') == ARGV[1] and redis.call('HGET', k, 'status') == 'running' then redis.call('HSET', k, 'lease_ms', ARGV[2]) end end return 0";
/// KEYS: the run; ARGV: owner, then field/value pairs. Only the owner ends a run.
const FINISH: &str = "if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return 0 end redis.call('HSET', KEYS[1], unpack(ARGV, 2)) redis.call('SREM', KEYS[2], ARGV[#ARGV]) return 1";
/// KEYS: the idempotency key, the run, the running set, every run; ARGV: the key's value,
/// the run id, its creation time, then the run's field/value pairs. The key and the run are
/// made together; a key taken by another run answers that run (ours, on a retry, is new).
const CREATE: &str = "local taken = redis.call('GET', KEYS[1]) if taken and taken ~= ARGV[1] then return taken end redis.call('SET', KEYS[1], ARGV[1]) redis.call('HSET', KEYS[2], unpack(ARGV, 4)) redis.call('SADD', KEYS[3], ARGV[2]) redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2]) return false";

impl Backend for Redis {
    fn describe(&self) -> String {
        format!("Redis at {}", self.url)
    }

    fn create(&self, run: &NewRun, bounds: Bounds) -> Result<Created> {
        let created = self.start(run)?;
        // Past `max_runs`, at once; retention and bytes are the keeper's (every second): a
        // walk over every run on each start would cost more than the run.
        let count: usize = self.with("counting runs", |con| con.zcard(ALL))?;
        if created == Created::New && count > bounds.max_runs {
            self.prune(bounds, run.created_ms)?;
        }
        Ok(created)
    }

    fn key(&self, flow: &str, key: &str) -> Result<Option<(String, u64)>> {
        let name = idempotency_key(flow, key);
        let taken: Option<String> =
            self.with("reading an idempotency key", |con| con.get(&name))?;
        Ok(taken.as_deref().and_then(|t| {
            let (id, input) = t.split_once('\t')?;
            Some((id.to_string(), input.parse().ok()?))
        }))
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
        let key = run_key(id);
        self.with("keeping a run's events", |con| {
            // Fenced: WATCH the run, check its owner, write in MULTI (retried if it changed).
            redis::transaction(con, &[&key], |con, pipe| {
                let (holder, chunks): (Option<String>, Option<u64>) = redis::cmd("HMGET")
                    .arg(&key)
                    .arg(&["owner", "chunks"])
                    .query(con)?;
                if holder.as_deref() != Some(owner) {
                    redis::cmd("UNWATCH").query::<()>(con)?;
                    return Ok(Some(false));
                }
                // A batch already kept (its reply was lost, and `with` tries again): done.
                if !events.is_empty() && chunks.unwrap_or(0) >= first + events.len() as u64 {
                    redis::cmd("UNWATCH").query::<()>(con)?;
                    return Ok(Some(true));
                }
                for (i, event) in events.iter().enumerate() {
                    let flags = if event.tolerated { TOLERATED } else { 0 }
                        | if event.resumed { RESUMED } else { 0 };
                    pipe.cmd("XADD")
                        .arg(events_key(id))
                        .arg(format!("{}-0", first + i as u64 + 1))
                        .arg("k")
                        .arg(&event.kind)
                        .arg("j")
                        .arg(if event.json { "1" } else { "0" })
                        .arg("o")
                        .arg(&event.op)
                        .arg("t")
                        .arg(&event.text)
                        .arg("f")
                        .arg(flags)
                        .arg("a")
                        .arg(event.attempts)
                        .ignore();
                }
                for (seq, body) in checkpoints {
                    pipe.rpush(checkpoints_key(id), format!("{seq}\t{body}"))
                        .ignore();
                }
                pipe.hset_multiple(
                    &key,
                    &[
                        ("chunks", (first + events.len() as u64).to_string()),
                        ("bytes", bytes.to_string()),
                        ("truncated", u8::from(truncated).to_string()),
                    ],
                )
                .ignore()
                .hget(&key, "owner");
                let done: Option<(String,)> = pipe.query(con)?;
                Ok(done.map(|_| true))
            })
        })
    }

    fn finish(&self, id: &str, owner: &str, end: &End) -> Result<bool> {
        let script = redis::Script::new(FINISH);
        let mut fields = vec![
            ("status", end.status.to_string()),
            ("answer", end.answer.clone()),
            ("failed_ops", end.failed_ops.clone()),
            ("finished_ms", end.finished_ms.to_string()),
        ];
        if let Some(error) = &end.error {
            fields.push(("error", error.clone()));
        }
        let done: i64 = self.with("recording a run's end", |con| {
            let mut call = script.key(run_key(id));
            call.key(RUNNING).arg(owner);
            for (name, value) in &fields {
                call.arg(*name).arg(value);
            }
            // Last, the pair (`id`, the id): HSET keeps it, SREM reads the id from the end.
            call.arg("id").arg(id);
            call.invoke(con)
        })?;
        Ok(done == 1)
    }

    fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let fields: HashMap<String, String> =
            self.with("reading a run", |con| con.hgetall(run_key(id)))?;
        Ok(row_of(id, &fields))
    }

    fn events(&self, id: &str, from: u64, max: usize) -> Result<Vec<Event>> {
        let entries: Entries = self.with("reading a run's events", |con| {
            redis::cmd("XRANGE")
                .arg(events_key(id))
                .arg(format!("{}-0", from + 1))
                .arg("+")
                .arg("COUNT")
                .arg(max.min(1 << 30))
                .query(con)
        })?;
        Ok(entries
            .iter()
            .map(|(entry, fields)| Event {
                seq: entry
                    .split('-')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .map_or(0, |n| n.saturating_sub(1)),
                ..event_of(fields)
            })
            .collect())
    }

    fn put_task(&self, task: &TaskRow) -> Result<()> {
        let ttl = (task.expires_ms - task.updated_ms).max(1000);
        self.with("keeping an MCP task", |con| {
            redis::pipe()
                .atomic()
                .hset_multiple(
                    task_key(&task.id),
                    &[
                        ("owner", task.owner.clone()),
                        ("state", task.state.clone()),
                        ("updated_ms", task.updated_ms.to_string()),
                        ("expires_ms", task.expires_ms.to_string()),
                    ],
                )
                .ignore()
                .pexpire(task_key(&task.id), ttl)
                .ignore()
                .query::<()>(con)
        })
    }

    fn task(&self, id: &str) -> Result<Option<TaskRow>> {
        let fields: HashMap<String, String> =
            self.with("reading an MCP task", |con| con.hgetall(task_key(id)))?;
        let int = |name: &str| fields.get(name).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(fields.get("state").map(|state| TaskRow {
            id: id.to_string(),
            owner: fields.get("owner").cloned().unwrap_or_default(),
            state: state.clone(),
            updated_ms: int("updated_ms"),
            expires_ms: int("expires_ms"),
        }))
    }

    fn ask_task(&self, id: &str, request: &str) -> Result<bool> {
        if self.task(id)?.is_none() {
            return Ok(false);
        }
        self.with("asking an MCP task", |con| {
            redis::pipe()
                .rpush(task_requests_key(id), request)
                .ignore()
                .pexpire(task_requests_key(id), 3_600_000)
                .ignore()
                .query::<()>(con)
        })?;
        Ok(true)
    }

    fn task_requests(&self, id: &str) -> Result<Vec<String>> {
        let (requests,): (Vec<String>,) = self.with("reading an MCP task's requests", |con| {
            redis::pipe()
                .atomic()
                .lrange(task_requests_key(id), 0, -1)
                .del(task_requests_key(id))
                .ignore()
                .query(con)
        })?;
        Ok(requests)
    }

    fn cache_get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.with("reading the op cache", |con| con.get(cache_key(name)))
    }

    fn cache_put(&self, name: &str, text: &str, expires_ms: i64) -> Result<()> {
        // Redis forgets it when it expires (entries are bounded by time here, not count).
        let left = (expires_ms - super::now_ms()).max(1) as u64;
        self.with("keeping an op cache entry", |con| {
            con.pset_ex(cache_key(name), text, left)
        })
    }

    fn cache_remove(&self, name: &str) -> Result<()> {
        self.with("forgetting an op cache entry", |con| {
            con.del(cache_key(name))
        })
    }

    fn shares_buckets(&self) -> bool {
        true
    }

    fn take_token(&self, key: &str, capacity: f64, per_second: f64) -> Result<Duration> {
        let script = redis::Script::new(TAKE_TOKEN);
        let wait_us: i64 = self.with("taking a rate-limit token", |con| {
            script
                .key(bucket_key(key))
                .arg(capacity)
                .arg(per_second)
                .invoke(con)
        })?;
        Ok(Duration::from_micros(wait_us.max(0) as u64))
    }

    fn wait(&self, id: &str, from: u64, at_most: Duration) -> Result<()> {
        let pooled = self
            .blocking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut con = match pooled {
            Some(con) => con,
            None => self
                .connect()
                .map_err(|err| format!("run store {}: following a run: {err}", self.url))?,
        };
        // Entries after `from`'s id-1: the next event to read has id from+1.
        let read: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(at_most.as_millis().max(1) as u64)
            .arg("STREAMS")
            .arg(events_key(id))
            .arg(format!("{from}-0"))
            .query(&mut con);
        match read {
            Ok(_) => {
                self.blocking
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(con);
                Ok(())
            }
            Err(err) => Err(format!("run store {}: following a run: {err}", self.url)),
        }
    }

    fn checkpoints(&self, id: &str) -> Result<Vec<Kept>> {
        let items: Vec<String> = self.with("reading a run's checkpoints", |con| {
            con.lrange(checkpoints_key(id), 0, -1)
        })?;
        Ok(items
            .into_iter()
            .filter_map(|item| {
                let (seq, body) = item.split_once('\t')?;
                Some((seq.parse().ok()?, body.to_string()))
            })
            .collect())
    }

    fn cancel(&self, id: &str) -> Result<bool> {
        let script = redis::Script::new(CANCEL);
        let done: i64 = self.with("asking for a cancel", |con| {
            script.key(run_key(id)).invoke(con)
        })?;
        Ok(done == 1)
    }

    fn cancelled(&self, owner: &str) -> Result<Vec<String>> {
        // Ten times a second on every replica: only the fields it needs.
        let ids: Vec<String> = self.with("reading cancel requests", |con| con.smembers(RUNNING))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(Option<String>, Option<String>, Option<String>)> =
            self.with("reading cancel requests", |con| {
                let mut pipe = redis::pipe();
                for id in &ids {
                    pipe.cmd("HMGET")
                        .arg(run_key(id))
                        .arg(&["owner", "cancel", "status"]);
                }
                pipe.query(con)
            })?;
        Ok(ids
            .into_iter()
            .zip(rows)
            .filter(|(_, (who, cancel, status))| {
                who.as_deref() == Some(owner)
                    && cancel.as_deref() == Some("1")
                    && status.as_deref() == Some("running")
            })
            .map(|(id, _)| id)
            .collect())
    }

    fn renew(&self, owner: &str, ids: &[String], until_ms: i64) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let script = redis::Script::new(RENEW);
        self.with("renewing leases", |con| {
            let mut call = script.arg(owner);
            call.arg(until_ms).arg(format!("{PREFIX}run:"));
            for id in ids {
                call.arg(id);
            }
            call.invoke::<i64>(con)
        })
        .map(drop)
    }

    fn release(&self, owner: &str, id: Option<&str>) -> Result<()> {
        let ids = match id {
            Some(id) => vec![id.to_string()],
            None => self.with("giving up leases", |con| con.smembers(RUNNING))?,
        };
        self.renew(owner, &ids, 0)
    }

    fn running(&self) -> Result<Vec<RunRow>> {
        let ids: Vec<String> = self.with("reading running runs", |con| con.smembers(RUNNING))?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<HashMap<String, String>> = self.with("reading running runs", |con| {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.hgetall(run_key(id));
            }
            pipe.query(con)
        })?;
        Ok(ids
            .iter()
            .zip(&rows)
            .filter_map(|(id, fields)| row_of(id, fields))
            .filter(|row| row.status == "running")
            .collect())
    }

    fn claim(
        &self,
        id: &str,
        from: &str,
        lease_ms: i64,
        owner: &str,
        until_ms: i64,
    ) -> Result<bool> {
        let script = redis::Script::new(CLAIM);
        let done: i64 = self.with("taking a run over", |con| {
            script
                .key(run_key(id))
                .arg(from)
                .arg(owner)
                .arg(until_ms)
                .arg(lease_ms)
                .invoke(con)
        })?;
        Ok(done == 1)
    }

    fn prune(&self, bounds: Bounds, now_ms: i64) -> Result<usize> {
        let ids: Vec<String> = self.with("forgetting old runs", |con| con.zrange(ALL, 0, -1))?;
        if ids.is_empty() {
            return Ok(0);
        }
        type Fields = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        let rows: Vec<Fields> = self.with("forgetting old runs", |con| {
            let mut pipe = redis::pipe();
            for id in &ids {
                pipe.cmd("HMGET")
                    .arg(run_key(id))
                    .arg(&["status", "finished_ms", "bytes", "key"]);
            }
            pipe.query(con)
        })?;
        // Oldest first, as `ids` are.
        let mut gone: Vec<(&str, String)> = Vec::new();
        let mut count = rows.iter().filter(|r| r.0.is_some()).count();
        let parse = |v: &Option<String>| v.as_deref().and_then(|v| v.parse::<i64>().ok());
        let mut bytes: u64 = rows
            .iter()
            .map(|r| parse(&r.2).unwrap_or(0).max(0) as u64)
            .sum();
        for (id, (status, finished, size, key)) in ids.iter().zip(&rows) {
            let Some(status) = status else {
                gone.push((id, String::new())); // The hash was deleted.
                continue;
            };
            let expired =
                parse(finished).is_some_and(|at| at < now_ms.saturating_sub(bounds.keep_ms));
            if status != "running"
                && (expired || count > bounds.max_runs || bytes > bounds.max_bytes)
            {
                count -= 1;
                bytes = bytes.saturating_sub(parse(size).unwrap_or(0).max(0) as u64);
                gone.push((id, key.clone().unwrap_or_default()));
            }
        }
        if gone.is_empty() {
            return Ok(0);
        }
        self.with("forgetting old runs", |con| {
            let mut pipe = redis::pipe();
            for (id, key) in &gone {
                pipe.del(run_key(id))
                    .ignore()
                    .del(events_key(id))
                    .ignore()
                    .del(checkpoints_key(id))
                    .ignore()
                    .zrem(ALL, *id)
                    .ignore()
                    .srem(RUNNING, *id)
                    .ignore();
                if !key.is_empty() {
                    pipe.del(key).ignore();
                }
            }
            pipe.query::<()>(con)
        })?;
        Ok(gone.len())
    }
}

impl Redis {
    /// Keeps a new run (see [`Backend::create`]).
    fn start(&self, run: &NewRun) -> Result<Created> {
        let fields = [
            ("flow", run.flow.clone()),
            ("input", run.input.clone()),
            ("created_ms", run.created_ms.to_string()),
            ("status", "running".into()),
            ("owner", run.owner.clone()),
            ("lease_ms", run.lease_until_ms.to_string()),
            ("subject", run.subject.clone()),
            (
                "key",
                run.key
                    .as_ref()
                    .map(|(k, _)| idempotency_key(&run.flow, k))
                    .unwrap_or_default(),
            ),
        ];
        let Some((key, input)) = &run.key else {
            self.with("starting a run", |con| {
                redis::pipe()
                    .atomic()
                    .hset_multiple(run_key(&run.id), &fields)
                    .ignore()
                    .sadd(RUNNING, &run.id)
                    .ignore()
                    .zadd(ALL, &run.id, run.created_ms)
                    .ignore()
                    .query::<()>(con)
            })?;
            return Ok(Created::New);
        };
        let script = redis::Script::new(CREATE);
        let taken: Option<String> = self.with("starting a run", |con| {
            let mut call = script.key(idempotency_key(&run.flow, key));
            call.key(run_key(&run.id))
                .key(RUNNING)
                .key(ALL)
                .arg(format!("{}\t{input}", run.id))
                .arg(&run.id)
                .arg(run.created_ms);
            for (name, value) in &fields {
                call.arg(*name).arg(value);
            }
            call.invoke(con)
        })?;
        Ok(match taken.as_deref().and_then(|t| t.split_once('\t')) {
            Some((id, input)) => Created::Existing {
                id: id.to_string(),
                input: input.parse().unwrap_or(0),
            },
            None => Created::New,
        })
    }
}

/// A token bucket kept by Redis (its clock, so replicas' clocks do not matter): refill since
/// the last take, take one if there is one; returns 0 or the microseconds until the next. The
/// bucket expires once it would be full again.
const TAKE_TOKEN: &str = r"
local capacity = tonumber(ARGV[1])
local rate = tonumber(ARGV[2]) / 1000000
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local kept = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(kept[1]) or capacity
local at = tonumber(kept[2]) or now
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate)
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
else
  wait = math.ceil((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate / 1000) + 1000)
return wait
";

#[cfg(test)]
mod tests {
    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            super::redact("redis://user:secret@db:6379/0"),
            "redis://…@db:6379/0"
        );
        assert_eq!(super::redact("redis://db:6379/0"), "redis://db:6379/0");
    }
}
