//! Traces over HTTP: the server span of every request (HTTP semantic conventions), under the
//! caller's `traceparent` when it sends one, lasting until the response body is done (a
//! stream's span ends with the stream); handlers find it as a [`Cx`] in the request's
//! extensions. With tracing off, one branch and nothing else.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::{Cx, Kind, Role, Span};

/// The router's routes (`ROUTES`: method, template).
pub(super) type Routes = &'static [(&'static str, &'static str)];

/// The route template of `routes` a path is served by (`/{flow}` for `/echo_flow`), as the
/// router matches (with the same matcher, `matchit`: a template without parameters first,
/// then one with them; a parameter is never empty); `None` for a path no route serves (the
/// 404 fallback). The docs page (`/docs`, `/docs/`, its assets under `/docs/`) and `/mcp/`
/// (the nested service's) are served by routes the table names once.
#[cfg(test)]
pub(super) fn route_of(routes: Routes, path: &str) -> Option<&'static str> {
    found(routes, path).map(|entry| entry.template)
}

/// A route and the names of its server spans, one per method it serves (`POST /{flow}`).
struct Entry {
    template: &'static str,
    names: Vec<(&'static str, String)>,
}

/// `routes` ready to match, made at the first request from the table it passes (there is
/// one, `ROUTES`; a later call's table is not looked at): a
/// traced request found its route by comparing every template, segment by segment, and
/// formatted its span's name; a sixth of what tracing added to a request.
struct Table {
    matcher: matchit::Router<usize>,
    entries: Vec<Entry>,
}

fn found(routes: Routes, path: &str) -> Option<&'static Entry> {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut matcher = matchit::Router::new();
        let entries: Vec<Entry> = routes
            .iter()
            .map(|(methods, template)| Entry {
                template,
                names: methods
                    .split(' ')
                    .map(|method| (method, format!("{method} {template}")))
                    .collect(),
            })
            .collect();
        for (at, entry) in entries.iter().enumerate() {
            // The router took the same templates (`the_route_table_is_the_routers`), and a
            // unit test checks each one is found here: none is refused.
            let _ = matcher.insert(entry.template, at);
        }
        Table { matcher, entries }
    });
    let path = match path {
        "/docs" => "/docs/",
        "/mcp/" => "/mcp",
        _ if path.starts_with("/docs/") => "/docs/",
        _ => path,
    };
    let matched = table.matcher.at(path).ok()?;
    if matched.params.iter().any(|(_, value)| value.is_empty()) {
        return None;
    }
    table.entries.get(*matched.value)
}

/// The request's server span: `{method} {route}`, with the route template, status code and
/// protocol; a 5xx answer marks it failed. It wraps the router (`serve`), not each route: a
/// layer on the routes costs every request a clone of the layers under it, and that was most
/// of what an unsampled request paid for tracing. The route is found in `routes` (the
/// router's table), only for a sampled span.
pub(crate) async fn server_span(
    State(routes): State<Routes>,
    mut request: Request,
    next: Next,
) -> Response {
    // Probes and scrapes are not requests worth a trace (and would be most of them).
    if !crate::telemetry::enabled()
        || matches!(request.uri().path(), "/health" | "/ready" | "/metrics")
    {
        return next.run(request).await;
    }
    let parent = Cx::from_headers(request.headers());
    // Looked up once, by whichever of the span's name and attributes asks first (both only
    // for a sampled span).
    let span = {
        let route = std::cell::OnceCell::new();
        let entry = || *route.get_or_init(|| found(routes, request.uri().path()));
        let route = || entry().map(|entry| entry.template);
        parent.start_with(
            Kind::Server,
            || -> Cow<'static, str> {
                let method = request.method().as_str();
                match entry() {
                    Some(entry) => match entry.names.iter().find(|(m, _)| *m == method) {
                        Some((_, name)) => Cow::Borrowed(name.as_str()),
                        None => Cow::Owned(format!("{method} {}", entry.template)),
                    },
                    None => Cow::Owned(method.to_string()),
                }
            },
            |attributes| {
                attributes.set("http.request.method", request.method().as_str());
                attributes.set("url.path", request.uri().path());
                attributes.set("url.scheme", "http");
                attributes.set(
                    "network.protocol.version",
                    match request.version() {
                        axum::http::Version::HTTP_2 => "2",
                        axum::http::Version::HTTP_10 => "1.0",
                        _ => "1.1",
                    },
                );
                if let Some(route) = route() {
                    attributes.set("http.route", route);
                }
                if let Some(agent) = request
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                {
                    attributes.set("user_agent.original", agent);
                }
            },
        )
    };
    span.role(Role::Chain);
    request.extensions_mut().insert(span.cx());
    let response = next.run(request).await;
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set("error.type", status.as_str());
        span.fail(status.canonical_reason().unwrap_or("server error"));
    }
    // An unsampled span records nothing: no need to hold it to the body's end.
    if !span.is_recording() {
        return response;
    }
    response.map(|body| Body::new(SpanBody { body, _span: span }))
}

/// A response body that holds the request's span until it is done or dropped.
struct SpanBody {
    body: Body,
    _span: Span,
}

impl http_body::Body for SpanBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
