//! The worker process (`flowhost __worker LIBRARY HASH [MEMORY_MB]`): loads one plugin library
//! and runs op calls for the host, one at a time, speaking `protocol` on stdin and a private
//! copy of stdout. Knows nothing of flows or transports; a crash here ends only this process.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::protocol::{self, Message};
use crate::ops::Host;

/// Frames to the host: written whole under the lock, flushed by whoever needs them out now
/// (before waiting, at the end of a call) or by the flusher within a few milliseconds.
struct Out {
    /// The pipe, whether it holds unflushed frames, and a frame buffer reused per message.
    writer: Mutex<(BufWriter<File>, bool, Vec<u8>)>,
}

impl Out {
    fn send(&self, message: &Message) -> bool {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let (writer, dirty, frame) = &mut *guard;
        frame.clear();
        protocol::encode(message, frame);
        *dirty = true;
        writer.write_all(frame).is_ok()
    }

    fn flush(&self) {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1 {
            guard.1 = false;
            if guard.0.flush().is_err() {
                // The host is gone: nothing left to serve.
                std::process::exit(0);
            }
        }
    }
}

/// The op's host while it runs in this worker.
struct WorkerHost {
    out: Arc<Out>,
    cancelled: Arc<(Mutex<bool>, Condvar)>,
    cancel_flag: Arc<AtomicBool>,
    service: Mutex<mpsc::Receiver<Message>>,
}

impl Host for WorkerHost {
    fn emit(&self, kind: u8, content: &str, json: bool) -> bool {
        if self.cancel_flag.load(Ordering::Relaxed) {
            return false;
        }
        self.out.send(&Message::Chunk {
            kind,
            json,
            text: content.to_string(),
        }) && !self.cancel_flag.load(Ordering::Relaxed)
    }

    fn is_cancelled(&self) -> bool {
        self.cancel_flag.load(Ordering::Relaxed)
    }

    fn sleep(&self, millis: u64) -> bool {
        self.out.flush();
        let (lock, wake) = &*self.cancelled;
        let guard = lock.lock().unwrap_or_else(|p| p.into_inner());
        let (guard, _) = wake
            .wait_timeout_while(guard, Duration::from_millis(millis), |cancelled| {
                !*cancelled
            })
            .unwrap_or_else(|p| p.into_inner());
        !*guard
    }

    fn log(&self, level: crate::ops::Level, message: &str) {
        self.out.send(&Message::Log {
            level: level as u8,
            text: message.to_string(),
        });
    }

    fn chat_stream(
        &self,
        request: &str,
        on_chunk: &mut dyn FnMut(u8, &str, bool) -> bool,
    ) -> Result<String, String> {
        self.out.send(&Message::ServiceCall(request.to_string()));
        self.out.flush();
        let service = self.service.lock().unwrap_or_else(|p| p.into_inner());
        let mut stopped = false;
        loop {
            match service.recv() {
                Ok(Message::ServiceChunk { kind, json, text }) => {
                    if !stopped && !on_chunk(kind, &text, json) {
                        stopped = true;
                        self.out.send(&Message::ServiceStop);
                        self.out.flush();
                    }
                }
                Ok(Message::ServiceDone { ok: true, text }) => return Ok(text),
                Ok(Message::ServiceDone { ok: false, text }) => return Err(text),
                Ok(_) => continue,
                Err(_) => return Err("the host went away during an LLM call".into()),
            }
        }
    }

    fn sub_ops(&self) -> String {
        self.call(SUB_OPS, "{}").unwrap_or_else(|_| "[]".into())
    }

    fn call_sub_ops(&self, calls: &str, forward: bool) -> String {
        let request = serde_json::json!({"calls": calls, "forward": forward}).to_string();
        match self.call(CALL_SUB_OPS, &request) {
            Ok(text) | Err(text) => text,
        }
    }

    fn call(&self, service: &str, request: &str) -> Result<String, String> {
        self.out.send(&Message::NamedService {
            service: service.to_string(),
            request: request.to_string(),
        });
        self.out.flush();
        let replies = self.service.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match replies.recv() {
                Ok(Message::ServiceDone { ok: true, text }) => return Ok(text),
                Ok(Message::ServiceDone { ok: false, text }) => return Err(text),
                Ok(_) => continue,
                Err(_) => return Err(format!("the host went away during {service}")),
            }
        }
    }
}

/// The op's sub-ops, asked of the host (`NamedService` names the host's own services with a
/// `flowhost.` prefix, which no plugin service has).
pub(crate) const SUB_OPS: &str = "flowhost.sub_ops";
/// Sub-op calls made by the host for the op: `{"calls": "<JSON text>", "forward": bool}`.
pub(crate) const CALL_SUB_OPS: &str = "flowhost.call_sub_ops";

