//! What every HTTP handler shares: the catalog, the options, run options, the drain flag and
//! the request policy. Knows nothing of routes.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::guard::Policy;
use super::settings::Settings as Options;
use crate::catalog::Catalog;
use crate::exec;
use crate::metrics as m;

/// What every handler shares: one pointer, so the per-request clones axum makes (one per
/// layer and handler that takes `State`) cost one atomic increment, not a copy of every field
/// (they were 8% of a non-stream request's CPU).
#[derive(Clone)]
pub(crate) struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
pub(crate) struct Shared {
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) options: Arc<Options>,
    /// Fires when the shutdown deadline passes: streams still running are ended.
    pub(crate) hard_stop: CancellationToken,
    /// What every run starts with (the LLM service).
    pub(crate) run_options: exec::Options,
    /// False from the moment a drain begins (`GET /ready` answers 503).
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) policy: Policy,
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// Async runs (`Prefer: respond-async`).
    pub(crate) runs: Arc<super::runs::store::Store>,
    /// Who may call what, rate limits, the audit trail.
    pub(crate) auth: Arc<crate::auth::Auth>,
}

impl AppState {
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        options: Options,
        run_options: exec::Options,
        durable: Option<super::runs::kept::Durable>,
        auth: Arc<crate::auth::Auth>,
    ) -> AppState {
        AppState(Arc::new(Shared {
            catalog,
            policy: Policy::new(&options, auth.clone()),
            auth,
            runs: Arc::new(super::runs::store::Store::new(
                options.runs.clone(),
                durable,
            )),
            options: Arc::new(options),
            hard_stop: CancellationToken::new(),
            run_options,
            ready: Arc::new(AtomicBool::new(true)),
            metrics: m::handle(),
        }))
    }
}
