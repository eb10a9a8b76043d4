//! The audit trail (`audit.path`): one JSON line per call, each carrying `prev`, the SHA-256
//! (hex) of the line before it, so that a line edited or deleted breaks the chain where it
//! was. The first line of a trail has 64 zeros; a file rotated at `audit.max_bytes` is renamed
//! `PATH.1`, `PATH.2`, ... (oldest first) and the chain goes on in the new file. Lines are
//! written by one thread, fed through a channel: a call never waits for the disk.
//! `flowhost audit verify` checks files with [`verify`].

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `audit` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    pub(crate) path: Option<PathBuf>,
    /// Write each call's input too (off: inputs may hold what the audit's readers should not
    /// see).
    pub(crate) inputs: bool,
    /// Size past which the file is rotated.
    pub(crate) max_bytes: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            path: None,
            inputs: false,
            max_bytes: 100 * 1024 * 1024,
        }
    }
}

/// The `prev` of a trail's first line.
pub(crate) const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One call as written.
#[derive(Debug, Serialize)]
pub(crate) struct Entry {
    pub(crate) time: String,
    pub(crate) subject: String,
    /// How the subject was identified (`key`, `api_key`, `jwt`, `none`, `stdio`): a token's
    /// `sub` and a key's name may be the same text.
    pub(crate) via: &'static str,
    pub(crate) transport: &'static str,
    pub(crate) flow: String,
    pub(crate) run_id: Option<String>,
    pub(crate) outcome: &'static str,
    pub(crate) duration_ms: u64,
    pub(crate) chunks: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) traceparent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) input: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    entry: &'a Entry,
    prev: &'a str,
}

enum Message {
    Line(Entry),
    /// Answered once everything before it is on disk.
    Flush(mpsc::SyncSender<()>),
}

/// Lines waiting for the writer past which new ones are dropped (and counted): a flood of
/// calls must not turn into unbounded memory.
const QUEUE: usize = 65_536;

/// The writer's end: entries go to its thread.
pub(crate) struct Audit {
    sender: mpsc::SyncSender<Message>,
    dropped: std::sync::atomic::AtomicU64,
    pub(crate) inputs: bool,
}

impl Audit {
    /// Opens (or creates) the file, continuing the chain from its last line (or from the last
    /// rotated file's), and starts the writer thread.
    pub(crate) fn open(settings: &Settings) -> Result<Option<Audit>, String> {
        let Some(path) = settings.path.clone() else {
            return Ok(None);
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|err| format!("audit.path: cannot create {}: {err}", parent.display()))?;
        }
        let lock = lock(&path)?;
        end_at_a_line(&path)
            .map_err(|err| format!("audit.path: cannot repair {}: {err}", path.display()))?;
        let prev = last_hash(&path)
            .map_err(|err| format!("audit.path: cannot read {}: {err}", path.display()))?;
        let file = open_append(&path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (sender, receiver) = mpsc::sync_channel(QUEUE);
        let mut writer = Writer {
            file: BufWriter::new(file),
            size,
            prev,
            path,
            max_bytes: settings.max_bytes.max(1024),
            _lock: lock,
        };
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run(receiver))
            .map_err(|err| format!("audit: cannot start its writer: {err}"))?;
        Ok(Some(Audit {
            sender,
            dropped: Default::default(),
            inputs: settings.inputs,
        }))
    }

    pub(crate) fn write(&self, entry: Entry) {
        if let Err(mpsc::TrySendError::Full(_)) = self.sender.try_send(Message::Line(entry)) {
            let dropped = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_power_of_two() || dropped == 0 {
                tracing::error!(
                    "audit: {} line(s) dropped: calls came faster than the disk took them",
                    dropped + 1
                );
            }
        }
    }

    /// Waits (at most `limit`) until every line written so far is on disk.
    pub(crate) fn flush(&self, limit: std::time::Duration) {
        let (done, wait) = mpsc::sync_channel(1);
        if self.sender.try_send(Message::Flush(done)).is_ok() {
            let _ = wait.recv_timeout(limit);
        }
    }
}

/// Only one process writes a trail: `PATH.lock` is held (flock) while it does.
fn lock(path: &Path) -> Result<File, String> {
    use std::os::fd::AsRawFd;
    let mut name = path.as_os_str().to_os_string();
    name.push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&name)
        .map_err(|err| {
            format!(
                "audit.path: cannot open {}: {err}",
                Path::new(&name).display()
            )
        })?;
    // SAFETY: flock on a descriptor this function owns; no memory is shared.
    let taken = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
    if !taken {
        return Err(format!(
            "audit.path: {} is being written by another process (its lock {} is held); give each process its own audit.path",
            path.display(),
            Path::new(&name).display()
        ));
    }
    Ok(file)
}

