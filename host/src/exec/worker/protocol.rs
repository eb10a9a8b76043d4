//! The worker protocol: what the host and an op worker process (`flowhost __worker`) say to
//! each other over the worker's stdin (host → worker) and a private copy of its stdout
//! (worker → host). Knows nothing of ops, runs or processes: frames and messages only.
//!
//! A frame is `tag: u8`, `length: u32 LE`, `payload: [u8; length]`; strings inside a payload
//! are `length: u32 LE` + UTF-8 bytes. Invariants:
//! - One call at a time per worker: after `Call`, the worker sends any number of `Chunk`,
//!   `Log`, `ServiceCall` and `NamedService` frames, then exactly one `Done`; the host sends
//!   `Cancel` (any number, harmless after `Done`), answers each `ServiceCall` (the LLM) with
//!   `ServiceChunk`s then one `ServiceDone`, and each `NamedService` (`sample`, `elicit`,
//!   `roots`) with one `ServiceDone`; meanwhile the worker may send `Chunk`, `Log` (the op
//!   forwarding deltas) and `ServiceStop`, which the host handles as they come.
//! - The worker sends `Ready` (or `LoadFailed`, then exits) once, before anything else.
//! - End of stream from either side ends the worker; the host reads the worker's exit status
//!   to say why (a signal is a crash).
//! - Frames are written whole under one lock, so the op thread and the worker's flusher never
//!   interleave bytes; the worker batches frames and flushes within a few milliseconds.

use std::io::{self, Read, Write};

/// The largest frame accepted: a chunk or a context larger than this is a protocol error.
pub(crate) const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Everything either side says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Message {
    // host → worker
    Call {
        op: String,
        args: String,
        context: String,
    },
    Cancel,
    ServiceChunk {
        kind: u8,
        json: bool,
        text: String,
    },
    ServiceDone {
        ok: bool,
        text: String,
    },
    // worker → host
    Ready,
    LoadFailed(String),
    Chunk {
        kind: u8,
        json: bool,
        text: String,
    },
    Log {
        level: u8,
        text: String,
    },
    ServiceCall(String),
    /// A named host service (op-sdk 0.1.3 `call`): service name, JSON request.
    NamedService {
        service: String,
        request: String,
    },
    ServiceStop,
    Done {
        ok: bool,
        text: String,
    },
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

/// Appends one frame to `out`.
pub(crate) fn encode(message: &Message, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0, 0, 0, 0, 0]);
    let tag = match message {
        Message::Call { op, args, context } => {
            put_str(out, op);
            put_str(out, args);
            put_str(out, context);
            b'C'
        }
        Message::Cancel => b'X',
        Message::ServiceChunk { kind, json, text } => {
            out.extend_from_slice(&[*kind, u8::from(*json)]);
            put_str(out, text);
            b's'
        }
        Message::ServiceDone { ok, text } => {
            out.push(u8::from(*ok));
            put_str(out, text);
            b'd'
        }
        Message::Ready => b'R',
        Message::LoadFailed(text) => {
            put_str(out, text);
            b'F'
        }
        Message::Chunk { kind, json, text } => {
            out.extend_from_slice(&[*kind, u8::from(*json)]);
            put_str(out, text);
            b'k'
        }
        Message::Log { level, text } => {
            out.push(*level);
            put_str(out, text);
            b'l'
        }
        Message::ServiceCall(text) => {
            put_str(out, text);
            b'S'
        }
        Message::NamedService { service, request } => {
            put_str(out, service);
            put_str(out, request);
            b'N'
        }
        Message::ServiceStop => b't',
        Message::Done { ok, text } => {
            out.push(u8::from(*ok));
            put_str(out, text);
            b'D'
        }
    };
    let length = (out.len() - start - 5) as u32;
    out[start] = tag;
    out[start + 1..start + 5].copy_from_slice(&length.to_le_bytes());
}

/// Writes one frame and flushes.
pub(crate) fn send(writer: &mut impl Write, message: &Message) -> io::Result<()> {
    let mut frame = Vec::new();
    encode(message, &mut frame);
    writer.write_all(&frame)?;
    writer.flush()
}

