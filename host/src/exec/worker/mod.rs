//! Process-isolated ops: op calls run in worker processes (the `flowhost` binary in worker
//! mode, `child.rs`) that load the same plugin library, so a segfault, an abort, a stack
//! overflow, runaway memory or a loop that ignores cancellation ends a worker, not the host.
//! This side keeps a bounded pool of workers per library version, drives one call through the
//! `protocol`, forwards chunks, logs and LLM calls to the caller's [`Host`], and turns a dead
//! worker into an error that names the cause. Knows nothing of flows or transports.

pub(crate) mod child;
pub(crate) mod protocol;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use protocol::Message;

use crate::metrics as m;
use crate::ops::{level_from_number, Host, OpHandle};

/// How a worker's call ended when it did not end well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Error {
    /// The op returned an error (as in process).
    Failed(String),
    /// The worker died or was killed; the message says why.
    Crashed(String),
}

/// Idle workers exit after this long without a call.
pub(crate) const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// `ops.worker_idle_timeout` in milliseconds ([`IDLE_TIMEOUT`] until set).
static IDLE_MS: AtomicU64 = AtomicU64::new(IDLE_TIMEOUT.as_millis() as u64);
/// After a cancel, how long an op has to stop before its worker is killed.
pub(crate) const CANCEL_GRACE: Duration = Duration::from_millis(500);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Which worker can serve a call: the library file, its content hash (a rebuilt library gets
/// new workers; calls in flight finish on the old ones) and the memory limit.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Key {
    library: PathBuf,
    hash: u64,
    memory_mb: Option<u64>,
}

struct Worker {
    key: Key,
    child: Child,
    stdin: BufWriter<ChildStdin>,
    frames: mpsc::Receiver<Option<Message>>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    /// Closed when the stderr reader has read everything the worker wrote.
    stderr_done: mpsc::Receiver<()>,
    /// The worker's address space when it was ready, and the most seen since (KiB, from
    /// /proc; 0 where there is none): a worker that died near its memory cap ran out of it,
    /// even when its last words did not make it to stderr.
    vm_ready_kib: u64,
    vm_peak_kib: u64,
    idle_since: Instant,
}

