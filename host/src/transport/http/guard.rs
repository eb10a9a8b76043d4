//! What a request must pass before any route sees it: the `Host` check (DNS rebinding), the
//! `Origin` check (other web pages), JSON-only POST bodies (a browser's "simple" request needs
//! no preflight, so `text/plain` must not run a flow), the bearer credential (a key or a token:
//! the `Caller` it speaks for goes into the request's extensions, 401 when it speaks for
//! nobody), and CORS for the origins the configuration lists. Knows nothing of flows.

use axum::extract::Request;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use super::error::ApiError;
use super::settings::Settings as Options;
use crate::auth::{Auth, Caller, Denied};

/// The checks' view of the configuration, computed once.
#[derive(Clone)]
pub(crate) struct Policy {
    /// Lower-cased host names without port; `None` accepts any host.
    hosts: Option<Vec<String>>,
    /// Allowed foreign origins, lower-cased; `None` accepts any origin.
    origins: Option<Vec<String>>,
    pub(crate) auth: Arc<Auth>,
}

impl Policy {
    pub(crate) fn new(options: &Options, auth: Arc<Auth>) -> Policy {
        let hosts = options.effective_allowed_hosts();
        let origins = &options.cors_origins;
        Policy {
            hosts: (!hosts.iter().any(|h| h == "*")).then(|| {
                hosts
                    .iter()
                    .map(|h| strip_port(h).to_ascii_lowercase())
                    .collect()
            }),
            origins: (!origins.iter().any(|o| o == "*")).then(|| {
                origins
                    .iter()
                    .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                    .collect()
            }),
            auth,
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        // A port, if any, is digits (the `Host` is echoed in some answers).
        if port_of(host).is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
            return false;
        }
        match &self.hosts {
            None => true,
            Some(hosts) => {
                let name = strip_port(host);
                hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
            }
        }
    }

    /// Same origin (the `Origin`'s authority is the request's `Host`), or listed.
    fn origin_allowed(&self, origin: &str, host: Option<&str>) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if let Some(host) = host {
            let authority = origin.split_once("://").map_or("", |(_, rest)| rest);
            if authority == host.to_ascii_lowercase() {
                return true;
            }
        }
        match &self.origins {
            None => true,
            Some(origins) => origins.contains(&origin),
        }
    }
}

/// `host:port`, `[::1]:port` → the port; `host`, `[::1]`, `::1` → none.
fn port_of(authority: &str) -> Option<&str> {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest
            .split_once(']')
            .and_then(|(_, after)| after.strip_prefix(':'));
    }
    if authority.matches(':').count() == 1 {
        return authority.split_once(':').map(|(_, port)| port);
    }
    None
}

/// `host:port`, `[::1]:port`, `::1` → the host part.
fn strip_port(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    if authority.matches(':').count() == 1 {
        return authority.split(':').next().unwrap_or(authority);
    }
    authority
}

fn forbidden(message: String) -> Response {
    ApiError::new(StatusCode::FORBIDDEN, message).into_response()
}

/// The `Host`, `Origin` and content-type checks, in that order, on every route (the first
/// thing [`super::layers::every_request`] does): the answer refusing the request, if any.
pub(crate) fn refuse(policy: &Policy, request: &Request) -> Option<Response> {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()));
    if let Some(host) = host {
        if !policy.host_allowed(host) {
            return Some(forbidden(format!(
                "Host `{host}` is not allowed; add its name to http.allowed_hosts (default: \
                 localhost names and the bind address; `*` accepts any)"
            )));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !policy.origin_allowed(origin, host) {
            return Some(forbidden(format!(
                "Origin `{origin}` is not allowed: only this server's own pages and the origins \
                 in http.cors_origins may call it"
            )));
        }
    }
    if request.method() == Method::POST {
        if let Some(problem) = content_type_problem(headers) {
            return Some(
                ApiError::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, problem).into_response(),
            );
        }
    }
    None
}

/// POST bodies are JSON: `application/json` or any `+json` type. No content type is accepted
/// only for an empty body (`curl -X POST` with no data).
fn content_type_problem(headers: &HeaderMap) -> Option<String> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        let empty = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| v.trim() == "0");
        let chunked = headers.contains_key(header::TRANSFER_ENCODING);
        return (!empty || chunked).then(|| {
            "a POST body must be JSON: send `Content-Type: application/json`".to_string()
        });
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
    {
        return None;
    }
    Some(format!(
        "unsupported content type `{text}`: a POST body must be JSON (`Content-Type: application/json`)"
    ))
}