/// The call in progress: its cancellation, and where LLM replies go.
struct Running {
    cancel_flag: Arc<AtomicBool>,
    cancelled: Arc<(Mutex<bool>, Condvar)>,
    service: mpsc::Sender<Message>,
}

/// Runs the worker until the host closes its stdin. Returns the process exit code.
pub(crate) fn main(library: &Path, expected_hash: u64, memory_mb: Option<u64>) -> i32 {
    let stdout = match crate::util::stdio::take_stdout() {
        Ok(file) => file,
        Err(err) => {
            eprintln!("flowhost worker: {err}");
            return 2;
        }
    };
    let out = Arc::new(Out {
        writer: Mutex::new((
            BufWriter::with_capacity(64 * 1024, stdout),
            false,
            Vec::with_capacity(256),
        )),
    });
    let loaded = std::fs::read(library)
        .map_err(|err| format!("cannot read {}: {err}", library.display()))
        .and_then(|bytes| {
            let hash = crate::ops::plugin::content_hash(&bytes);
            if hash != expected_hash {
                return Err(format!(
                    "{} changed since the host loaded it; the next reload brings new workers",
                    library.display()
                ));
            }
            crate::ops::plugin::load(library, &bytes).map_err(|err| err.to_string())
        });
    let library = match loaded {
        Ok(library) => library,
        Err(message) => {
            out.send(&Message::LoadFailed(message));
            out.flush();
            return 1;
        }
    };
    {
        // Chunks of a busy op leave within a few milliseconds even when it never waits.
        let out = out.clone();
        std::thread::Builder::new()
            .name("worker-flush".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(2));
                out.flush();
            })
            .ok();
    }
    let library = Arc::new(library);
    // One op thread for the worker's life: calls come one at a time, and starting a thread per
    // call would cost more than a small op.
    let (calls, queued) = mpsc::channel::<(String, String, String, WorkerHost)>();
    {
        let (library, out) = (library.clone(), out.clone());
        let started = std::thread::Builder::new()
            .name("op".into())
            .spawn(move || {
                for (op, args, context, host) in queued {
                    let result = library.run(&op, &args, &context, &host);
                    let (ok, text) = match result {
                        Ok(writes) => (true, writes),
                        Err(message) => (false, message),
                    };
                    out.send(&Message::Done { ok, text });
                    out.flush();
                }
            });
        if let Err(err) = started {
            eprintln!("flowhost worker: cannot start the op thread: {err}");
            return 2;
        }
    }
    // The limit counts from here: the library and the worker's own threads are mapped.
    if let Some(mb) = memory_mb {
        limit_memory(mb);
    }
    out.send(&Message::Ready);
    out.flush();
    let mut input = BufReader::with_capacity(64 * 1024, std::io::stdin().lock());
    let mut call: Option<Running> = None;
    loop {
        let message = match protocol::read(&mut input) {
            Ok(Some(message)) => message,
            Ok(None) => return 0,
            Err(err) => {
                eprintln!("flowhost worker: bad frame from the host: {err}");
                return 2;
            }
        };
        match message {
            Message::Call { op, args, context } => {
                let cancel_flag = Arc::new(AtomicBool::new(false));
                let cancelled = Arc::new((Mutex::new(false), Condvar::new()));
                let (service_tx, service_rx) = mpsc::channel();
                let host = WorkerHost {
                    out: out.clone(),
                    cancelled: cancelled.clone(),
                    cancel_flag: cancel_flag.clone(),
                    service: Mutex::new(service_rx),
                };
                if calls.send((op, args, context, host)).is_err() {
                    return 2;
                }
                call = Some(Running {
                    cancel_flag,
                    cancelled,
                    service: service_tx,
                });
            }
            Message::Cancel => {
                if let Some(running) = &call {
                    running.cancel_flag.store(true, Ordering::Relaxed);
                    let (lock, wake) = &*running.cancelled;
                    *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
                    wake.notify_all();
                }
            }
            message @ (Message::ServiceChunk { .. } | Message::ServiceDone { .. }) => {
                if let Some(running) = &call {
                    let _ = running.service.send(message);
                }
            }
            _ => {}
        }
    }
}

/// Caps the address space at what the worker maps now plus `mb` MiB: an op that allocates
/// past it fails its allocation (Rust aborts the process), which the host reports as the
/// memory limit.
fn limit_memory(mb: u64) {
    #[cfg(target_os = "linux")]
    {
        let mapped_kib = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmSize:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0);
        let bytes = mapped_kib * 1024 + mb * 1024 * 1024;
        let limit = libc::rlimit {
            rlim_cur: bytes,
            rlim_max: bytes,
        };
        // SAFETY: setrlimit with a valid struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
            eprintln!(
                "flowhost worker: cannot limit memory: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = mb;
    }
}