impl Worker {
    fn spawn(key: &Key) -> Result<Worker, Error> {
        let exe = std::env::current_exe()
            .map_err(|err| Error::Crashed(format!("cannot find the flowhost binary: {err}")))?;
        let mut command = Command::new(exe);
        command
            .arg("__worker")
            .arg(&key.library)
            .arg(format!("{:016x}", key.hash))
            .arg(key.memory_mb.map_or("-".to_string(), |mb| mb.to_string()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = command
            .spawn()
            .map_err(|err| Error::Crashed(format!("cannot start a worker process: {err}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(Error::Crashed("a worker process has no pipes".into()));
        };
        let (tx, frames) = mpsc::channel();
        let pid = child.id();
        std::thread::Builder::new()
            .name(format!("worker-{pid}-out"))
            .spawn(move || {
                let mut reader = BufReader::with_capacity(64 * 1024, stdout);
                loop {
                    match protocol::read(&mut reader) {
                        Ok(Some(message)) => {
                            if tx.send(Some(message)).is_err() {
                                return;
                            }
                        }
                        Ok(None) | Err(_) => {
                            let _ = tx.send(None);
                            return;
                        }
                    }
                }
            })
            .map_err(|err| Error::Crashed(format!("cannot start a reader thread: {err}")))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (stderr_closed, stderr_done) = mpsc::channel::<()>();
        {
            let tail = tail.clone();
            std::thread::Builder::new()
                .name(format!("worker-{pid}-err"))
                .spawn(move || {
                    let _closed_when_done = stderr_closed;
                    for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                        tracing::warn!(worker = pid, "{line}");
                        let mut tail = tail.lock().unwrap_or_else(|p| p.into_inner());
                        if tail.len() == 20 {
                            tail.pop_front();
                        }
                        tail.push_back(line);
                    }
                })
                .map_err(|err| Error::Crashed(format!("cannot start a reader thread: {err}")))?;
        }
        let mut worker = Worker {
            key: key.clone(),
            child,
            stdin: BufWriter::with_capacity(64 * 1024, stdin),
            frames,
            stderr: tail,
            stderr_done,
            vm_ready_kib: 0,
            vm_peak_kib: 0,
            idle_since: Instant::now(),
        };
        match worker.frames.recv_timeout(START_TIMEOUT) {
            Ok(Some(Message::Ready)) => {
                worker.vm_ready_kib = vm_size_kib(pid);
                worker.vm_peak_kib = worker.vm_ready_kib;
                // Its place in `live()` was taken by `Pool::take` before it started.
                metrics::gauge!(m::WORKERS).increment(1.0);
                Ok(worker)
            }
            Ok(Some(Message::LoadFailed(message))) => {
                let _ = worker.child.wait();
                Err(Error::Crashed(format!(
                    "the worker could not load the plugin: {message}"
                )))
            }
            _ => {
                let _ = worker.child.kill();
                let why = worker.exit_reason(None);
                Err(Error::Crashed(format!("a worker did not start: {why}")))
            }
        }
    }

    fn send(&mut self, message: &Message) -> bool {
        protocol::send(&mut self.stdin, message).is_ok()
    }

    /// Why the worker ended, from its exit status and the last lines it wrote to stderr.
    fn exit_reason(&mut self, memory_mb: Option<u64>) -> String {
        let status = self.child.wait();
        // The worker's last words (an allocation failure, a stack overflow) may still be in
        // the pipe: let the reader finish, but not for long (a grandchild could hold it open).
        let _ = self.stderr_done.recv_timeout(Duration::from_secs(1));
        let tail: Vec<String> = self
            .stderr
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        let said = |needle: &str| tail.iter().any(|line| line.contains(needle));
        // It had grown by half its allowance or more when last seen (it grows between our
        // looks, and the cap counts from before the worker loaded its library).
        let near_cap = memory_mb.is_some_and(|mb| {
            self.vm_ready_kib > 0 && self.vm_peak_kib >= self.vm_ready_kib + mb * 1024 / 2
        });
        let signalled = matches!(&status, Ok(status) if {
            use std::os::unix::process::ExitStatusExt;
            status.signal().is_some()
        });
        // Rust's allocation-failure line, or a thread that could not map its stacks
        // ("Cannot allocate memory") once the address space was full.
        let enomem = said("out of memory") || said("Cannot allocate memory");
        if said("memory allocation of")
            || (memory_mb.is_some() && enomem)
            || (near_cap && signalled)
        {
            return match memory_mb {
                Some(mb) => format!("exceeded limits.max_memory_mb ({mb} MiB)"),
                None => "ran out of memory".into(),
            };
        }
        if said("has overflowed its stack") {
            return "stack overflow".into();
        }
        match status {
            Ok(status) => describe(status),
            Err(err) => format!("its exit status is unknown ({err})"),
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(unix)]
fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = match signal {
            libc::SIGSEGV => "SIGSEGV",
            libc::SIGABRT => "SIGABRT",
            libc::SIGKILL => "SIGKILL",
            libc::SIGBUS => "SIGBUS",
            libc::SIGILL => "SIGILL",
            libc::SIGFPE => "SIGFPE",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        };
        return format!("signal {signal} ({name})");
    }
    format!("exited with {status}")
}

#[cfg(not(unix))]
fn describe(status: std::process::ExitStatus) -> String {
    format!("exited with {status}")
}

/// Live worker processes (idle or busy).
fn live() -> &'static AtomicUsize {
    static LIVE: AtomicUsize = AtomicUsize::new(0);
    &LIVE
}

struct Pool {
    idle: Mutex<Vec<Worker>>,
    returned: Condvar,
    max: AtomicUsize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        // Idle workers leave on their own schedule, not only when calls come.
        std::thread::Builder::new()
            .name("worker-reaper".into())
            .spawn(|| loop {
                std::thread::sleep(Duration::from_secs(1));
                pool().reap_idle();
            })
            .ok();
        Pool {
            idle: Mutex::new(Vec::new()),
            returned: Condvar::new(),
            max: AtomicUsize::new(64),
        }
    })
}