/// `Authorization: Bearer <credential>` (the scheme in any case).
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
}

/// Who the request speaks for, put in its extensions for every route (and `/mcp`) to read;
/// 401 without a credential that speaks for someone, on every route but `/health`, `/ready`,
/// the docs page, the playground page and their assets and the protected-resource metadata (a
/// browser or a probe loads those without a header; the data behind them needs a credential).
/// The request goes on (`Ok`) with its [`Caller`] in its extensions, or is answered (`Err`).
pub(crate) async fn authorize(policy: &Policy, mut request: Request) -> Result<Request, Response> {
    let public = request.method() == Method::OPTIONS || is_public(request.uri().path());
    let identified = policy.auth.identify(bearer(request.headers())).await;
    let denied = match identified {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            return Ok(request);
        }
        Err(_) if public => return Ok(request),
        Err(denied) => denied,
    };
    let base = base_url(request.headers());
    let message = match &denied {
        Denied::Missing if policy.auth.jwt().is_some() => {
            "missing credential: send `Authorization: Bearer <token>` (an OAuth access token for this server, or an API key)".to_string()
        }
        Denied::Missing => "missing API key: send `Authorization: Bearer <key>`".to_string(),
        Denied::Invalid(reason) => format!("the credential was refused: {reason}"),
    };
    // OpenAI's error shape on its routes (the SDKs read `error.message`), FlowLLM's elsewhere.
    let mut response = if request.uri().path().starts_with("/v1/") {
        let body = serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}});
        (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response()
    } else {
        ApiError::new(StatusCode::UNAUTHORIZED, message).into_response()
    };
    let mut challenge = String::from("Bearer");
    if policy.auth.jwt().is_some() {
        // RFC 9728: the metadata of the resource asked for (`/mcp` has its own).
        let suffix = if request.uri().path().starts_with("/mcp") {
            "/mcp"
        } else {
            ""
        };
        challenge.push_str(&format!(
            " resource_metadata=\"{base}{METADATA_PATH}{suffix}\""
        ));
    }
    if let Denied::Invalid(reason) = &denied {
        // Quoted-string safe: visible ASCII, no quotes or backslashes.
        let reason: String = reason
            .chars()
            .map(|c| match c {
                '"' | '\\' => '\'',
                c if c.is_ascii_graphic() || c == ' ' => c,
                _ => '?',
            })
            .collect();
        challenge.push_str(&format!(
            "{} error=\"invalid_token\", error_description=\"{reason}\"",
            if challenge.len() > 6 { "," } else { "" }
        ));
    }
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    Err(response)
}

/// Where the RFC 9728 protected-resource metadata is served (and `.../mcp` for `/mcp`).
pub(crate) const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The URL the client reached this server at: `X-Forwarded-Proto` (a proxy's TLS) or http,
/// and the `Host` the checks above accepted.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let scheme = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .filter(|v| *v == "https" || *v == "http")
        .unwrap_or("http");
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("{scheme}://{host}")
}

/// The caller a handler serves: the one `authorize` found.
pub(crate) type Who = axum::Extension<Arc<Caller>>;

fn is_public(path: &str) -> bool {
    // Health and readiness (probes carry no key), the API docs, and the playground's page,
    // script and style: a browser loads those without a key, then the page asks for it and
    // sends it with everything else it reads. The protected-resource metadata is how a
    // client learns where to get a token.
    matches!(
        path,
        "/health" | "/ready" | "/docs" | "/docs/" | "/" | "/playground.js" | "/playground.css"
    ) || path.starts_with("/docs/")
        || path.starts_with(METADATA_PATH)
}

