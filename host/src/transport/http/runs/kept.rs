//! What a process that keeps its runs in a durable store needs to know of it: the store and
//! this process's name as an owner of runs (`host/pid-namespace/pid/nonce`), whether another owner is dead,
//! and chunks as the store keeps them. Shared by the runs this process drives (`store.rs`)
//! and the ones it reads or takes over (`durable.rs`).

use std::sync::Arc;

use crate::chunk::Chunk;

/// The durable store behind the runs of this process, and who this process is in it.
pub(crate) struct Durable {
    pub(crate) backend: Arc<dyn crate::store::Backend>,
    /// `host/pid-namespace/pid/nonce`: the owner of the runs this process drives.
    pub(crate) owner: String,
    pub(crate) settings: crate::store::Settings,
}

impl Durable {
    pub(crate) fn new(
        backend: Arc<dyn crate::store::Backend>,
        settings: crate::store::Settings,
    ) -> Durable {
        Durable {
            backend,
            owner: owner_name(),
            settings,
        }
    }

    /// Runs `call` on the backend off the runtime's threads.
    pub(crate) async fn call<T: Send + 'static>(
        &self,
        call: impl FnOnce(&dyn crate::store::Backend) -> crate::store::Result<T> + Send + 'static,
    ) -> crate::store::Result<T> {
        crate::store::call(&self.backend, call).await
    }

    /// MCP tasks shared through this store (`/mcp` answers for every host's tasks).
    pub(crate) fn shared_tasks(&self) -> Arc<crate::transport::mcp::SharedTasks> {
        Arc::new(crate::transport::mcp::SharedTasks::new(
            self.backend.clone(),
            self.owner.clone(),
        ))
    }

    pub(crate) fn lease_until(&self) -> i64 {
        crate::store::now_ms() + self.settings.lease.as_millis() as i64
    }

    /// Gives up the runs this process still runs (it is stopping): another host, or this one
    /// restarted, resumes them without waiting for their lease to run out.
    pub(crate) async fn give_up(&self) {
        let owner = self.owner.clone();
        if let Err(err) = self.call(move |b| b.release(&owner, None)).await {
            tracing::warn!("{err}");
        }
    }

    /// Forgets the finished runs past `runs:` bounds (which hold for every host sharing the
    /// store).
    pub(crate) async fn prune(&self, bounds: crate::store::Bounds) {
        if let Err(err) = self
            .call(move |b| b.prune(bounds, crate::store::now_ms()))
            .await
        {
            tracing::warn!("{err}");
        }
    }
}

/// A chunk as the store keeps it.
pub(super) fn event_of(chunk: &Chunk) -> crate::store::Event {
    crate::store::Event {
        seq: 0,
        kind: chunk.kind.as_str().to_string(),
        json: chunk.json,
        op: chunk.op.to_string(),
        text: chunk.text.clone(),
        tolerated: chunk.tolerated,
        attempts: chunk.attempts,
        resumed: chunk.resumed,
    }
}

/// A kept chunk back as a chunk (an unknown kind reads as `think`).
pub(super) fn chunk_of(event: crate::store::Event) -> Chunk {
    Chunk {
        kind: crate::chunk::kind_named(&event.kind).unwrap_or(crate::chunk::ChunkKind::Think),
        json: event.json,
        op: crate::chunk::op_named(&event.op),
        text: event.text,
        tolerated: event.tolerated,
        attempts: event.attempts,
        resumed: event.resumed,
    }
}

/// This process as an owner of runs: `host/pid-namespace/pid/nonce`.
pub(super) fn owner_name() -> String {
    let nonce: u32 = fastrand::u32(..);
    format!(
        "{}/{}/{}/{nonce:08x}",
        hostname(),
        pid_namespace(),
        std::process::id()
    )
}

/// This process's pid namespace (its inode; `0` when it cannot be read): containers that share
/// a host name (`hostNetwork`, `--network host`) are told apart by it.
fn pid_namespace() -> String {
    std::fs::read_link("/proc/self/ns/pid")
        .ok()
        .and_then(|link| {
            let text = link.to_string_lossy().into_owned();
            let digits: String = text.chars().filter(char::is_ascii_digit).collect();
            (!digits.is_empty()).then_some(digits)
        })
        .unwrap_or_else(|| "0".into())
}

fn hostname() -> String {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let ok = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) } == 0;
    let end = buffer.iter().position(|&b| b == 0).unwrap_or(buffer.len());
    if ok {
        String::from_utf8_lossy(&buffer[..end]).replace('/', "_")
    } else {
        "unknown".into()
    }
}

/// Whether `owner` is a process of this machine, in this pid namespace, that is gone (its
/// runs need not wait for their lease to run out): this very pid with another nonce (a
/// restart that got the same pid), or a pid that no longer exists. Anything else (another
/// machine, another container) waits for the lease.
pub(super) fn owner_is_dead(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(host), Some(namespace), Some(pid)) = (parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    if host != hostname() || namespace != pid_namespace() || namespace == "0" {
        return false;
    }
    let Ok(pid) = pid.parse::<i32>() else {
        return false;
    };
    if pid as u32 == std::process::id() {
        return true;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let alive = unsafe { libc::kill(pid, 0) } == 0;
    !alive && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}
