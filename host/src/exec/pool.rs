//! The op pool: the threads that run op calls which do not run inline, and the watch that
//! lowers the priority of a call burning CPU in silence.
//!
//! Pool threads start at the runtime's priority (nice 0). A call that goes [`QUIET`] without
//! a chunk or a wait on the host while using CPU (a regex or a parser meeting an unlucky
//! input) is moved to nice 19 by the watch thread, so runtime workers (transports, probes,
//! inline calls) take a core from it whenever they want one; when the call ends its thread
//! goes back to nice 0, or, where the process may not raise a priority again (an unprivileged
//! one, `RLIMIT_NICE` 0), the thread ends and a fresh one takes its place. Streaming ops, which
//! emit or wait all the time, keep their priority: at nice 19 a stream's producer lost the
//! cores to its own consumer and client (a 1M-chunk stream 2-7× slower, BENCHMARKS.md).
//!
//! Why not tokio's blocking pool (of a runtime of its own, as before): a thread that cannot
//! get its priority back must leave, and tokio's pool has no way to end one thread.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A call this long without a chunk or a host wait, using at least [`QUIET_CPU`] of CPU in
/// that time, is lowered to [`LOW_NICE`].
const QUIET: Duration = Duration::from_millis(10);
/// CPU time within [`QUIET`] that makes a quiet call a burning one (one in five: a call that
/// waits for its CPU share behind others burns all the same).
const QUIET_CPU: Duration = Duration::from_millis(2);
/// How often the watch looks while calls run.
const TICK: Duration = Duration::from_millis(5);
/// How long the watch keeps looking after the last call ended before it sleeps (a call
/// starting then wakes nobody).
const LINGER: Duration = Duration::from_secs(1);
/// How long an idle pool thread waits for a call before it ends.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// The nice value of a burning call's thread.
const LOW_NICE: libc::c_int = 19;

type Job = Box<dyn FnOnce() + Send>;

struct Pool {
    state: Mutex<State>,
    work: Condvar,
    max: usize,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    threads: usize,
    idle: usize,
    /// Idle threads already woken for a queued call (so a second call spawns a thread
    /// instead of counting on the same idle one).
    notified: usize,
}

/// One pool thread, as the watch sees it.
struct Slot {
    tid: libc::pid_t,
    clock: libc::clockid_t,
    /// A call is running on the thread.
    busy: AtomicBool,
    /// Host waits in progress (a full buffer, sleep, LLM, sub-ops): the thread is not burning.
    waiting: AtomicU32,
    /// Bumped by every call start, chunk and host wait: progress the watch can see.
    epoch: AtomicU64,
    /// The watch lowered the thread's priority during the current call.
    lowered: AtomicBool,
    /// Held by the watch from its look at `busy` to `lowered`, and by the thread from the
    /// call's end to its look at `lowered`: a lowering never lands on the next call unseen.
    gate: Mutex<()>,
}

/// The calls running on the pool, for the watch.
struct Watch {
    slots: Mutex<Vec<Arc<Slot>>>,
    busy: AtomicUsize,
    /// Whether the watch thread sleeps until a call starts.
    asleep: Mutex<bool>,
    wake: Condvar,
    /// Pool threads to start, asked for by a thread at nice 19 (a thread inherits its
    /// creator's nice value, and the watch's is always 0).
    spawns: AtomicUsize,
}

fn watch() -> &'static Watch {
    static WATCH: OnceLock<Watch> = OnceLock::new();
    WATCH.get_or_init(|| {
        let started = std::thread::Builder::new()
            .name("flowhost-watch".into())
            .spawn(watch_calls);
        if let Err(err) = started {
            tracing::warn!(
                "op pool: no watch thread ({err}); a pooled call burning CPU keeps its priority"
            );
        }
        Watch {
            slots: Mutex::new(Vec::new()),
            busy: AtomicUsize::new(0),
            asleep: Mutex::new(false),
            wake: Condvar::new(),
            spawns: AtomicUsize::new(0),
        }
    })
}