/// Bounds the worker processes alive at once (`ops.max_workers`).
pub(crate) fn set_max_workers(max: usize) {
    pool().max.store(max.max(1), Ordering::Relaxed);
}

/// How long an idle worker stays for another call (`ops.worker_idle_timeout`).
pub(crate) fn set_idle_timeout(idle: Duration) {
    IDLE_MS.store(idle.as_millis().max(1) as u64, Ordering::Relaxed);
}

impl Pool {
    fn reap_idle(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let before = idle.len();
        let keep = Duration::from_millis(IDLE_MS.load(Ordering::Relaxed));
        idle.retain(|w| w.idle_since.elapsed() < keep);
        let gone = before - idle.len();
        if gone > 0 {
            live().fetch_sub(gone, Ordering::Relaxed);
            metrics::gauge!(m::WORKERS).decrement(gone as f64);
        }
    }

    /// An idle worker for `key`, or a new one when the bound allows; waits otherwise.
    fn take(&self, key: &Key, host: &dyn Host) -> Result<Worker, Error> {
        loop {
            {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(at) = idle.iter().position(|w| w.key == *key) {
                    return Ok(idle.swap_remove(at));
                }
                if live().load(Ordering::Relaxed) >= self.max.load(Ordering::Relaxed) {
                    // Make room: an idle worker of another library (or version) goes first.
                    if !idle.is_empty() {
                        idle.remove(0);
                        live().fetch_sub(1, Ordering::Relaxed);
                        metrics::gauge!(m::WORKERS).decrement(1.0);
                    } else {
                        let _ = self
                            .returned
                            .wait_timeout(idle, Duration::from_millis(10))
                            .unwrap_or_else(|p| p.into_inner());
                        if host.is_cancelled() {
                            return Err(Error::Failed(
                                "cancelled while waiting for a worker".into(),
                            ));
                        }
                        continue;
                    }
                }
                // Taken before the process starts (under the lock), so that calls starting at
                // once cannot all pass the bound.
                live().fetch_add(1, Ordering::Relaxed);
            }
            let spawned = Worker::spawn(key);
            if spawned.is_err() {
                live().fetch_sub(1, Ordering::Relaxed);
                self.returned.notify_one();
            }
            return spawned;
        }
    }

    fn put(&self, mut worker: Worker) {
        worker.idle_since = Instant::now();
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(worker);
        self.returned.notify_one();
    }

    fn forget(&self, worker: Worker) {
        drop(worker);
        live().fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(m::WORKERS).decrement(1.0);
        self.returned.notify_one();
    }
}

/// How often a call with a memory limit looks at its worker's address space.
const VM_SAMPLE: Duration = Duration::from_millis(10);

/// A process's address space in KiB (`/proc/PID/statm`), or 0 where that cannot be read.
fn vm_size_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|statm| statm.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