/// A process that died mid-line leaves a partial last line: it is cut off (it was never a
/// whole record), so the chain goes on from the last whole line.
fn end_at_a_line(path: &Path) -> std::io::Result<()> {
    let mut file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))?;
    file.read_exact(&mut last)?;
    if last[0] == b'\n' {
        return Ok(());
    }
    // Find the last newline, reading back in blocks.
    let mut end = len;
    let mut keep = 0;
    let mut block = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(block.len() as u64);
        let chunk = &mut block[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(at) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = start + at as u64 + 1;
            break;
        }
        end = start;
    }
    tracing::warn!(
        "audit: {} ended mid-line (a process stopped while writing); the partial line ({} bytes) is cut off",
        path.display(),
        len - keep
    );
    file.set_len(keep)
}

fn open_append(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| format!("audit.path: cannot open {}: {err}", path.display()))
}

struct Writer {
    file: BufWriter<File>,
    size: u64,
    prev: String,
    path: PathBuf,
    max_bytes: u64,
    /// Held for the writer's life.
    _lock: File,
}

impl Writer {
    fn run(&mut self, receiver: mpsc::Receiver<Message>) {
        while let Ok(first) = receiver.recv() {
            let mut waiting = Vec::new();
            // Everything already queued goes out before one flush.
            for message in
                std::iter::once(first).chain(std::iter::from_fn(|| receiver.try_recv().ok()))
            {
                match message {
                    Message::Line(entry) => self.line(&entry),
                    Message::Flush(done) => waiting.push(done),
                }
            }
            if let Err(err) = self.file.flush() {
                tracing::error!("audit: cannot write {}: {err}", self.path.display());
            }
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    fn line(&mut self, entry: &Entry) {
        let Ok(text) = serde_json::to_string(&Line {
            entry,
            prev: &self.prev,
        }) else {
            return;
        };
        if self.size > 0 && self.size + text.len() as u64 + 1 > self.max_bytes {
            self.rotate();
        }
        match self
            .file
            .write_all(text.as_bytes())
            .and_then(|()| self.file.write_all(b"\n"))
        {
            Ok(()) => {
                self.size += text.len() as u64 + 1;
                self.prev = hash(text.as_bytes());
            }
            Err(err) => tracing::error!("audit: cannot write {}: {err}", self.path.display()),
        }
    }

    /// `PATH` becomes `PATH.N` (the next free number) and a new `PATH` starts.
    fn rotate(&mut self) {
        if let Err(err) = self.file.flush() {
            tracing::error!("audit: cannot write {}: {err}", self.path.display());
        }
        let rotated = rotated(&self.path).last().map_or(1, |(n, _)| n + 1);
        let target = numbered(&self.path, rotated);
        if let Err(err) = std::fs::rename(&self.path, &target) {
            tracing::error!("audit: cannot rotate {}: {err}", self.path.display());
            return;
        }
        match open_append(&self.path) {
            Ok(file) => {
                self.file = BufWriter::new(file);
                self.size = 0;
                tracing::info!("audit: rotated to {}", target.display());
            }
            Err(err) => tracing::error!("{err}"),
        }
    }
}

fn numbered(path: &Path, n: u64) -> PathBuf {
    let mut name = path.as_os_str().to_os_string();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The rotated files of a trail, oldest first.
pub(crate) fn rotated(path: &Path) -> Vec<(u64, PathBuf)> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let n = file.strip_prefix(&prefix)?.parse().ok()?;
            Some((n, numbered(path, n)))
        })
        .collect();
    found.sort();
    found
}

pub(crate) fn hash(line: &[u8]) -> String {
    let digest = Sha256::digest(line);
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The hash of the last line of `path` (or of the newest rotated file when `path` is empty
/// or absent); [`GENESIS`] when there is none.
fn last_hash(path: &Path) -> std::io::Result<String> {
    if let Some(line) = last_line(path)? {
        return Ok(hash(&line));
    }
    for (_, older) in rotated(path).into_iter().rev() {
        if let Some(line) = last_line(&older)? {
            return Ok(hash(&line));
        }
    }
    Ok(GENESIS.to_string())
}

fn last_line(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err),
    };
    let len = file.metadata()?.len();
    // Lines are short (an input only with `audit.inputs`); read back far enough for one.
    let mut back = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(back);
        file.seek(SeekFrom::Start(start))?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail)?;
        while tail.last() == Some(&b'\n') {
            tail.pop();
        }
        if tail.is_empty() {
            return Ok(None);
        }
        match tail.iter().rposition(|b| *b == b'\n') {
            Some(at) => return Ok(Some(tail[at + 1..].to_vec())),
            None if start == 0 => return Ok(Some(tail)),
            None => back *= 4,
        }
    }
}

/// What a verified trail holds.
#[derive(Debug)]
pub(crate) struct Verified {
    pub(crate) lines: u64,
    /// The SHA-256 of the last line: keep it elsewhere to protect the last line too.
    pub(crate) last: String,
    /// False when the first file starts after a rotation (its first `prev` cannot be checked
    /// without the file before it).
    pub(crate) from_start: bool,
}