thread_local! {
    /// This thread's slot, on a pool thread.
    static CURRENT: std::cell::RefCell<Option<Arc<Slot>>> = const { std::cell::RefCell::new(None) };
}

/// Marks progress of the call on this thread (a chunk): a call that emits is not burning
/// in silence. Nothing off the pool.
#[inline]
pub(super) fn progress() {
    CURRENT.with_borrow(|slot| {
        if let Some(slot) = slot {
            slot.epoch.fetch_add(1, Ordering::Relaxed);
        }
    });
}

/// Runs `wait` (a host wait of the call on this thread) with the watch told so.
pub(super) fn waiting<R>(wait: impl FnOnce() -> R) -> R {
    let slot = CURRENT.with_borrow(Clone::clone);
    let Some(slot) = slot else {
        return wait();
    };
    struct Waiting(Arc<Slot>);
    impl Drop for Waiting {
        fn drop(&mut self) {
            // Not waiting any more, then progress: the watch never sees the new epoch with
            // the wait still counted (and a panicking wait still ends its count).
            self.0.waiting.fetch_sub(1, Ordering::Relaxed);
            self.0.epoch.fetch_add(1, Ordering::Relaxed);
        }
    }
    slot.waiting.fetch_add(1, Ordering::Relaxed);
    let _waiting = Waiting(slot);
    wait()
}

/// Op pool threads at most (`max_op_threads`); read when the pool starts.
static MAX_OP_THREADS: AtomicUsize = AtomicUsize::new(512);

/// Sets the op pool's thread bound (`max_op_threads`), before the first op call.
pub(crate) fn set_max_op_threads(threads: usize) {
    MAX_OP_THREADS.store(threads.max(1), Ordering::Relaxed);
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        work: Condvar::new(),
        max: MAX_OP_THREADS.load(Ordering::Relaxed),
    })
}

/// Runs `call` on a pool thread; the answer, or why there is none (the call panicked, or no
/// thread could be started).
pub(super) fn spawn<R: Send + 'static>(
    call: impl FnOnce() -> R + Send + 'static,
) -> impl std::future::Future<Output = Result<R, String>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).map_err(|panic| {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                format!("panicked: {message}")
            });
        let _ = tx.send(result);
    });
    submit(pool(), job);
    async move {
        rx.await
            .unwrap_or_else(|_| Err("no op thread could be started".to_string()))
    }
}

fn submit(pool: &'static Pool, job: Job) {
    let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    state.queue.push_back(job);
    if state.idle > state.notified {
        state.notified += 1;
        drop(state);
        pool.work.notify_one();
        return;
    }
    if state.threads >= pool.max {
        // Queued: the next thread to finish a call takes it.
        return;
    }
    start_thread(pool, &mut state);
}

/// Starts one more pool thread (the caller holds the state's lock); through the watch when
/// this thread runs at a lowered priority, which a thread it started would inherit.
fn start_thread(pool: &'static Pool, state: &mut State) {
    state.threads += 1;
    if lowered_here() {
        let watch = watch();
        watch.spawns.fetch_add(1, Ordering::AcqRel);
        let mut asleep = watch.asleep.lock().unwrap_or_else(|p| p.into_inner());
        *asleep = false;
        watch.wake.notify_one();
        return;
    }
    spawn_thread(pool, state);
}

/// Whether this thread's nice value is above 0.
fn lowered_here() -> bool {
    // SAFETY: getpriority of this thread's own id; errno cleared first, as its man page says
    // (-1 is a valid answer).
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t);
        nice > 0 && *libc::__errno_location() == 0
    }
}

