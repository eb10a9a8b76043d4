//! What the host has seen of an op's calls, to decide where the next one runs.
//!
//! An in-process op call normally runs on a blocking-pool thread: ops are synchronous plugin
//! code, and one that waits (for time, tokens, a slow reader) must not stall the async runtime.
//! The hop to that thread and back is about a third of a non-stream call (BENCHMARKS.md), so an
//! op that has shown itself fast runs inline on the runtime thread instead:
//!
//! - probation: [`PROBATION`] pooled calls in a row, each using less than [`FAST`] of CPU
//!   and none blocking its thread for longer than that, promote the op to inline; any other
//!   call starts the count again, and a call that waited on a host service (sleep, an LLM
//!   call, a full chunk buffer) sends the op to the pool for good;
//! - inline: the host services it may still call wait through `block_in_place` (the runtime
//!   hands its other tasks to another thread); a call that waited, or used more than [`HEAVY`]
//!   of CPU or blocked its thread that long, sends the op to the pool for good, and so do
//!   [`STRIKES`] calls in a row that blocked their thread or used CPU for more than [`SLOW`].
//!   (One is not enough: on a
//!   loaded machine a call that waits a microsecond for a contended lock, the allocator's or
//!   the chunk buffer's, can then wait a millisecond for the CPU, and glibc's allocator now
//!   and then spends a millisecond consolidating or returning memory inside a call; one such
//!   call sent an op that is always fast (EchoOp) to the pool for good within seconds of load.
//!   An op that blocks or computes by itself does so on every call.) Whatever an op does,
//!   inline calls never hold all runtime workers (`exec/place.rs`).
//!
//! A call is measured by its thread's CPU clock and voluntary context switches
//! (`getrusage(RUSAGE_THREAD)`), not by wall time: on a loaded machine a 5 µs call can take a
//! millisecond of wall time when the scheduler preempts its thread, and that says nothing about
//! the op. A voluntary switch means the thread blocked (its own sleep, I/O or lock); the wall
//! time then tells a long block from a brief lock wait.
//!
//! "For good" means for this load of the library: a rebuilt plugin starts on probation. The
//! worst case is an op that was fast [`PROBATION`] times and then blocks without asking the
//! host (its own sleep or I/O): it holds a runtime thread [`STRIKES`] + 1 times (the first
//! slow call is timed by the wall clock only, see [`Probe`]), and never again. One that is
//! very slow only now and then (over [`HEAVY`]) goes to the pool at its second such call.
//! `ops.inline: never` turns this off.

use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::time::Duration;

/// Fast pooled calls in a row that promote an op to inline.
pub const PROBATION: u32 = 32;
/// A pooled call at most this long counts towards promotion.
pub(crate) const FAST: Duration = Duration::from_micros(200);
/// An inline call longer than this sends the op back to the pool.
pub(crate) const SLOW: Duration = Duration::from_millis(1);
/// Inline calls in a row that blocked their thread, or used CPU, past [`SLOW`] before the op
/// goes to the pool.
pub(crate) const STRIKES: u32 = 3;
/// An inline call that used this much CPU, or blocked its thread this long, sends the op to
/// the pool at once.
pub(crate) const HEAVY: Duration = Duration::from_millis(10);

const INLINE: u32 = u32::MAX - 1 - STRIKES;
const POOLED: u32 = u32::MAX;

/// One op's placement state (per loaded library); lock-free, shared by all its calls.
#[derive(Debug, Default)]
pub struct Speed {
    state: AtomicU32,
    /// Whether inline calls are measured by the CPU clock (see [`Probe::wall`]):
    /// [`MEASURE_OFF`], [`MEASURE_UNTIL_FAST`] (an unmeasured call took longer than [`SLOW`]
    /// on the wall clock) or [`MEASURE_ALWAYS`] (one took longer than [`HEAVY`]).
    measure: AtomicU8,
}

const MEASURE_OFF: u8 = 0;
const MEASURE_UNTIL_FAST: u8 = 1;
const MEASURE_ALWAYS: u8 = 2;

impl Speed {
    /// Whether the next call may run inline.
    #[inline]
    pub(crate) fn inline(&self) -> bool {
        let state = self.state.load(Ordering::Relaxed);
        (INLINE..POOLED).contains(&state)
    }

