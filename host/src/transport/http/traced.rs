//! Traces over HTTP: the server span of every request (HTTP semantic conventions), under the
//! caller's `traceparent` when it sends one, a stream's lasting until its body is done (an
//! answer of a known length ends with its handler); handlers find it as a [`Cx`] in the
//! request's extensions. With tracing off, one branch and nothing else.

use std::borrow::Cow;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::header;
use axum::response::Response;

use crate::telemetry::{Block, Cx, Kind, Role, Span};

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

/// [`route_of`] by the matcher alone, and whether this thread keeps `path` (tests: the kept
/// answers are the matcher's).
#[cfg(test)]
pub(super) fn route_by_matcher(routes: Routes, path: &str) -> (Option<&'static str>, bool) {
    let kept = RECENT
        .try_with(|recent| recent.borrow().0.iter().any(|(seen, _)| **seen == *path))
        .unwrap_or(false);
    (matched(routes, path).map(|entry| entry.template), kept)
}

/// A route and what its server spans start with, per method it serves.
struct Entry {
    template: &'static str,
    methods: Vec<Method>,
}

/// A route's server spans for one method: their name (`POST /{flow}`) and the attributes
/// that never change (method, scheme, route template, and the protocol's version: one block
/// per version, as [`version`] numbers them), written once.
struct Method {
    method: &'static str,
    name: String,
    attributes: [Block; 3],
}

/// The HTTP versions a server span names (`network.protocol.version`), in
/// [`Method::attributes`]' order.
const VERSIONS: [&str; 3] = ["1.0", "1.1", "2"];

/// The request's HTTP version: its name and its place in [`VERSIONS`] (any other is
/// named 1.1, as hyper serves it).
fn version(request: &Request) -> (&'static str, usize) {
    let at = match request.version() {
        axum::http::Version::HTTP_10 => 0,
        axum::http::Version::HTTP_2 => 2,
        _ => 1,
    };
    (VERSIONS[at], at)
}

/// `routes` ready to match, made at the first request from the table it passes (there is
/// one, `ROUTES`; a later call's table is not looked at): a
/// traced request found its route by comparing every template, segment by segment, and
/// formatted its span's name; a sixth of what tracing added to a request.
struct Table {
    matcher: matchit::Router<usize>,
    entries: Vec<Entry>,
}

/// Paths kept per thread, and the longest kept.
const KEPT: usize = 8;
const LONGEST: usize = 128;

