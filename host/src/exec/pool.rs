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
pub(crate) const QUIET: Duration = Duration::from_millis(10);
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
pub(crate) const LOW_NICE: libc::c_int = 19;

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
}

/// The calls running on the pool, for the watch.
struct Watch {
    slots: Mutex<Vec<Arc<Slot>>>,
    busy: AtomicUsize,
    /// Whether the watch thread sleeps until a call starts.
    asleep: Mutex<bool>,
    wake: Condvar,
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
    slot.waiting.fetch_add(1, Ordering::Relaxed);
    let result = wait();
    slot.epoch.fetch_add(1, Ordering::Relaxed);
    slot.waiting.fetch_sub(1, Ordering::Relaxed);
    result
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        state: Mutex::new(State::default()),
        work: Condvar::new(),
        max: super::place::max_op_threads(),
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
    state.threads += 1;
    let started = std::thread::Builder::new()
        .name("flowhost-op".into())
        .spawn(move || serve(pool));
    if let Err(err) = started {
        state.threads -= 1;
        tracing::warn!("op pool: cannot start a thread: {err}");
        if state.threads == 0 {
            // Nobody will take the queue: its calls fail (their answer channels close).
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
    slot.busy.store(false, Ordering::Release);
    watch.busy.fetch_sub(1, Ordering::AcqRel);
    if !slot.lowered.swap(false, Ordering::AcqRel) {
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
    let mut seen: std::collections::HashMap<libc::pid_t, Seen> = Default::default();
    let mut last_busy = Instant::now();
    loop {
        std::thread::sleep(TICK);
        let now = Instant::now();
        if watch.busy.load(Ordering::Acquire) > 0 {
            last_busy = now;
        } else if now.duration_since(last_busy) > LINGER {
            seen.clear();
            let mut asleep = watch.asleep.lock().unwrap_or_else(|p| p.into_inner());
            *asleep = true;
            while *asleep && watch.busy.load(Ordering::Acquire) == 0 {
                asleep = watch.wake.wait(asleep).unwrap_or_else(|p| p.into_inner());
            }
            *asleep = false;
            last_busy = Instant::now();
            continue;
        }
        let slots = watch.slots.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|tid, _| slots.iter().any(|slot| slot.tid == *tid));
        for slot in slots.iter() {
            if !slot.busy.load(Ordering::Acquire) || slot.lowered.load(Ordering::Acquire) {
                continue;
            }
            let epoch = slot.epoch.load(Ordering::Relaxed);
            let quiet = slot.waiting.load(Ordering::Relaxed) == 0;
            match seen.get(&slot.tid) {
                Some(last) if last.epoch == epoch && quiet => {
                    if now.duration_since(last.at) < QUIET {
                        continue;
                    }
                    let (Some(before), Some(cpu)) = (last.cpu, cpu_time(slot.clock)) else {
                        continue;
                    };
                    if cpu.saturating_sub(before) >= QUIET_CPU {
                        lower(slot);
                    }
                }
                _ => {
                    seen.insert(
                        slot.tid,
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

fn lower(slot: &Slot) {
    // SAFETY: setpriority on a thread of this process that is still registered.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, slot.tid as libc::id_t, LOW_NICE) } == 0 {
        // After the change: the thread restores its priority when it sees this.
        slot.lowered.store(true, Ordering::Release);
        metrics::counter!(crate::metrics::OPS_LOWERED).increment(1);
    } else {
        tracing::debug!(
            "op pool: cannot lower a burning call's thread: {}",
            std::io::Error::last_os_error()
        );
    }
}