/// Checks the chain through `files`, in order (rotated files first, oldest first). The error
/// names the file and line where the chain breaks.
pub(crate) fn verify(files: &[PathBuf]) -> Result<Verified, String> {
    let mut prev: Option<String> = None;
    let mut from_start = false;
    let mut lines = 0;
    for path in files {
        let file = File::open(path).map_err(|err| format!("{}: {err}", path.display()))?;
        for (index, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|err| format!("{}: {err}", path.display()))?;
            let n = index + 1;
            let at = format!("{}:{n}", path.display());
            let value: serde_json::Value = serde_json::from_slice(&line).map_err(|err| {
                format!("{at}: line {n} is not an audit line (not JSON: {err}); it was edited or the file was damaged")
            })?;
            let Some(claimed) = value.get("prev").and_then(|p| p.as_str()) else {
                return Err(format!(
                    "{at}: line {n} has no `prev`: it was edited, or this is not an audit file"
                ));
            };
            match &prev {
                None => from_start = claimed == GENESIS,
                Some(expected) if expected == claimed => {}
                Some(_) if n == 1 => {
                    return Err(format!(
                        "{at}: the chain breaks between files: line 1's `prev` is not the SHA-256 of the last line of the file before (a file is missing, out of order, or its last line was edited)"
                    ))
                }
                Some(_) => {
                    return Err(format!(
                        "{}:{}: line {} was edited, or lines after it were deleted: line {n}'s `prev` is not the SHA-256 of line {}",
                        path.display(),
                        n - 1,
                        n - 1,
                        n - 1
                    ))
                }
            }
            prev = Some(hash(&line));
            lines += 1;
        }
    }
    Ok(Verified {
        lines,
        last: prev.unwrap_or_else(|| GENESIS.to_string()),
        from_start,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flow: &str) -> Entry {
        Entry {
            time: "2026-12-03T12:00:00.000Z".into(),
            subject: "alice".into(),
            via: "key",
            transport: "http",
            flow: flow.into(),
            run_id: None,
            outcome: "ok",
            duration_ms: 1,
            chunks: 2,
            traceparent: None,
            input: None,
        }
    }

    /// Lines in the trail's files, rotated ones included.
    fn count(dir: &Path) -> usize {
        let path = dir.join("audit.jsonl");
        let mut files: Vec<PathBuf> = rotated(&path).into_iter().map(|(_, p)| p).collect();
        files.push(path);
        files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .unwrap_or_default()
                    .lines()
                    .count()
            })
            .sum()
    }

    fn write(dir: &Path, max_bytes: u64, flows: &[&str]) {
        let settings = Settings {
            path: Some(dir.join("audit.jsonl")),
            inputs: false,
            max_bytes,
        };
        let before = count(dir);
        // The previous writer's thread lets go of the lock a moment after its last line is
        // on disk (it ends when its channel closes): wait for it as a restart would.
        let mut tries = 0;
        let audit = loop {
            match Audit::open(&settings) {
                Err(err) if err.contains("lock") && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                opened => break opened.unwrap().unwrap(),
            }
        };
        for flow in flows {
            audit.write(entry(flow));
        }
        drop(audit);
        // The writer thread ends when its channel closes; wait for the lines.
        for _ in 0..500 {
            if count(dir) >= before + flows.len() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        panic!("the audit lines were not written");
    }

    #[test]
    fn a_chain_survives_restarts_and_rotation_and_shows_an_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        write(dir.path(), 1 << 20, &["a", "b"]);
        write(dir.path(), 1 << 20, &["c"]);
        let checked = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(checked.lines, 3);
        assert!(checked.from_start);
        // Rotation: small files, the chain goes on across them.
        write(dir.path(), 1024, &["d"; 12]);
        let mut files: Vec<PathBuf> = rotated(&path).into_iter().map(|(_, p)| p).collect();
        assert!(!files.is_empty(), "rotated");
        files.push(path.clone());
        assert_eq!(verify(&files).unwrap().lines, 15);
        // An edit breaks the chain at that line.
        let text = std::fs::read_to_string(&files[0]).unwrap();
        let edited = text.replacen("\"flow\":\"b\"", "\"flow\":\"x\"", 1);
        assert_ne!(text, edited);
        std::fs::write(&files[0], edited).unwrap();
        let error = verify(&files).unwrap_err();
        assert!(error.contains(":2: line 2 was edited"), "{error}");
        // A file left out breaks it between files.
        let error = verify(&[files[1].clone(), files[0].clone()]).unwrap_err();
        assert!(error.contains("between files"), "{error}");
    }

    #[test]
    fn one_writer_per_trail_and_a_partial_line_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let settings = Settings {
            path: Some(path.clone()),
            inputs: false,
            max_bytes: 1 << 20,
        };
        let first = Audit::open(&settings).unwrap().unwrap();
        let error = Audit::open(&settings).err().unwrap();
        assert!(
            error.contains("being written by another process"),
            "{error}"
        );
        first.write(entry("a"));
        first.flush(std::time::Duration::from_secs(5));
        drop(first);
        // The writer thread holds the lock until its channel closes.
        for _ in 0..500 {
            if lock(&path).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // A process that died mid-line.
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"time\":\"2026-");
        std::fs::write(&path, &text).unwrap();
        let second = Audit::open(&settings).unwrap().unwrap();
        second.write(entry("b"));
        second.flush(std::time::Duration::from_secs(5));
        let checked = verify(std::slice::from_ref(&path)).unwrap();
        assert_eq!(checked.lines, 2);
    }
}