/// Runs one op call in a worker process. `host` gets the chunks, logs and LLM calls as if the
/// op ran in process; its cancellation reaches the op (its next `emit` returns false) and an
/// op that does not stop within [`CANCEL_GRACE`] is killed with its worker.
pub(crate) fn call(
    op: &OpHandle,
    args_json: &str,
    context_json: &str,
    host: &dyn Host,
    memory_mb: Option<u64>,
) -> Result<String, Error> {
    let key = Key {
        library: op.library.path.clone(),
        hash: op.library.hash,
        memory_mb,
    };
    let pool = pool();
    let mut worker = pool.take(&key, host)?;
    let call = Message::Call {
        op: op.name.to_string(),
        args: args_json.to_string(),
        context: context_json.to_string(),
    };
    if !worker.send(&call) {
        let why = worker.exit_reason(memory_mb);
        pool.forget(worker);
        return Err(Error::Crashed(why));
    }
    let mut cancel_sent: Option<Instant> = None;
    let mut vm_seen = Instant::now();
    let cancel = |worker: &mut Worker, cancel_sent: &mut Option<Instant>| {
        if cancel_sent.is_none() {
            *cancel_sent = Some(Instant::now());
            worker.send(&Message::Cancel);
        }
    };
    loop {
        let frame = match worker.frames.recv_timeout(Duration::from_millis(2)) {
            Ok(frame) => frame,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Not every 2 ms tick: a /proc read each 10 ms is enough to see a hog grow.
                if memory_mb.is_some() && vm_seen.elapsed() >= VM_SAMPLE {
                    vm_seen = Instant::now();
                    let vm = vm_size_kib(worker.child.id());
                    worker.vm_peak_kib = worker.vm_peak_kib.max(vm);
                }
                if host.is_cancelled() {
                    cancel(&mut worker, &mut cancel_sent);
                }
                if cancel_sent.is_some_and(|at| at.elapsed() > CANCEL_GRACE) {
                    let _ = worker.child.kill();
                    let _ = worker.child.wait();
                    pool.forget(worker);
                    metrics::counter!(m::WORKER_CRASHES).increment(1);
                    return Err(Error::Crashed(format!(
                        "did not stop within {} ms of being cancelled; its worker was killed",
                        CANCEL_GRACE.as_millis()
                    )));
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
        };
        match frame {
            Some(Message::Chunk { kind, json, text }) => {
                if !host.emit(kind, &text, json) {
                    cancel(&mut worker, &mut cancel_sent);
                }
            }
            Some(Message::Log { level, text }) => host.log(level_from_number(level), &text),
            Some(Message::ServiceCall(request)) => {
                let (ok, text) = serve_llm(&mut worker, host, &request);
                worker.send(&Message::ServiceDone { ok, text });
            }
            // The op asks the client (or the LLM service) through the host; it waits, so
            // nothing else comes from the worker meanwhile.
            Some(Message::NamedService { service, request }) => {
                let (ok, text) = match service.as_str() {
                    child::SUB_OPS => (true, host.sub_ops()),
                    child::CALL_SUB_OPS => {
                        let request: serde_json::Value =
                            serde_json::from_str(&request).unwrap_or_default();
                        let calls = request["calls"].as_str().unwrap_or("[]");
                        let forward = request["forward"].as_bool().unwrap_or(false);
                        (true, host.call_sub_ops(calls, forward))
                    }
                    _ => match host.call(&service, &request) {
                        Ok(text) => (true, text),
                        Err(message) => (false, message),
                    },
                };
                worker.send(&Message::ServiceDone { ok, text });
            }
            Some(Message::Done { ok, text }) => {
                pool.put(worker);
                return if ok {
                    Ok(text)
                } else {
                    Err(Error::Failed(text))
                };
            }
            Some(_) => {}
            None => {
                let why = worker.exit_reason(memory_mb);
                pool.forget(worker);
                metrics::counter!(m::WORKER_CRASHES).increment(1);
                tracing::warn!(op = op.name, "op worker died: {why}");
                return Err(Error::Crashed(why));
            }
        }
    }
}

/// Runs an LLM call for the worker's op, streaming its deltas back; stops when the op says so.
fn serve_llm(worker: &mut Worker, host: &dyn Host, request: &str) -> (bool, String) {
    let worker = std::cell::RefCell::new(worker);
    let mut on_chunk = |kind: u8, text: &str, json: bool| {
        let mut worker = worker.borrow_mut();
        // While the LLM streams, the op forwards deltas as chunks and may log or ask to stop.
        while let Ok(Some(frame)) = worker.frames.try_recv() {
            match frame {
                Message::ServiceStop => return false,
                Message::Chunk { kind, json, text } if !host.emit(kind, &text, json) => {
                    worker.send(&Message::Cancel);
                }
                Message::Log { level, text } => host.log(level_from_number(level), &text),
                _ => {}
            }
        }
        worker.send(&Message::ServiceChunk {
            kind,
            json,
            text: text.to_string(),
        })
    };
    match host.chat_stream(request, &mut on_chunk) {
        Ok(text) => (true, text),
        Err(message) => (false, message),
    }
}