    /// Whether pooled calls are still being measured.
    #[inline]
    pub(crate) fn on_probation(&self) -> bool {
        self.state.load(Ordering::Relaxed) < PROBATION
    }

    /// Records a call that ran on the pool.
    pub(crate) fn pooled(&self, call: Call) {
        if call.waited {
            self.state.store(POOLED, Ordering::Relaxed);
            return;
        }
        let seen = self.state.load(Ordering::Relaxed);
        if seen >= PROBATION {
            return;
        }
        let next = if call.blocked_longer_than(FAST) || call.cpu > FAST {
            0
        } else if seen + 1 == PROBATION {
            INLINE
        } else {
            seen + 1
        };
        // A lost race only miscounts one call of probation.
        let _ = self
            .state
            .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Whether the next inline call is measured by the CPU clock, not only by the wall
    /// clock (see [`Probe::wall`]).
    #[inline]
    pub(crate) fn measure_inline(&self) -> bool {
        self.measure.load(Ordering::Relaxed) != MEASURE_OFF
    }

    /// Records a call that ran inline.
    pub(crate) fn inlined(&self, call: Call) {
        if call.waited {
            self.state.store(POOLED, Ordering::Relaxed);
            return;
        }
        if call.unmeasured {
            // Slow by the wall clock, which preemption alone can cause: the next calls are
            // measured, and judged. Past HEAVY for good, so that an op that is very slow now
            // and then is sent to the pool by its next such call, fast calls between or not.
            if call.wall > HEAVY {
                self.measure.store(MEASURE_ALWAYS, Ordering::Relaxed);
                return;
            }
            if call.wall > SLOW {
                let _ = self.measure.compare_exchange(
                    MEASURE_OFF,
                    MEASURE_UNTIL_FAST,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                return;
            }
        } else if call.cpu <= SLOW && !call.blocked_longer_than(SLOW) {
            let _ = self.measure.compare_exchange(
                MEASURE_UNTIL_FAST,
                MEASURE_OFF,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
        if call.cpu > HEAVY || call.blocked_longer_than(HEAVY) {
            self.state.store(POOLED, Ordering::Relaxed);
            return;
        }
        let seen = self.state.load(Ordering::Relaxed);
        if !(INLINE..POOLED).contains(&seen) {
            return;
        }
        // INLINE + k: the last k calls blocked; the STRIKES-th goes to the pool.
        let next = if !call.blocked_longer_than(SLOW) && call.cpu <= SLOW {
            INLINE
        } else if seen + 1 == INLINE + STRIKES {
            POOLED
        } else {
            seen + 1
        };
        if next != seen {
            // A lost race only miscounts one call.
            let _ = self
                .state
                .compare_exchange(seen, next, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// `inline`, `pooled` or `probation`, for `flowhost ops --json` and tests.
    pub fn label(&self) -> &'static str {
        match self.state.load(Ordering::Relaxed) {
            POOLED => "pooled",
            state if state >= INLINE => "inline",
            _ => "probation",
        }
    }
}

/// What one call did, as [`Speed`] judges it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Call {
    /// CPU time the call's thread used.
    pub(crate) cpu: Duration,
    /// Wall time of the call.
    pub(crate) wall: Duration,
    /// The thread made a voluntary context switch (it blocked) during the call.
    pub(crate) switched: bool,
    /// The op waited on a host service.
    pub(crate) waited: bool,
    /// Only the wall time was taken ([`Probe::wall`]): `cpu` and `switched` are unknown.
    pub(crate) unmeasured: bool,
}

impl Call {
    /// The thread blocked and was off the CPU for longer than `limit`. A brief lock wait (a
    /// contended allocator or buffer lock) is no reason to leave the runtime; time off the
    /// CPU without a voluntary switch is preemption, which says nothing about the op.
    fn blocked_longer_than(&self, limit: Duration) -> bool {
        self.switched && self.wall.saturating_sub(self.cpu) > limit
    }
}

/// A measurement of the current thread, taken before a call; [`Probe::finish`] after it.
///
/// Reading the thread's CPU clock and switch count takes four system calls per call (over a
/// microsecond on a virtual machine, against a few for the call itself). An inline call that
/// ends within [`SLOW`] of wall time cannot have used more CPU, or blocked longer, than that,
/// so inline calls read only the wall clock ([`Probe::wall`]) until one takes longer; the next
/// ones are then measured in full, and judged.
pub(crate) struct Probe(Option<Usage>, std::time::Instant);

#[derive(Clone, Copy)]
struct Usage {
    cpu: Duration,
    voluntary_switches: i64,
}

impl Probe {
    pub(crate) fn start() -> Probe {
        Probe(Some(Usage::now()), std::time::Instant::now())
    }

    /// The wall clock only (see [`Probe`]).
    pub(crate) fn wall() -> Probe {
        Probe(None, std::time::Instant::now())
    }

    pub(crate) fn finish(self, waited: bool) -> Call {
        let wall = self.1.elapsed();
        let Some(before) = self.0 else {
            return Call {
                wall,
                waited,
                unmeasured: true,
                ..Call::default()
            };
        };
        let now = Usage::now();
        Call {
            cpu: now.cpu.saturating_sub(before.cpu),
            wall,
            switched: now.voluntary_switches > before.voluntary_switches,
            waited,
            unmeasured: false,
        }
    }
}

impl Usage {
    #[cfg(target_os = "linux")]
    fn now() -> Usage {
        // The CPU clock is exact; getrusage's CPU times are only brought up to date at
        // scheduler ticks, so only its switch count is used.
        // SAFETY: both calls only write the structs they are given.
        let mut clock: libc::timespec = unsafe { std::mem::zeroed() };
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut clock) };
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
        Usage {
            cpu: Duration::new(
                clock.tv_sec.max(0) as u64,
                clock.tv_nsec.clamp(0, 999_999_999) as u32,
            ),
            voluntary_switches: usage.ru_nvcsw,
        }
    }

    /// Elsewhere: wall time, which only errs towards the pool.
    #[cfg(not(target_os = "linux"))]
    fn now() -> Usage {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        Usage {
            cpu: START.get_or_init(std::time::Instant::now).elapsed(),
            voluntary_switches: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quick() -> Call {
        Call {
            cpu: Duration::from_micros(10),
            ..Call::default()
        }
    }

    fn cpu(cpu: Duration) -> Call {
        Call {
            cpu,
            ..Call::default()
        }
    }

    fn waited() -> Call {
        Call {
            waited: true,
            ..quick()
        }
    }

    #[test]
    fn fast_calls_in_a_row_promote_and_a_slow_one_restarts_the_count() {
        let speed = Speed::default();
        for _ in 0..PROBATION - 1 {
            speed.pooled(quick());
        }
        speed.pooled(cpu(FAST * 2));
        assert_eq!(speed.label(), "probation");
        for _ in 0..PROBATION - 1 {
            speed.pooled(quick());
        }
        assert!(!speed.inline());
        speed.pooled(quick());
        assert!(speed.inline());
        // Still inline after a fast inline call, and after a call of a millisecond or two (an
        // allocator hiccup); a heavy one ends it for good.
        speed.inlined(quick());
        assert!(speed.inline());
        speed.inlined(cpu(SLOW * 2));
        speed.inlined(quick());
        assert!(speed.inline());
        speed.inlined(cpu(HEAVY * 2));
        assert_eq!(speed.label(), "pooled");
        for _ in 0..PROBATION * 2 {
            speed.pooled(quick());
        }
        assert_eq!(speed.label(), "pooled");
    }

    #[test]
    fn an_inline_call_slow_by_the_wall_clock_only_asks_for_the_next_to_be_measured() {
        let speed = Speed::default();
        for _ in 0..PROBATION {
            speed.pooled(quick());
        }
        assert!(speed.inline() && !speed.measure_inline());
        let wall = |wall: Duration| Call {
            wall,
            unmeasured: true,
            ..Call::default()
        };
        // Within SLOW on the wall clock: fast, nothing more to know.
        speed.inlined(wall(SLOW / 2));
        assert!(speed.inline() && !speed.measure_inline());
        // Longer (preemption can do that): no strike, the next are measured.
        for _ in 0..STRIKES * 2 {
            speed.inlined(wall(SLOW * 5));
        }
        assert!(speed.inline() && speed.measure_inline());
        // A measured fast call ends the measuring; measured slow ones strike as before.
        speed.inlined(quick());
        assert!(!speed.measure_inline());
        speed.inlined(wall(SLOW * 2));
        for _ in 0..STRIKES {
            speed.inlined(cpu(SLOW * 2));
        }
        assert_eq!(speed.label(), "pooled");
        // Very slow now and then, fast between: measured for good after the first, so the
        // second goes to the pool.
        let speed = Speed::default();
        for _ in 0..PROBATION {
            speed.pooled(quick());
        }
        speed.inlined(wall(HEAVY * 2));
        for _ in 0..100 {
            speed.inlined(quick());
        }
        assert!(speed.inline() && speed.measure_inline());
        speed.inlined(cpu(HEAVY * 2));
        assert_eq!(speed.label(), "pooled");
    }

    #[test]
    fn a_call_that_waited_sends_the_op_to_the_pool_for_good() {
        let speed = Speed::default();
        speed.pooled(waited());
        for _ in 0..PROBATION * 2 {
            speed.pooled(quick());
        }
        assert_eq!(speed.label(), "pooled");
        let inline = Speed::default();
        for _ in 0..PROBATION {
            inline.pooled(quick());
        }
        assert!(inline.inline());
        inline.inlined(waited());
        assert_eq!(inline.label(), "pooled");
    }

    #[test]
    fn a_blocked_thread_restarts_probation_and_ends_inline() {
        let blocked = Call {
            switched: true,
            wall: SLOW * 3,
            ..quick()
        };
        // A short lock wait, or a long preemption, is not blocking.
        let lock_wait = Call {
            switched: true,
            wall: Duration::from_micros(30),
            ..quick()
        };
        let preempted = Call {
            wall: SLOW * 10,
            ..quick()
        };
        let speed = Speed::default();
        for _ in 0..PROBATION - 1 {
            speed.pooled(quick());
        }
        speed.pooled(blocked);
        assert_eq!(speed.label(), "probation");
        for _ in 0..PROBATION {
            speed.pooled(quick());
        }
        assert!(speed.inline());
        speed.inlined(lock_wait);
        speed.inlined(preempted);
        assert!(speed.inline());
        // A blocked call now and then (a lock wait, then the CPU taken) is forgiven...
        for _ in 0..3 {
            for _ in 0..STRIKES - 1 {
                speed.inlined(blocked);
                assert_eq!(speed.label(), "inline");
            }
            speed.inlined(quick());
        }
        // ...STRIKES in a row are an op that blocks by itself.
        for _ in 0..STRIKES {
            assert!(speed.inline());
            speed.inlined(blocked);
        }
        assert_eq!(speed.label(), "pooled");
        assert!(!speed.inline());
    }

    #[test]
    fn the_probe_sees_cpu_and_blocking() {
        // Spin until the thread's own CPU clock shows 5 ms (a loaded machine may take longer
        // in wall time; only a probe that cannot see CPU never gets there).
        let probe = Probe::start();
        let started = probe.0.expect("measured").cpu;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut spins = 0u64;
        while Usage::now().cpu < started + Duration::from_millis(5)
            && std::time::Instant::now() < deadline
        {
            spins = std::hint::black_box(spins + 1);
        }
        let busy = probe.finish(false);
        assert!(busy.cpu >= Duration::from_millis(5), "{busy:?}");
        let probe = Probe::start();
        std::thread::sleep(Duration::from_millis(2));
        let slept = probe.finish(false);
        assert!(
            slept.blocked_longer_than(Duration::from_millis(1)),
            "{slept:?}"
        );
        assert!(slept.cpu < Duration::from_millis(5), "{slept:?}");
        // The wall clock alone: unmeasured, its wall time kept.
        let probe = Probe::wall();
        std::thread::sleep(Duration::from_millis(2));
        let slept = probe.finish(false);
        assert!(
            slept.unmeasured && slept.wall >= Duration::from_millis(2),
            "{slept:?}"
        );
    }
}
