//! The configuration as read (`Raw` and its sections): serde's view of the file and the
//! overrides, with flowhost's defaults, before `load` validates it into a `Config`.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::units::{Bytes, Port, Seconds};
use super::{Backend, DEFAULT_MAX_OP_THREADS};

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(super) struct Raw {
    pub(super) backend: Backend,
    pub(super) http: RawHttp,
    pub(super) flows_dir: OneOrMany,
    pub(super) plugin_dirs: Vec<PathBuf>,
    pub(super) enabled_flows: Vec<String>,
    pub(super) disabled_flows: Vec<String>,
    pub(super) llm: Value,
    pub(super) watch: bool,
    pub(super) debounce_ms: u64,
    pub(super) max_op_threads: usize,
    pub(super) ops: RawOps,
    pub(super) plugins: std::collections::BTreeMap<String, RawPlugin>,
    pub(super) cache: RawCache,
    pub(super) runs: RawRuns,
    pub(super) store: RawStore,
    /// `auth:` and `audit:`, read by `config/auth.rs`.
    pub(super) auth: Value,
    pub(super) audit: Value,
    /// `telemetry:`, read by `config/telemetry.rs`.
    pub(super) telemetry: Value,
    /// `external_mcp:` (FlowLLM's), read by `upstream::settings`.
    pub(super) external_mcp: Value,
    /// Allowed so a FlowLLM config can be read; flows are served from the flows folder.
    pub(super) flow: Value,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(super) struct RawOps {
    pub(super) max_concurrency: Option<usize>,
    pub(super) max_queue: Option<usize>,
    pub(super) isolation: crate::plan::Isolation,
    pub(super) max_workers: Option<usize>,
    pub(super) worker_idle_timeout: Seconds,
    pub(super) inline: crate::exec::Inline,
}

impl Default for RawOps {
    fn default() -> RawOps {
        RawOps {
            max_concurrency: None,
            max_queue: None,
            isolation: Default::default(),
            max_workers: None,
            worker_idle_timeout: Seconds(crate::exec::worker::IDLE_TIMEOUT.as_secs_f64()),
            inline: Default::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(super) struct RawRuns {
    pub(super) retention: Seconds,
    pub(super) max_runs: usize,
    pub(super) max_running: usize,
    pub(super) max_bytes: Bytes,
}

impl Default for RawRuns {
    fn default() -> RawRuns {
        let defaults = crate::transport::http::Retention::default();
        RawRuns {
            retention: Seconds(defaults.keep.as_secs_f64()),
            max_runs: defaults.max_runs,
            max_running: defaults.max_running,
            max_bytes: Bytes(defaults.max_bytes),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(super) struct RawStore {
    pub(super) url: Option<String>,
    pub(super) path: Option<PathBuf>,
    pub(super) lease: Seconds,
    pub(super) max_resumes: u32,
}

impl Default for RawStore {
    fn default() -> RawStore {
        let defaults = crate::store::Settings::default();
        RawStore {
            url: None,
            path: None,
            lease: Seconds(defaults.lease.as_secs_f64()),
            max_resumes: defaults.max_resumes,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawCache {
    pub(super) dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct RawPlugin {
    pub(super) isolation: Option<crate::plan::Isolation>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
pub(super) struct RawHttp {
    pub(super) host: String,
    pub(super) port: Port,
    pub(super) body_limit: Bytes,
    pub(super) header_timeout: Seconds,
    pub(super) body_timeout: Seconds,
    pub(super) keepalive_timeout: Option<Seconds>,
    pub(super) max_connections: Option<usize>,
    pub(super) cors_origins: Vec<String>,
    pub(super) allowed_hosts: Vec<String>,
    pub(super) api_key: Option<String>,
    pub(super) keepalive_secs: Seconds,
    pub(super) shutdown_timeout: Seconds,
    pub(super) drain_delay: Seconds,
    pub(super) mcp_stateless: bool,
    pub(super) mcp_max_sessions: usize,
    pub(super) mcp_state_key: Option<String>,
    /// FlowLLM's uvicorn keep-alive (`keepalive_timeout` when that is not set).
    pub(super) timeout_keep_alive: Option<Seconds>,
    /// FlowLLM's uvicorn concurrency limit (`ops.max_concurrency` when that is not set).
    pub(super) limit_concurrency: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum OneOrMany {
    One(PathBuf),
    Many(Vec<PathBuf>),
}

impl Default for Raw {
    fn default() -> Raw {
        Raw {
            backend: Backend::Http,
            http: RawHttp::default(),
            flows_dir: OneOrMany::One(PathBuf::from("flows")),
            plugin_dirs: Vec::new(),
            enabled_flows: Vec::new(),
            disabled_flows: Vec::new(),
            llm: Value::Null,
            watch: true,
            debounce_ms: 50,
            // An op that waits (a tick, an LLM token) holds its thread; a small cap made 512
            // waiting streams starve every other flow. Waiting threads cost little on Linux
            // (stack touched, not reserved); the user-facing bound is admission control.
            max_op_threads: DEFAULT_MAX_OP_THREADS,
            ops: RawOps::default(),
            plugins: Default::default(),
            cache: RawCache::default(),
            runs: RawRuns::default(),
            store: RawStore::default(),
            auth: Value::Null,
            audit: Value::Null,
            telemetry: Value::Null,
            external_mcp: Value::Null,
            flow: Value::Null,
        }
    }
}

impl Default for RawHttp {
    fn default() -> RawHttp {
        RawHttp {
            host: "127.0.0.1".into(),
            port: Port(8002),
            body_limit: Bytes(1024 * 1024),
            header_timeout: Seconds(10.0),
            body_timeout: Seconds(30.0),
            keepalive_timeout: None,
            max_connections: None,
            cors_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            api_key: None,
            keepalive_secs: Seconds(15.0),
            shutdown_timeout: Seconds(10.0),
            drain_delay: Seconds(0.0),
            mcp_stateless: false,
            mcp_max_sessions: 1024,
            mcp_state_key: None,
            timeout_keep_alive: None,
            limit_concurrency: None,
        }
    }
}