type Recent = (Vec<(Box<str>, Option<&'static Entry>)>, usize);

thread_local! {
    /// The paths this thread looked up last and their routes, oldest replaced first.
    static RECENT: std::cell::RefCell<Recent> = const { std::cell::RefCell::new((Vec::new(), 0)) };
}

/// [`matched`], through the paths this thread looked up last (a request's path is most often
/// one it served a moment ago: the matcher's walk was a tenth of what a traced request paid).
/// Kept: paths of one segment a route serves (`/{flow}`, `/health`); not a path with an id
/// in it (`/runs/{id}`: a poller's every path is new) nor one no route serves.
fn found(routes: Routes, path: &str) -> Option<&'static Entry> {
    let kept = RECENT.try_with(|recent| {
        let recent = recent.borrow();
        recent
            .0
            .iter()
            .find(|(seen, _)| **seen == *path)
            .map(|(_, entry)| *entry)
    });
    if let Ok(Some(entry)) = kept {
        return entry;
    }
    let entry = matched(routes, path);
    let one_segment = entry.is_some_and(|entry| !entry.template[1..].contains('/'));
    if one_segment && path.len() <= LONGEST {
        let _ = RECENT.try_with(|recent| {
            let (paths, next) = &mut *recent.borrow_mut();
            if paths.len() < KEPT {
                paths.push((path.into(), entry));
            } else {
                paths[*next] = (path.into(), entry);
                *next = (*next + 1) % KEPT;
            }
        });
    }
    entry
}

fn matched(routes: Routes, path: &str) -> Option<&'static Entry> {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut matcher = matchit::Router::new();
        let entries: Vec<Entry> = routes
            .iter()
            .map(|(methods, template)| Entry {
                template,
                methods: methods
                    .split(' ')
                    .map(|method| Method {
                        method,
                        name: format!("{method} {template}"),
                        attributes: VERSIONS.map(|version| {
                            Block::new(&[
                                ("http.request.method", method.into()),
                                ("url.scheme", "http".into()),
                                ("http.route", (*template).into()),
                                ("network.protocol.version", version.into()),
                            ])
                        }),
                    })
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
///
/// A plain tower layer, not axum's `from_fn`: that one boxes the service under it and the
/// future of every request, and moves the request's futures into those boxes; with 1%
/// sampling it was half of what the other 99% of requests paid for tracing.
#[derive(Clone, Copy)]
pub(super) struct ServerSpans(pub(super) Routes);

impl<S> tower::Layer<S> for ServerSpans {
    type Service = WithSpan<S>;

    fn layer(&self, inner: S) -> WithSpan<S> {
        WithSpan {
            inner,
            routes: self.0,
        }
    }
}

/// The service under [`ServerSpans`].
#[derive(Clone)]
pub(super) struct WithSpan<S> {
    inner: S,
    routes: Routes,
}

impl<S> tower::Service<Request> for WithSpan<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Answer<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Answer<S::Future> {
        let span = start(self.routes, &mut request);
        Answer {
            future: self.inner.call(request),
            span,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's answer under way, and its server span (none for a probe).
    pub(super) struct Answer<F> {
        #[pin]
        future: F,
        span: Option<Span>,
    }
}

impl<F, E> std::future::Future for Answer<F>
where
    F: std::future::Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.future.poll(cx))?;
        Poll::Ready(Ok(match this.span.take() {
            Some(span) => finish(span, response),
            None => response,
        }))
    }
}

/// Starts the request's server span and hands it to the handlers (a [`Cx`] in the request's
/// extensions); `None` for probes and scrapes.
fn start(routes: Routes, request: &mut Request) -> Option<Span> {
    // Probes and scrapes are not requests worth a trace (and would be most of them).
    if !crate::telemetry::enabled()
        || matches!(request.uri().path(), "/health" | "/ready" | "/metrics")
    {
        return None;
    }
    let parent = Cx::from_headers(request.headers());
    // Looked up once, by whichever of the span's name and attributes asks first (both only
    // for a sampled span).
    let span = {
        let route = std::cell::OnceCell::new();
        let entry = || *route.get_or_init(|| found(routes, request.uri().path()));
        let known = || {
            let method = request.method().as_str();
            entry().and_then(|entry| entry.methods.iter().find(|m| m.method == method))
        };
        parent.start_with(
            Kind::Server,
            || -> Cow<'static, str> {
                let method = request.method().as_str();
                match (entry(), known()) {
                    (_, Some(known)) => Cow::Borrowed(known.name.as_str()),
                    (Some(entry), None) => Cow::Owned(format!("{method} {}", entry.template)),
                    (None, _) => Cow::Owned(method.to_string()),
                }
            },
            |attributes| {
                let (version, at) = version(request);
                match known().and_then(|known| known.attributes.get(at)) {
                    Some(block) => attributes.extend(block),
                    None => {
                        attributes.set("http.request.method", request.method().as_str());
                        attributes.set("url.scheme", "http");
                        if let Some(entry) = entry() {
                            attributes.set("http.route", entry.template);
                        }
                        attributes.set("network.protocol.version", version);
                    }
                }
                attributes.set("url.path", request.uri().path());
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
    Some(span)
}

/// The answer's status on the span, which ends now or, for a stream, with its body.
fn finish(span: Span, response: Response) -> Response {
    let status = response.status();
    span.set("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.set("error.type", status.as_str());
        span.fail(status.canonical_reason().unwrap_or("server error"));
    }
    // An unsampled span records nothing: no need to hold it to the body's end. Nor does an
    // answer whose body is whole already (a JSON answer, an error: its length known, it is
    // written at once): the span ends here, without a boxed body around it for each request.
    // A stream's body (length unknown) holds it to its end.
    if !span.is_recording()
        || http_body::Body::size_hint(response.body())
            .exact()
            .is_some()
    {
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
