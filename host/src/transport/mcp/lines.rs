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
            let newline = memchr(data);
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

fn memchr(data: &[u8]) -> Option<usize> {
    data.iter().position(|&b| b == b'\n')
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
    // SAFETY: an OwnedFd keeps its descriptor open, and the same, until it is dropped.
    let fd = unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
    }
    .ok()?;
    Some(AsyncLines {
        fd,
        lines: Lines::new(max_line),
        chunk: vec![0u8; 64 * 1024],
    })
}

/// Stdin read on the runtime thread.
pub(crate) struct AsyncLines {
    fd: tokio::io::unix::AsyncFd<OwnedFd>,
    lines: Lines,
    chunk: Vec<u8>,
}

impl AsyncLines {
    /// Waits for input and feeds what one read returns to `on`. `Ok(false)`: end of input.
    pub(crate) async fn read(
        &mut self,
        on: &mut impl FnMut(Event<'_>) -> bool,
    ) -> std::io::Result<bool> {
        loop {
            let mut guard = self.fd.readable().await?;
            let chunk = &mut self.chunk;
            let read = guard.try_io(|fd| {
                // SAFETY: reads into a buffer this reader owns, at most its length.
                let n =
                    unsafe { libc::read(fd.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
                if n < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match read {
                Ok(Ok(0)) => {
                    self.lines.finish(on);
                    return Ok(false);
                }
                Ok(Ok(n)) => return Ok(self.lines.feed(&self.chunk[..n], on)),
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Ok(Err(err)) => return Err(err),
                // Not readable after all: wait again.
                Err(_would_block) => {}
            }
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
