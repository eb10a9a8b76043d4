//! Traces over HTTP: the server span of every request (HTTP semantic conventions), under the
//! caller's `traceparent` when it sends one, lasting until the response body is done (a
//! stream's span ends with the stream); handlers find it as a [`Cx`] in the request's
//! extensions. With tracing off, one branch and nothing else.

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use crate::telemetry::{Attr, Cx, Kind, Role, Span};

/// The router's routes (`ROUTES`: method, template).
pub(super) type Routes = &'static [(&'static str, &'static str)];

/// The route template of `routes` a path is served by (`/{flow}` for `/echo_flow`), as the
/// router matches: a template without parameters first, then one with them, segment by
/// segment; `None` for a path no route serves (the 404 fallback). The docs page (`/docs`,
/// `/docs/`, its assets under `/docs/`) and `/mcp/` (the nested service's) are served by
/// routes the table names once.
pub(super) fn route_of(routes: Routes, path: &str) -> Option<&'static str> {
    match path {
        "/docs" => return Some("/docs/"),
        "/mcp/" => return Some("/mcp"),
        _ if path.starts_with("/docs/") => return Some("/docs/"),
        _ => {}
    }
    let routes = routes.iter().map(|(_, template)| *template);
    if let Some(exact) = routes.clone().find(|template| *template == path) {
        return Some(exact);
    }
    routes
        .filter(|template| template.contains('{'))
        .find(|template| {
            let mut segments = path.split('/');
            let mut parts = template.split('/');
            loop {
                match (parts.next(), segments.next()) {
                    (None, None) => return true,
                    (Some(part), Some(segment)) if part.starts_with('{') => {
                        if segment.is_empty() {
                            return false;
                        }
                    }
                    (Some(part), Some(segment)) if part == segment => {}
                    _ => return false,
                }
            }
        })
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
        let route = || *route.get_or_init(|| route_of(routes, request.uri().path()));
        parent.start_with(
            Kind::Server,
            || {
                let method = request.method().as_str();
                match route() {
                    Some(route) => format!("{method} {route}"),
                    None => method.to_string(),
                }
            },
            || {
                let mut attributes = vec![
                    Attr::new("http.request.method", request.method().as_str().to_string()),
                    Attr::new("url.path", request.uri().path().to_string()),
                    Attr::new("url.scheme", "http"),
                    Attr::new(
                        "network.protocol.version",
                        match request.version() {
                            axum::http::Version::HTTP_2 => "2",
                            axum::http::Version::HTTP_10 => "1.0",
                            _ => "1.1",
                        },
                    ),
                ];
                if let Some(route) = route() {
                    attributes.push(Attr::new("http.route", route));
                }
                if let Some(agent) = request
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                {
                    attributes.push(Attr::new("user_agent.original", agent.to_string()));
                }
                attributes
            },
        )
    };
    span.role(Role::Chain);
    request.extensions_mut().insert(span.cx());
    let response = next.run(request).await;
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set("error.type", status.as_str().to_string());
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
