//! A bounded, batching chunk channel from op threads (blocking) to one async consumer.
//!
//! A channel send per token is the real cost of streaming, so producers push into a shared
//! buffer under a mutex and the consumer takes everything there in one swap. The consumer is
//! woken only when the buffer goes from empty to non-empty; producers block when the buffer is
//! full, in chunks or in bytes (backpressure: a slow reader never grows memory past the bound).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::chunk::Chunk;

struct State {
    buf: Vec<Chunk>,
    /// Text bytes held in `buf`.
    bytes: usize,
    senders: usize,
    receiver_gone: bool,
    /// Producers waiting on `not_full`: std's condvar makes a system call on every notify,
    /// waiters or not, and the consumer would notify after every batch.
    waiting: usize,
}

struct Shared {
    state: Mutex<State>,
    not_full: Condvar,
    not_empty: Notify,
    capacity: usize,
    capacity_bytes: usize,
}

/// The byte bound of a run's buffer: past it producers wait, whatever the chunk count (one
/// chunk larger than this still passes when the buffer is empty).
pub(crate) const CAPACITY_BYTES: usize = 4 * 1024 * 1024;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the buffer inconsistent (every critical
        // section is a push or a swap), so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The producing side; clone it for parallel branches.
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

/// The consuming side.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
}

/// A channel holding at most `capacity` chunks (and [`CAPACITY_BYTES`] of text) between
/// producers and the consumer.
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    channel_with_bytes(capacity, CAPACITY_BYTES)
}

pub(crate) fn channel_with_bytes(capacity: usize, capacity_bytes: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            // Grows to what the stream needs; the two sides then trade the same two buffers.
            buf: Vec::with_capacity(capacity.min(16)),
            bytes: 0,
            senders: 1,
            receiver_gone: false,
            waiting: 0,
        }),
        not_full: Condvar::new(),
        not_empty: Notify::new(),
        capacity: capacity.max(1),
        capacity_bytes: capacity_bytes.max(1),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver { shared },
    )
}

impl Sender {
    /// Pushes a chunk, blocking while the buffer is full. Returns `false` when the receiver is
    /// gone or `cancel` fires: the producer should stop.
    pub(crate) fn push(&self, chunk: Chunk, cancel: &CancellationToken) -> bool {
        self.push_inner(chunk, cancel, true).unwrap_or(false)
    }

    /// Pushes a chunk if there is room now; gives it back (`Err`) when the buffer is full.
    pub(crate) fn try_push(&self, chunk: Chunk, cancel: &CancellationToken) -> Result<bool, Chunk> {
        self.push_inner(chunk, cancel, false)
    }

    fn push_inner(
        &self,
        chunk: Chunk,
        cancel: &CancellationToken,
        wait: bool,
    ) -> Result<bool, Chunk> {
        let mut state = self.shared.lock();
        loop {
            if state.receiver_gone || cancel.is_cancelled() {
                return Ok(false);
            }
            if state.buf.is_empty()
                || (state.buf.len() < self.shared.capacity
                    && state.bytes + chunk.text.len() <= self.shared.capacity_bytes)
            {
                break;
            }
            if !wait {
                return Err(chunk);
            }
            // Cancellation does not signal this condvar, so wake now and then to look at it.
            state.waiting += 1;
            state = match self
                .shared
                .not_full
                .wait_timeout(state, Duration::from_millis(5))
            {
                Ok((guard, _)) => guard,
                Err(poison) => poison.into_inner().0,
            };
            state.waiting -= 1;
        }
        let was_empty = state.buf.is_empty();
        state.bytes += chunk.text.len();
        state.buf.push(chunk);
        drop(state);
        if was_empty {
            self.shared.not_empty.notify_one();
        }
        Ok(true)
    }
}

impl Sender {
    /// Pushes a last chunk without waiting for room (the run's closing error), so async code
    /// never blocks on a slow reader.
    pub(crate) fn push_final(&self, chunk: Chunk) {
        let mut state = self.shared.lock();
        if state.receiver_gone {
            return;
        }
        let was_empty = state.buf.is_empty();
        state.bytes += chunk.text.len();
        state.buf.push(chunk);
        drop(state);
        if was_empty {
            self.shared.not_empty.notify_one();
        }
    }
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let last = {
            let mut state = self.shared.lock();
            state.senders -= 1;
            state.senders == 0
        };
        if last {
            self.shared.not_empty.notify_one();
        }
    }
}

impl Receiver {
    /// Waits for chunks and moves all of them into `out` (which should be empty). Returns
    /// `false` once every sender is gone and nothing is left.
    pub(crate) async fn recv_batch(&mut self, out: &mut Vec<Chunk>) -> bool {
        loop {
            {
                let mut state = self.shared.lock();
                if !state.buf.is_empty() {
                    std::mem::swap(&mut state.buf, out);
                    state.bytes = 0;
                    let waiting = state.waiting > 0;
                    drop(state);
                    if waiting {
                        self.shared.not_full.notify_all();
                    }
                    return true;
                }
                if state.senders == 0 {
                    return false;
                }
            }
            self.shared.not_empty.notified().await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let waiting = {
            let mut state = self.shared.lock();
            state.receiver_gone = true;
            state.waiting > 0
        };
        if waiting {
            self.shared.not_full.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::ChunkKind;

    fn chunk(i: usize) -> Chunk {
        Chunk::text(ChunkKind::Answer, "T", i.to_string())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_everything_in_order_with_backpressure() {
        let (tx, mut rx) = channel(8);
        let cancel = CancellationToken::new();
        let producer = std::thread::spawn(move || {
            for i in 0..10_000 {
                assert!(tx.push(chunk(i), &cancel));
            }
        });
        let mut got = Vec::new();
        let mut batch = Vec::new();
        while rx.recv_batch(&mut batch).await {
            assert!(
                batch.len() <= 8,
                "buffer exceeded its bound: {}",
                batch.len()
            );
            got.append(&mut batch);
        }
        producer.join().unwrap();
        let texts: Vec<usize> = got.iter().map(|c| c.text.parse().unwrap()).collect();
        assert_eq!(texts, (0..10_000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_buffer_is_bounded_in_bytes_too() {
        let (tx, mut rx) = channel_with_bytes(1000, 100);
        let cancel = CancellationToken::new();
        let producer = std::thread::spawn(move || {
            for i in 0..200 {
                let text = format!("{i:>30}");
                assert!(tx.push(Chunk::text(ChunkKind::Answer, "T", text), &cancel));
            }
            // One chunk larger than the bound still passes, alone.
            assert!(tx.push(
                Chunk::text(ChunkKind::Answer, "T", "x".repeat(500)),
                &cancel
            ));
        });
        let mut got = 0;
        let mut batch = Vec::new();
        while rx.recv_batch(&mut batch).await {
            let bytes: usize = batch.iter().map(|c| c.text.len()).sum();
            assert!(
                bytes <= 100 || batch.len() == 1,
                "{bytes} bytes in one batch"
            );
            got += batch.len();
            batch.clear();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer.join().unwrap();
        assert_eq!(got, 201);
    }

    #[tokio::test]
    async fn dropped_receiver_stops_a_blocked_producer() {
        let (tx, rx) = channel(1);
        let cancel = CancellationToken::new();
        assert!(tx.push(chunk(0), &cancel));
        let producer = std::thread::spawn(move || tx.push(chunk(1), &cancel));
        std::thread::sleep(Duration::from_millis(20));
        drop(rx);
        assert!(!producer.join().unwrap());
    }
}
