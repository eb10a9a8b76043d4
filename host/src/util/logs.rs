//! Log lines to stderr a millisecond at a time. A line written straight to stderr is a
//! `write` per line, and on a pipe (a container runtime, systemd, a supervisor, an MCP client
//! reading stderr) a wake-up of the reader per line: at the default `info` level, one request
//! log line per request, that cost a busy host more than a tenth of its requests per second
//! (BENCHMARKS.md, issue 21). While the host serves HTTP (`start`, from `app/serve.rs`), a
//! line is appended to a buffer, and a thread (`flowhost-logs`) writes what gathered one
//! millisecond after the first line of a batch, in writes of whole lines that a pipe takes
//! whole. Other commands, stdio serving and worker processes write each line at once (their
//! lines are few; a stdio host's client may end it with a signal nothing catches).
//! What else the host prints to stderr while it serves goes through here as well ([`print`]),
//! so it stays in order with the log lines.
//!
//! Why not tracing-appender's `non_blocking`: it sends each line through a channel (a buffer
//! per line) to a worker that wakes for each line it is sent while idle, and it drops lines
//! when its channel is full. Here the thread is woken once per batch, nothing is dropped:
//! when the reader of stderr falls a megabyte behind, the writing thread writes itself, in
//! order, and waits for the reader as an unbuffered stderr would. When serving ends (the
//! guard `start` returns) what is left is written, and later lines go straight out.

use std::io::Write;
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

/// How long the thread lets lines gather before one write.
const LINGER: Duration = Duration::from_millis(1);
/// Lines waiting beyond this are written by the thread that adds one (stderr's reader is behind).
const CAP: usize = 1 << 20;
/// What a pipe takes in one piece (POSIX `PIPE_BUF` on Linux): a write of whole lines up to
/// this size is never interleaved with another process's or thread's write to stderr.
const PIPE_BUF: usize = 4096;

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Held while a batch is written, taken while `state` is held: batches reach stderr in
    /// the order they were taken.
    out: Mutex<()>,
}

#[derive(Default)]
struct State {
    lines: Vec<u8>,
    /// The thread waits for a first line (the next one wakes it).
    sleeping: bool,
    /// No thread (not started, or `flush` at exit): lines are written at once.
    direct: bool,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| Shared {
        state: Mutex::new(State {
            direct: true,
            ..State::default()
        }),
        wake: Condvar::new(),
        out: Mutex::new(()),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The log's writer (`tracing_subscriber`'s `with_writer`, in `main.rs`): every line goes
/// through [`start`]'s thread while it runs, straight to stderr otherwise.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogWriter;

/// Writes what is left when dropped, and ends the batching.
#[must_use = "dropping the guard writes the lines left and ends the batching"]
pub(crate) struct Guard(());

impl Drop for Guard {
    fn drop(&mut self) {
        flush();
    }
}

/// Starts the thread that writes batches; lines written before go straight to stderr, and so
/// do they all if the thread cannot start. Once per process. A panic writes the lines waiting
/// before its message.
pub(crate) fn start() -> Guard {
    let shared = shared();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        write_waiting();
        previous(info);
    }));
    let started = std::thread::Builder::new()
        .name("flowhost-logs".into())
        .spawn(move || write_batches(shared));
    if started.is_ok() {
        lock(&shared.state).direct = false;
    }
    Guard(())
}

/// Text for stderr (a banner) in its place among the log lines; a newline is added.
pub(crate) fn print(text: &str) {
    let mut line = String::with_capacity(text.len() + 1);
    line.push_str(text);
    line.push('\n');
    add(line.as_bytes());
}

/// Writes the lines waiting now, unless the panicking thread holds the buffer.
fn write_waiting() {
    let shared = shared();
    if let Ok(state) = shared.state.try_lock() {
        write_out(shared, state, b"");
    }
}

/// Writes the lines waiting now, and every later one at once (serving ended).
fn flush() {
    let shared = shared();
    let mut state = lock(&shared.state);
    state.direct = true;
    write_out(shared, state, b"");
}

/// Writes the lines waiting in `state`, then `more`, in their place: `out` is taken before
/// `state` is let go, so no batch taken later reaches stderr first.
fn write_out(shared: &Shared, mut state: MutexGuard<'_, State>, more: &[u8]) {
    let waiting = std::mem::take(&mut state.lines);
    let out = lock(&shared.out);
    drop(state);
    write(&waiting);
    write(more);
    drop(out);
}

/// Writes whole lines in pieces of at most [`PIPE_BUF`] that end at a line's end, so nothing
/// else written to stderr (a plugin's print, cargo's output under `--dev`, a panic) lands
/// inside a line; a single longer line goes alone.
fn write(bytes: &[u8]) {
    let mut stderr = std::io::stderr().lock();
    let mut rest = bytes;
    while !rest.is_empty() {
        let piece = if rest.len() <= PIPE_BUF {
            rest.len()
        } else {
            match rest[..PIPE_BUF].iter().rposition(|&b| b == b'\n') {
                Some(at) => at + 1,
                None => rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |at| at + 1),
            }
        };
        // Nowhere to report a failed write of the log to.
        let _ = stderr.write_all(&rest[..piece]);
        rest = &rest[piece..];
    }
}

fn add(line: &[u8]) {
    let shared = shared();
    let mut state = lock(&shared.state);
    if state.direct || state.lines.len() + line.len() > CAP {
        write_out(shared, state, line);
        return;
    }
    let wake = state.sleeping && state.lines.is_empty();
    state.lines.extend_from_slice(line);
    drop(state);
    if wake {
        shared.wake.notify_one();
    }
}

/// The thread: waits for a first line, lets the next ones gather for [`LINGER`], writes them
/// all in one go.
fn write_batches(shared: &Shared) {
    let mut batch = Vec::new();
    loop {
        {
            let mut state = lock(&shared.state);
            while state.lines.is_empty() {
                state.sleeping = true;
                state = shared.wake.wait(state).unwrap_or_else(|p| p.into_inner());
                state.sleeping = false;
            }
        }
        std::thread::sleep(LINGER);
        let mut state = lock(&shared.state);
        std::mem::swap(&mut state.lines, &mut batch);
        let out = lock(&shared.out);
        drop(state);
        write(&batch);
        drop(out);
        batch.clear();
        // A burst's buffer is not kept for good.
        batch.shrink_to(64 * 1024);
    }
}

/// One line (`tracing_subscriber` writes a whole formatted line in one `write_all`).
pub struct LogLine;

impl Write for LogLine {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        add(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_in_order_until_flushed_then_go_straight_out() {
        // The buffer's contents, without the thread (the integration tests drive the real
        // thread through a host's stderr: `http::batched_log_lines_*`).
        let shared = shared();
        {
            let mut state = lock(&shared.state);
            state.direct = false;
            state.lines.clear();
        }
        let mut line = LogLine;
        line.write_all(b"one\n").expect("buffered");
        line.write_all(b"two\n").expect("buffered");
        assert_eq!(lock(&shared.state).lines, b"one\ntwo\n");
        // Flushed: later lines go straight out, nothing waits.
        flush();
        line.write_all(b"three\n").expect("direct");
        assert!(lock(&shared.state).lines.is_empty());
    }
}
