//! Newline-delimited input, as MCP's stdio transport reads it: stdin cut into numbered lines,
//! a line over the size limit skipped (and reported) without ever being held whole.
//!
//! When stdin is a pipe or a socket it is read on the runtime thread through epoll
//! (`AsyncFd`): a message then wakes no other thread on its way to the server. Anything else
//! (a file, a terminal, `/dev/null`) is read by a plain thread with blocking reads; a terminal
//! is never switched to non-blocking mode, since the shell shares it.

use std::io::Read;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

/// What the splitter found.
pub(crate) enum Event<'a> {
    /// A whole line (without its newline), numbered from 1.
    Line(u64, &'a [u8]),
    /// Line `number` was `bytes` long, over the limit; it was skipped.
    Oversized { number: u64, bytes: usize },
}

/// Cuts a byte stream into lines of at most `max_line` bytes.
pub(crate) struct Lines {
    buf: Vec<u8>,
    max_line: usize,
    number: u64,
    /// Bytes of an oversized line skipped so far.
    skipping: Option<usize>,
}

impl Lines {
    pub(crate) fn new(max_line: usize) -> Lines {
        Lines {
            buf: Vec::with_capacity(4096),
            max_line,
            number: 0,
            skipping: None,
        }
    }

    /// Feeds bytes read; `on` sees every finished line and returns `false` to stop.
    pub(crate) fn feed(&mut self, mut data: &[u8], on: &mut impl FnMut(Event<'_>) -> bool) -> bool {
        while !data.is_empty() {
            let newline = memchr::memchr(b'\n', data);
            let (segment, rest) = match newline {
                Some(at) => (&data[..at], &data[at + 1..]),
                None => (data, &[][..]),
            };
            data = rest;
            if let Some(skipped) = &mut self.skipping {
                *skipped += segment.len();
                if newline.is_some() {
                    let bytes = *skipped + 1;
                    self.skipping = None;
                    self.number += 1;
                    if !on(Event::Oversized {
                        number: self.number,
                        bytes,
                    }) {
                        return false;
                    }
                }
                continue;
            }
            if self.buf.len() + segment.len() > self.max_line {
                let skipped = self.buf.len() + segment.len();
                self.buf.clear();
                if newline.is_none() {
                    self.skipping = Some(skipped);
                    continue;
                }
                self.number += 1;
                if !on(Event::Oversized {
                    number: self.number,
                    bytes: skipped + 1,
                }) {
                    return false;
                }
                continue;
            }
            self.buf.extend_from_slice(segment);
            if newline.is_some() {
                self.number += 1;
                let keep_going = on(Event::Line(self.number, &self.buf));
                self.buf.clear();
                if !keep_going {
                    return false;
                }
            }
        }
        true
    }

    /// End of input: a last line without a newline still counts.
    pub(crate) fn finish(&mut self, on: &mut impl FnMut(Event<'_>) -> bool) {
        if let Some(bytes) = self.skipping.take() {
            self.number += 1;
            on(Event::Oversized {
                number: self.number,
                bytes,
            });
        } else if !self.buf.is_empty() {
            self.number += 1;
            on(Event::Line(self.number, &self.buf));
            self.buf.clear();
        }
    }
}

/// Stdin read ahead by whoever just answered the client's last request (see
/// [`ReadAhead::wait_for_next`]), handed to the reader ([`AsyncLines`]) in order.
pub(crate) struct ReadAhead {
    /// A duplicate of the reader's descriptor (the same pipe, the same `O_NONBLOCK`).
    fd: OwnedFd,
    /// Bytes read ahead and not yet taken, and whether stdin ended. Every read of the pipe
    /// happens under this lock, so bytes read here always come before what the reader reads
    /// after taking them.
    ahead: std::sync::Mutex<(Vec<u8>, bool)>,
    /// Wakes the reader when bytes were read ahead.
    arrived: tokio::sync::Notify,
}

/// How long [`ReadAhead::wait_for_next`] keeps this thread on the CPU waiting for the next
/// message. Past it the thread parks as before.
pub(crate) const READ_AHEAD_SPIN: std::time::Duration = std::time::Duration::from_micros(100);

/// Room made in the read-ahead buffer before each read.
const READ_AHEAD_BYTES: usize = 16 * 1024;

impl ReadAhead {
    /// Called after the answer to the client's last request was written: keeps this thread
    /// reading stdin for up to [`READ_AHEAD_SPIN`], and hands what arrives to the reader.
    ///
    /// A client that calls tools one at a time (an agent) sends its next message right after
    /// reading the answer. If every runtime thread parks meanwhile, the message has to wake one,
    /// and waking a parked thread is most of a call's round trip on a virtual machine (tens of
    /// microseconds for a halted vCPU: a pipe round trip between two processes measured 45-55 µs,
    /// 9-14 µs with the reading side spinning). The spin costs at most 100 µs of CPU per answer,
    /// and only when no other request of this client is in flight.
    pub(crate) fn wait_for_next(&self) {
        let started = std::time::Instant::now();
        let mut got = false;
        loop {
            let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
            let (bytes, ended) = &mut *ahead;
            if *ended {
                break;
            }
            // Straight into the buffer's spare room (kept between answers): no zeroed chunk
            // on the stack for every answer.
            bytes.reserve(READ_AHEAD_BYTES);
            let before = bytes.len();
            let spare = bytes.spare_capacity_mut();
            // SAFETY: reads at most `spare.len()` bytes into the vector's own spare capacity.
            let read = unsafe { read_raw(&self.fd, spare.as_mut_ptr().cast(), spare.len()) };
            match read {
                Ok(0) => {
                    *ended = true;
                    got = true;
                    break;
                }
                Ok(n) => {
                    // SAFETY: the read initialised `n` bytes past the old length.
                    unsafe { bytes.set_len(before + n) };
                    got = true;
                    // A client that writes a message in pieces: wait for its end too.
                    if memchr::memchr(b'\n', &bytes[before..]).is_some() {
                        break;
                    }
                }
                Err(err)
                    if err.kind() == std::io::ErrorKind::WouldBlock
                        || err.kind() == std::io::ErrorKind::Interrupted => {}
                // The reader meets the error on its own read.
                Err(_) => break,
            }
            drop(ahead);
            if started.elapsed() >= READ_AHEAD_SPIN {
                break;
            }
            std::hint::spin_loop();
        }
        if got {
            self.arrived.notify_one();
        }
    }

    /// Moves bytes read ahead into `into` (at most its length) or, when there are none, reads
    /// the pipe into it. `Ok(0)`: end of input.
    fn read(&self, into: &mut [u8]) -> std::io::Result<usize> {
        let mut ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        if !ahead.0.is_empty() {
            let n = ahead.0.len().min(into.len());
            into[..n].copy_from_slice(&ahead.0[..n]);
            ahead.0.drain(..n);
            return Ok(n);
        }
        if ahead.1 {
            return Ok(0);
        }
        read_fd(&self.fd, into)
    }

    /// Whether bytes (or the end) were read ahead and not yet taken.
    fn pending(&self) -> bool {
        let ahead = self.ahead.lock().unwrap_or_else(|p| p.into_inner());
        !ahead.0.is_empty() || ahead.1
    }
}

fn read_fd(fd: &impl AsRawFd, into: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads into a buffer the caller owns, at most its length.
    unsafe { read_raw(fd, into.as_mut_ptr(), into.len()) }
}

/// `read(2)` of at most `len` bytes to `into`.
///
/// # Safety
/// `into` must be valid for writes of `len` bytes.
unsafe fn read_raw(fd: &impl AsRawFd, into: *mut u8, len: usize) -> std::io::Result<usize> {
    // SAFETY: the caller's promise.
    let n = unsafe { libc::read(fd.as_raw_fd(), into.cast(), len) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A non-blocking copy of stdin registered with the runtime's reactor, when stdin is a pipe or
/// a socket (nobody else reads those ends, so `O_NONBLOCK` bothers no one). `None`: read it
/// with [`read_blocking`] on a thread.
pub(crate) fn pollable_stdin(max_line: usize) -> Option<AsyncLines> {
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    // SAFETY: fstat only writes the struct it is given.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut stat) } != 0 {
        return None;
    }
    let kind = stat.st_mode & libc::S_IFMT;
    if kind != libc::S_IFIFO && kind != libc::S_IFSOCK {
        return None;
    }
    let owned = fd.try_clone_to_owned().ok()?;
    // SAFETY: fcntl on a descriptor this process owns.
    unsafe {
        let flags = libc::fcntl(owned.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(owned.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0
        {
            return None;
        }
    }
    let ahead = owned.try_clone().ok().map(|fd| {
        std::sync::Arc::new(ReadAhead {
            fd,
            ahead: std::sync::Mutex::new((Vec::new(), false)),
            arrived: tokio::sync::Notify::new(),
        })
    });
    // SAFETY: an OwnedFd keeps its descriptor open, and the same, until it is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()?;
    Some(AsyncLines {
        fd,
        ahead,
        lines: Lines::new(max_line),
        chunk: vec![0u8; 64 * 1024],
    })
}

/// Stdin read on the runtime thread.
pub(crate) struct AsyncLines {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    /// What the writer of answers reads ahead (`None` if the descriptor could not be copied).
    ahead: Option<std::sync::Arc<ReadAhead>>,
    lines: Lines,
    chunk: Vec<u8>,
}

impl AsyncLines {
    /// The read-ahead side of this reader, for whoever writes the answers.
    pub(crate) fn read_ahead(&self) -> Option<std::sync::Arc<ReadAhead>> {
        self.ahead.clone()
    }

    /// Waits for input and feeds what one read returns to `on`. `Ok(false)`: end of input.
    pub(crate) async fn read(
        &mut self,
        on: &mut impl FnMut(Event<'_>) -> bool,
    ) -> std::io::Result<bool> {
        if let Some(ahead) = self.ahead.clone() {
            return self.read_with(&ahead, on).await;
        }
        loop {
            let mut guard = self.fd.readable().await?;
            let chunk = &mut self.chunk;
            let read = guard.try_io(|fd| read_fd(fd, chunk));
            match read {
                Ok(read) => {
                    if let Some(done) = self.took(read, on) {
                        return done;
                    }
                }
                // Not readable after all: wait again.
                Err(_would_block) => {}
            }
        }
    }

    /// [`AsyncLines::read`] when answers are followed by reading ahead: what was read ahead
    /// first, else the pipe once it is readable or the writer read something.
    async fn read_with(
        &mut self,
        ahead: &ReadAhead,
        on: &mut impl FnMut(Event<'_>) -> bool,
    ) -> std::io::Result<bool> {
        loop {
            // Bytes read ahead, or the end of input, come first; otherwise wait for the pipe or
            // for the writer to read something. Readiness is cleared only by a read that found
            // nothing (`try_io`): a read that left bytes behind reads again at once.
            let read = if ahead.pending() {
                Some(ahead.read(&mut self.chunk))
            } else {
                tokio::select! {
                    biased;
                    () = ahead.arrived.notified() => None,
                    guard = self.fd.readable() => {
                        let mut guard = guard?;
                        let chunk = &mut self.chunk;
                        guard.try_io(|_| ahead.read(chunk)).ok()
                    }
                }
            };
            match read {
                None => {}
                Some(Err(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Some(read) => {
                    if let Some(done) = self.took(read, on) {
                        return done;
                    }
                }
            }
        }
    }

    /// What one read returned, fed to `on`; `None`: interrupted, read again.
    fn took(
        &mut self,
        read: std::io::Result<usize>,
        on: &mut impl FnMut(Event<'_>) -> bool,
    ) -> Option<std::io::Result<bool>> {
        match read {
            Ok(0) => {
                self.lines.finish(on);
                Some(Ok(false))
            }
            Ok(n) => Some(Ok(self.lines.feed(&self.chunk[..n], on))),
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => None,
            Err(err) => Some(Err(err)),
        }
    }
}

/// Reads stdin to its end with blocking reads (on a thread of its own), line by line; stops
/// early when `on` says so.
pub(crate) fn read_blocking(
    max_line: usize,
    mut on: impl FnMut(Event<'_>) -> bool,
) -> std::io::Result<()> {
    let mut lines = Lines::new(max_line);
    let mut stdin = std::io::stdin().lock();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        match stdin.read(&mut chunk) {
            Ok(0) => {
                lines.finish(&mut on);
                return Ok(());
            }
            Ok(n) => {
                if !lines.feed(&chunk[..n], &mut on) {
                    return Ok(());
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max_line: usize, pieces: &[&[u8]]) -> Vec<String> {
        let mut lines = Lines::new(max_line);
        let mut seen = Vec::new();
        let mut on = |event: Event<'_>| {
            seen.push(match event {
                Event::Line(n, text) => format!("{n}:{}", String::from_utf8_lossy(text)),
                Event::Oversized { number, bytes } => format!("{number}:skipped {bytes}"),
            });
            true
        };
        for piece in pieces {
            lines.feed(piece, &mut on);
        }
        lines.finish(&mut on);
        seen
    }

    #[test]
    fn lines_are_cut_and_numbered_across_reads() {
        assert_eq!(
            split(100, &[b"ab", b"c\nde\n\nf", b"g"]),
            ["1:abc", "2:de", "3:", "4:fg"]
        );
    }

    #[test]
    fn an_oversized_line_is_skipped_whole_and_the_next_one_read() {
        // 12 bytes + newline over a limit of 5, arriving in pieces.
        assert_eq!(
            split(5, &[b"ok\n12345", b"6789", b"012\nfine\n"]),
            ["1:ok", "2:skipped 13", "3:fine"]
        );
        // Exactly at the limit is fine; one more byte is not.
        assert_eq!(split(5, &[b"12345\n123456\n"]), ["1:12345", "2:skipped 7"]);
        // Unterminated oversized tail at end of input.
        assert_eq!(split(3, &[b"abcdef"]), ["1:skipped 6"]);
    }
}
