//! The playground (`GET /`, its script and style, all compiled in: no CDN, works offline)
//! and `GET /events`, the event stream of catalog changes the page follows (and any other tool
//! may: one `catalog` event at once, then one per reload).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

use super::state::AppState;
use crate::auth::Caller;

const PAGE: &str = include_str!("playground/index.html");
const SCRIPT: &str = include_str!("playground/playground.js");
const STYLE: &str = include_str!("playground/playground.css");

/// What the page may load and talk to: this origin only.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self' data:; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

pub(crate) async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        PAGE,
    )
        .into_response()
}

pub(crate) async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        SCRIPT,
    )
        .into_response()
}

pub(crate) async fn style() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        STYLE,
    )
        .into_response()
}

/// The catalog as one event: flows (as `GET /flows`), ops (as `GET /ops`) and the hashes.
fn catalog_event(state: &AppState, caller: &Caller) -> Bytes {
    let snapshot = state.catalog.snapshot();
    let data = serde_json::json!({
        "generation": snapshot.generation,
        "flows_hash": snapshot.flows_hash(),
        "plugins_hash": snapshot.plugins_hash(),
        "flows": snapshot.flows_json(|name| caller.may_call(name), caller.grant.is_all()),
        "ops": snapshot.ops_json(),
    });
    Bytes::from(format!("event: catalog\ndata: {data}\n\n"))
}

enum Next {
    Catalog,
    KeepAlive,
    End,
}

/// `GET /events`: `event: catalog` with the whole catalog now and after every reload,
/// keep-alive comments while quiet; ends when the host starts draining.
pub(crate) async fn events(
    State(state): State<AppState>,
    axum::Extension(caller): super::guard::Who,
) -> Response {
    let changes = state.catalog.subscribe();
    let first = catalog_event(&state, &caller);
    let keepalive = state.options.keepalive.max(Duration::from_millis(100));
    let stream = futures_util::stream::unfold(
        (state, changes, Some(first)),
        move |(state, mut changes, first)| {
            let caller = caller.clone();
            async move {
                if let Some(first) = first {
                    return Some((
                        Ok::<_, std::convert::Infallible>(first),
                        (state, changes, None),
                    ));
                }
                // Wake at least every second to notice a drain.
                let tick = keepalive.min(Duration::from_secs(1));
                let mut quiet = Duration::ZERO;
                let next = loop {
                    if !state.ready.load(Ordering::Relaxed) {
                        break Next::End;
                    }
                    tokio::select! {
                        changed = changes.changed() => {
                            break if changed.is_ok() { Next::Catalog } else { Next::End };
                        }
                        _ = state.hard_stop.cancelled() => break Next::End,
                        _ = tokio::time::sleep(tick) => {
                            quiet += tick;
                            if quiet >= keepalive {
                                break Next::KeepAlive;
                            }
                        }
                    }
                };
                let bytes = match next {
                    Next::Catalog => catalog_event(&state, &caller),
                    Next::KeepAlive => Bytes::from_static(b": keep-alive\n\n"),
                    Next::End => return None,
                };
                Some((Ok(bytes), (state, changes, None)))
            }
        },
    );
    let mut response = Body::from_stream(stream).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