/// CORS for the listed origins only; none listed means no CORS headers at all, so browsers
/// keep other pages from reading answers.
pub(crate) fn cors(options: &Options) -> Option<CorsLayer> {
    if options.cors_origins.is_empty() {
        return None;
    }
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
        .expose_headers([header::HeaderName::from_static("mcp-session-id")]);
    Some(if options.cors_origins.iter().any(|o| o == "*") {
        layer.allow_origin(Any).allow_headers(Any)
    } else {
        let origins: Vec<HeaderValue> = options
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
            .collect();
        layer
            .allow_origin(AllowOrigin::list(origins))
            .allow_headers([
                header::CONTENT_TYPE,
                header::AUTHORIZATION,
                header::HeaderName::from_static("mcp-session-id"),
                header::HeaderName::from_static("mcp-protocol-version"),
                header::HeaderName::from_static("last-event-id"),
            ])
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(hosts: &[&str], origins: &[&str], bind: &str) -> Policy {
        Policy::new(
            &Options {
                host: bind.into(),
                port: 8002,
                body_limit: 1,
                header_timeout: std::time::Duration::from_secs(1),
                body_timeout: std::time::Duration::from_secs(1),
                keepalive_timeout: std::time::Duration::from_secs(1),
                max_connections: None,
                cors_origins: origins.iter().map(|s| s.to_string()).collect(),
                allowed_hosts: hosts.iter().map(|s| s.to_string()).collect(),
                api_key: Some("k3y".into()),
                keepalive: std::time::Duration::from_secs(1),
                shutdown_timeout: std::time::Duration::from_secs(1),
                drain_delay: std::time::Duration::ZERO,
                mcp_stateless: false,
                mcp_max_sessions: 1,
                mcp_state_key: None,
                runs: Default::default(),
            },
            Arc::new(Auth::open()),
        )
    }

    #[test]
    fn hosts() {
        let p = policy(&[], &[], "127.0.0.1");
        for ok in [
            "localhost",
            "localhost:8002",
            "127.0.0.1:1",
            "[::1]:8002",
            "::1",
            "LOCALHOST",
        ] {
            assert!(p.host_allowed(ok), "{ok}");
        }
        for bad in [
            "evil.example",
            "evil.example:8002",
            "localhost:1\", error=\"x",
            "localhost:",
            "[::1]:x",
            "127.0.0.2",
            "localhost.evil",
        ] {
            assert!(!p.host_allowed(bad), "{bad}");
        }
        let p = policy(&[], &[], "10.1.2.3");
        assert!(p.host_allowed("10.1.2.3:8002"));
        let p = policy(&["flowhost.default.svc"], &[], "0.0.0.0");
        assert!(p.host_allowed("flowhost.default.svc:8002"));
        assert!(!p.host_allowed("localhost"));
        assert!(policy(&["*"], &[], "0.0.0.0").host_allowed("anything"));
    }

    #[test]
    fn origins() {
        let p = policy(&[], &["https://app.example"], "127.0.0.1");
        assert!(p.origin_allowed("http://localhost:8002", Some("localhost:8002")));
        assert!(p.origin_allowed("https://app.example", Some("localhost:8002")));
        assert!(!p.origin_allowed("http://evil.example", Some("localhost:8002")));
        assert!(!p.origin_allowed("http://localhost:9999", Some("localhost:8002")));
        assert!(!p.origin_allowed("null", Some("localhost:8002")));
        assert!(policy(&[], &["*"], "127.0.0.1").origin_allowed("http://x", None));
    }

    #[test]
    fn bearer_in_any_case() {
        for (value, found) in [
            ("Bearer k3y", Some("k3y")),
            ("bearer k3y", Some("k3y")),
            ("BEARER  k3y", Some("k3y")),
            ("Basic k3y", None),
            ("k3y", None),
        ] {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer(&headers), found, "{value}");
        }
    }

    #[test]
    fn content_types() {
        let check = |value: Option<&'static str>, length: &'static str| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            }
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static(length));
            content_type_problem(&headers)
        };
        assert_eq!(check(Some("application/json"), "2"), None);
        assert_eq!(check(Some("Application/JSON; charset=utf-8"), "2"), None);
        assert_eq!(check(Some("application/merge-patch+json"), "2"), None);
        assert_eq!(check(None, "0"), None);
        assert!(check(None, "2").is_some());
        assert!(check(Some("text/plain"), "2")
            .unwrap()
            .contains("`text/plain`"));
        assert!(check(Some("application/x-www-form-urlencoded"), "2").is_some());
    }
}