/// Starts the OS thread of a pool thread already counted in `state.threads`.
fn spawn_thread(pool: &'static Pool, state: &mut State) {
    let started = std::thread::Builder::new()
        .name("flowhost-op".into())
        .spawn(move || serve(pool));
    if let Err(err) = started {
        state.threads -= 1;
        tracing::warn!("op pool: cannot start a thread: {err}");
        if state.threads == 0 {
            // Nobody will take the queue: its calls fail (their answer channels close;
            // dropping a call touches nothing of the pool's).
            state.queue.clear();
        }
    }
}

/// A pool thread: calls until idle for [`KEEP_ALIVE`], or until a call left it at a priority
/// it cannot undo.
fn serve(pool: &'static Pool) {
    let slot = register();
    CURRENT.with_borrow_mut(|current| *current = slot.clone());
    let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if let Some(job) = state.queue.pop_front() {
            drop(state);
            let keep = run(slot.as_deref(), job);
            state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
            if !keep {
                break;
            }
            continue;
        }
        state.idle += 1;
        let (next, waited) = pool
            .work
            .wait_timeout(state, KEEP_ALIVE)
            .unwrap_or_else(|p| p.into_inner());
        state = next;
        state.idle -= 1;
        if state.notified > 0 {
            state.notified -= 1;
        } else if waited.timed_out() && state.queue.is_empty() {
            break;
        }
    }
    state.threads -= 1;
    // A thread leaving after a lowered call may leave calls queued (the pool was full) that
    // no idle thread was woken for: one takes its place.
    if state.queue.len() > state.idle.saturating_sub(state.notified) {
        start_thread(pool, &mut state);
    }
    drop(state);
    if let Some(slot) = slot {
        let watch = watch();
        watch
            .slots
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|s| !Arc::ptr_eq(s, &slot));
    }
}

/// Runs one call on this pool thread; whether the thread may take another (its priority is
/// back to normal).
fn run(slot: Option<&Slot>, job: Job) -> bool {
    let Some(slot) = slot else {
        job();
        return true;
    };
    let watch = watch();
    slot.epoch.fetch_add(1, Ordering::Relaxed);
    slot.busy.store(true, Ordering::Release);
    if watch.busy.fetch_add(1, Ordering::AcqRel) == 0 {
        let mut asleep = watch.asleep.lock().unwrap_or_else(|p| p.into_inner());
        if *asleep {
            *asleep = false;
            watch.wake.notify_one();
        }
    }
    job();
    let lowered = {
        let _gate = slot.gate.lock().unwrap_or_else(|p| p.into_inner());
        slot.busy.store(false, Ordering::Release);
        slot.lowered.swap(false, Ordering::AcqRel)
    };
    watch.busy.fetch_sub(1, Ordering::AcqRel);
    if !lowered {
        return true;
    }
    // SAFETY: setpriority on this thread's own id.
    let restored = unsafe { libc::setpriority(libc::PRIO_PROCESS, slot.tid as libc::id_t, 0) } == 0;
    if !restored {
        tracing::debug!(
            "op pool: a thread lowered for a burning call cannot get its priority back ({}); it ends",
            std::io::Error::last_os_error()
        );
    }
    restored
}

/// This thread's slot in the watch; `None` if its CPU clock cannot be read (then its calls
/// are not watched).
fn register() -> Option<Arc<Slot>> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the calling thread's own id and clock, into a local.
    let (tid, found) = unsafe {
        (
            libc::gettid(),
            libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock),
        )
    };
    if found != 0 {
        return None;
    }
    let slot = Arc::new(Slot {
        tid,
        clock,
        busy: AtomicBool::new(false),
        waiting: AtomicU32::new(0),
        epoch: AtomicU64::new(0),
        lowered: AtomicBool::new(false),
        gate: Mutex::new(()),
    });
    watch()
        .slots
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(slot.clone());
    Some(slot)
}

fn cpu_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a clock of a thread that is still registered (it deregisters under the lock
    // the watch holds while reading), into a local.
    (unsafe { libc::clock_gettime(clock, &mut now) } == 0)
        .then(|| Duration::new(now.tv_sec as u64, now.tv_nsec as u32))
}