struct Payload<'a> {
    bytes: &'a [u8],
}

impl Payload<'_> {
    fn byte(&mut self) -> io::Result<u8> {
        let (&first, rest) = self.bytes.split_first().ok_or_else(short)?;
        self.bytes = rest;
        Ok(first)
    }

    fn string(&mut self) -> io::Result<String> {
        if self.bytes.len() < 4 {
            return Err(short());
        }
        let (length, rest) = self.bytes.split_at(4);
        let length = u32::from_le_bytes([length[0], length[1], length[2], length[3]]) as usize;
        if rest.len() < length {
            return Err(short());
        }
        let (text, rest) = rest.split_at(length);
        self.bytes = rest;
        String::from_utf8(text.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a string is not UTF-8"))
    }
}

fn short() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        "a frame is shorter than its fields",
    )
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub(crate) fn read(reader: &mut impl Read) -> io::Result<Option<Message>> {
    let mut header = [0u8; 5];
    match reader.read_exact(&mut header) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(err) => return Err(err),
    }
    let length = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
    if length > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {length} bytes is over the {MAX_FRAME}-byte limit"),
        ));
    }
    let mut bytes = vec![0u8; length];
    reader.read_exact(&mut bytes)?;
    let mut p = Payload { bytes: &bytes };
    let message = match header[0] {
        b'C' => Message::Call {
            op: p.string()?,
            args: p.string()?,
            context: p.string()?,
        },
        b'X' => Message::Cancel,
        b's' => Message::ServiceChunk {
            kind: p.byte()?,
            json: p.byte()? != 0,
            text: p.string()?,
        },
        b'd' => Message::ServiceDone {
            ok: p.byte()? != 0,
            text: p.string()?,
        },
        b'R' => Message::Ready,
        b'F' => Message::LoadFailed(p.string()?),
        b'k' => Message::Chunk {
            kind: p.byte()?,
            json: p.byte()? != 0,
            text: p.string()?,
        },
        b'l' => Message::Log {
            level: p.byte()?,
            text: p.string()?,
        },
        b'S' => Message::ServiceCall(p.string()?),
        b'N' => Message::NamedService {
            service: p.string()?,
            request: p.string()?,
        },
        b't' => Message::ServiceStop,
        b'D' => Message::Done {
            ok: p.byte()? != 0,
            text: p.string()?,
        },
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown frame tag {other:#04x}"),
            ))
        }
    };
    Ok(Some(message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let messages = [
            Message::Call {
                op: "EchoOp".into(),
                args: "{}".into(),
                context: "{\"query\":\"é\\n\"}".into(),
            },
            Message::Cancel,
            Message::ServiceChunk {
                kind: 1,
                json: false,
                text: "think".into(),
            },
            Message::ServiceDone {
                ok: false,
                text: "upstream 500".into(),
            },
            Message::Ready,
            Message::LoadFailed("not a plugin".into()),
            Message::Chunk {
                kind: 2,
                json: true,
                text: "{\"id\":1}".into(),
            },
            Message::Log {
                level: 3,
                text: "hello".into(),
            },
            Message::ServiceCall("{\"messages\":[]}".into()),
            Message::NamedService {
                service: "elicit".into(),
                request: "{\"message\":\"?\"}".into(),
            },
            Message::ServiceStop,
            Message::Done {
                ok: true,
                text: "{}".into(),
            },
        ];
        let mut stream = Vec::new();
        for message in &messages {
            encode(message, &mut stream);
        }
        let mut reader = &stream[..];
        for message in &messages {
            assert_eq!(read(&mut reader).unwrap().as_ref(), Some(message));
        }
        assert_eq!(read(&mut reader).unwrap(), None);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        for bytes in [
            &[b'Z', 0, 0, 0, 0][..],
            &[b'k', 1, 0, 0, 0, 0][..],
            &[b'k', 9, 0, 0, 0, 0, 0, 5, 0, 0, 0][..],
            &[b'D', 0xff, 0xff, 0xff, 0xff][..],
        ] {
            let mut reader = bytes;
            assert!(read(&mut reader).is_err(), "{bytes:?}");
        }
    }
}