/// What the watch saw of one slot when its call last made progress.
struct Seen {
    epoch: u64,
    at: Instant,
    cpu: Option<Duration>,
}

/// The watch thread: every [`TICK`] while calls run, lowers the priority of any pool thread
/// whose call has made no progress for [`QUIET`] while using [`QUIET_CPU`] of CPU; sleeps
/// when no call has run for [`LINGER`].
fn watch_calls() {
    let watch = watch();
    // By slot (its address: thread ids are reused).
    let mut seen: std::collections::HashMap<usize, Seen> = Default::default();
    let mut last_busy = Instant::now();
    loop {
        {
            let asleep = watch.asleep.lock().unwrap_or_else(|p| p.into_inner());
            if watch.spawns.load(Ordering::Acquire) == 0 {
                // A tick, or sooner when a thread is asked for.
                let _ = watch.wake.wait_timeout(asleep, TICK);
            }
        }
        start_asked();
        let now = Instant::now();
        if watch.busy.load(Ordering::Acquire) > 0 {
            last_busy = now;
        } else if now.duration_since(last_busy) > LINGER {
            seen.clear();
            let mut asleep = watch.asleep.lock().unwrap_or_else(|p| p.into_inner());
            *asleep = true;
            while *asleep
                && watch.busy.load(Ordering::Acquire) == 0
                && watch.spawns.load(Ordering::Acquire) == 0
            {
                asleep = watch.wake.wait(asleep).unwrap_or_else(|p| p.into_inner());
            }
            *asleep = false;
            last_busy = Instant::now();
            continue;
        }
        let slots = watch.slots.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|key, _| slots.iter().any(|slot| Arc::as_ptr(slot) as usize == *key));
        for slot in slots.iter() {
            if !slot.busy.load(Ordering::Acquire) || slot.lowered.load(Ordering::Acquire) {
                continue;
            }
            let key = Arc::as_ptr(slot) as usize;
            let epoch = slot.epoch.load(Ordering::Relaxed);
            let quiet = slot.waiting.load(Ordering::Relaxed) == 0;
            match seen.get_mut(&key) {
                Some(last) if last.epoch == epoch && quiet => {
                    let Some(before) = last.cpu else {
                        // First seen while waiting: the quiet time starts now.
                        last.at = now;
                        last.cpu = cpu_time(slot.clock);
                        continue;
                    };
                    if now.duration_since(last.at) < QUIET {
                        continue;
                    }
                    let Some(cpu) = cpu_time(slot.clock) else {
                        continue;
                    };
                    if cpu.saturating_sub(before) >= QUIET_CPU {
                        lower(slot);
                    }
                }
                _ => {
                    seen.insert(
                        key,
                        Seen {
                            epoch,
                            at: now,
                            cpu: if quiet { cpu_time(slot.clock) } else { None },
                        },
                    );
                }
            }
        }
    }
}

/// Starts the pool threads that lowered threads asked for (already counted).
fn start_asked() {
    let asked = watch().spawns.swap(0, Ordering::AcqRel);
    if asked == 0 {
        return;
    }
    let pool = pool();
    let mut state = pool.state.lock().unwrap_or_else(|p| p.into_inner());
    for _ in 0..asked {
        spawn_thread(pool, &mut state);
    }
}

/// Lowers a burning call's thread, unless its call ended meanwhile.
fn lower(slot: &Slot) {
    let _gate = slot.gate.lock().unwrap_or_else(|p| p.into_inner());
    if !slot.busy.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: setpriority on a thread of this process that is still registered.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, slot.tid as libc::id_t, LOW_NICE) } == 0 {
        slot.lowered.store(true, Ordering::Release);
        metrics::counter!(crate::metrics::OPS_LOWERED).increment(1);
    } else {
        tracing::debug!(
            "op pool: cannot lower a burning call's thread: {}",
            std::io::Error::last_os_error()
        );
    }
}
