//! Who is calling and what they may call. A credential in, a [`Caller`] out: named keys
//! (`auth.keys`, kept as SHA-256 hashes), the shared key (`http.api_key`, subject `default`),
//! OAuth 2.1 bearer tokens (`auth.jwt`, checked against the issuer's JWKS). Each caller has a
//! [`Grant`] (the flows it may see and call), maybe a [`Rate`] (a token bucket), and every call
//! it makes is counted and written to the audit trail ([`Call`]). Knows nothing of HTTP or
//! MCP: the transports read the credential and answer refusals in their own terms.
//!
//! Settings are read at start; changing keys, tokens' settings or the audit needs a restart
//! (flows come and go live, and grants are patterns, so a new flow is covered at once).

pub(crate) mod audit;
mod grant;
pub(crate) mod jwt;
mod rate;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub(crate) use self::grant::Grant;
pub(crate) use self::rate::Rate;
use crate::metrics as m;
use crate::store;

/// The `auth` and `audit` sections (and `http.api_key`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Settings {
    /// `http.api_key`: subject `default`, every flow.
    pub(crate) api_key: Option<String>,
    pub(crate) keys: Vec<Key>,
    pub(crate) jwt: Option<jwt::Settings>,
    pub(crate) audit: audit::Settings,
}

/// One of `auth.keys`.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub(crate) name: String,
    pub(crate) sha256: [u8; 32],
    pub(crate) flows: Vec<String>,
    pub(crate) rate: Option<Rate>,
}

impl Settings {
    /// Whether any credential is asked for.
    pub(crate) fn required(&self) -> bool {
        self.api_key.is_some() || !self.keys.is_empty() || self.jwt.is_some()
    }
}

/// Who a request speaks for.
#[derive(Debug)]
pub(crate) struct Caller {
    /// A key's name, a token's `sub`, `default` (http.api_key), `anonymous` (no auth
    /// configured) or `local` (MCP over stdio).
    pub(crate) subject: Arc<str>,
    /// The metrics label: the subject for configured keys, `jwt` for every token.
    pub(crate) label: Arc<str>,
    /// What its runs, tasks, idempotency keys and rate-limit bucket are kept under: the
    /// subject, with `jwt:` before a token's (a token whose `sub` is a key's name is not that
    /// key's caller).
    pub(crate) owner: Arc<str>,
    pub(crate) grant: Arc<Grant>,
    pub(crate) rate: Option<Rate>,
    /// How it was identified, for the audit: `key`, `api_key`, `jwt`, `none` (no auth
    /// configured) or `stdio`.
    pub(crate) via: &'static str,
    /// Its `flowhost_calls_total` counters, by outcome, once used: a counter looked up by its
    /// labels was a registry lookup and a string per call.
    pub(crate) calls: Calls,
}

/// A caller's call counters, one per [`Outcome`].
#[derive(Debug, Default)]
pub(crate) struct Calls([std::sync::OnceLock<metrics::Counter>; Outcome::COUNT]);

/// Names a key may not take: the subjects and owner prefixes the host gives callers itself.
pub(crate) const RESERVED_NAMES: &[&str] = &["default", "anonymous", "local", "nobody", "jwt"];

impl Caller {
    fn everything(subject: &str, via: &'static str) -> Caller {
        Caller {
            subject: subject.into(),
            label: subject.into(),
            owner: subject.into(),
            grant: Arc::new(Grant::all()),
            rate: None,
            via,
            calls: Calls::default(),
        }
    }

    /// MCP over stdio: the agent tool that started the host.
    pub(crate) fn local() -> Arc<Caller> {
        Arc::new(Caller::everything("local", "stdio"))
    }

    pub(crate) fn may_call(&self, flow: &str) -> bool {
        self.grant.allows(flow)
    }

    /// Whether a call of `flow` (which `exists` or not) is refused before anything else: a
    /// caller that may see every flow is told a missing flow is missing; any other gets the
    /// same refusal for a flow it may not call and for one that does not exist.
    pub(crate) fn refused(&self, flow: &str, exists: bool) -> bool {
        !(self.grant.is_all() || (self.may_call(flow) && exists))
    }
}

/// Why a request has no caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Denied {
    Missing,
    Invalid(String),
}

/// How a call ended, as the audit and the metrics say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Ok,
    Error,
    /// The client went away, or cancelled.
    Cancelled,
    Denied,
    RateLimited,
}

impl Outcome {
    /// How many there are ([`Calls`] has a counter for each, indexed by `outcome as usize`).
    const COUNT: usize = Outcome::RateLimited as usize + 1;

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
            Outcome::Denied => "denied",
            Outcome::RateLimited => "rate_limited",
        }
    }
}

/// A call past its caller's rate limit: the words and the seconds until the next call (each
/// transport answers in its own terms).
pub(crate) struct Limited {
    pub(crate) message: String,
    pub(crate) retry_after: u64,
}

/// The identities, limits and audit trail of one host.
pub(crate) struct Auth {
    required: bool,
    anonymous: Arc<Caller>,
    /// By the SHA-256 of the key.
    keys: HashMap<[u8; 32], Arc<Caller>>,
    jwt: Option<Arc<jwt::Verifier>>,
    limiter: rate::Limiter,
    audit: Option<audit::Audit>,
}

/// `flowhost auth hash-key`: what `auth.keys.NAME.key_sha256` holds for a key.
pub(crate) fn hash_key(key: &str) -> String {
    audit::hash(key.trim().as_bytes())
}

impl Auth {
    /// Fetches the JWKS (when `auth.jwt` is set) and opens the audit file.
    pub(crate) async fn new(
        settings: Settings,
        shared: Option<Arc<dyn store::Backend>>,
    ) -> Result<Auth, String> {
        let mut keys = HashMap::new();
        if let Some(key) = &settings.api_key {
            keys.insert(
                digest(key),
                Arc::new(Caller::everything("default", "api_key")),
            );
        }
        for key in &settings.keys {
            let grant = Grant::new(&key.flows)
                .map_err(|err| format!("auth.keys.{}.flows: {err}", key.name))?;
            let caller = Caller {
                subject: key.name.as_str().into(),
                label: key.name.as_str().into(),
                owner: key.name.as_str().into(),
                grant: Arc::new(grant),
                rate: key.rate,
                via: "key",
                calls: Calls::default(),
            };
            if keys.insert(key.sha256, Arc::new(caller)).is_some() {
                return Err(format!(
                    "auth.keys.{}: the same key as another entry (each key needs its own hash)",
                    key.name
                ));
            }
        }
        let jwt = match &settings.jwt {
            Some(jwt) => {
                let flows =
                    Grant::new(&jwt.flows).map_err(|err| format!("auth.jwt.flows: {err}"))?;
                let verifier = Arc::new(jwt::Verifier::new(jwt.clone(), flows).await);
                jwt::keep_fresh(&verifier);
                Some(verifier)
            }
            None => None,
        };
        Ok(Auth {
            required: settings.required(),
            anonymous: Arc::new(Caller::everything("anonymous", "none")),
            keys,
            jwt,
            limiter: rate::Limiter::new(shared),
            audit: audit::Audit::open(&settings.audit)?,
        })
    }

    /// No keys, no tokens, no audit: everyone is `anonymous` with every flow.
    pub(crate) fn open() -> Auth {
        Auth {
            required: false,
            anonymous: Arc::new(Caller::everything("anonymous", "none")),
            keys: HashMap::new(),
            jwt: None,
            limiter: rate::Limiter::new(None),
            audit: None,
        }
    }

    /// Waits (at most 2 s) for the audit trail's lines to reach the disk (at shutdown).
    pub(crate) fn flush(&self) {
        if let Some(audit) = &self.audit {
            audit.flush(Duration::from_secs(2));
        }
    }

    /// Whether requests must carry a credential.
    pub(crate) fn required(&self) -> bool {
        self.required
    }

    /// Whether calls are written to an audit trail (what a caller sends for it, its
    /// `traceparent`, is worth making only then).
    pub(crate) fn audits(&self) -> bool {
        self.audit.is_some()
    }

    /// Whether bearer tokens are accepted (the protected-resource metadata is served).
    pub(crate) fn jwt(&self) -> Option<&jwt::Settings> {
        self.jwt.as_ref().map(|v| v.settings())
    }

    /// The caller a bearer credential speaks for (`anonymous` when none is asked for).
    pub(crate) async fn identify(&self, bearer: Option<&str>) -> Result<Arc<Caller>, Denied> {
        if !self.required {
            return Ok(self.anonymous.clone());
        }
        let Some(token) = bearer.filter(|t| !t.is_empty()) else {
            metrics::counter!(m::AUTH_FAILURES, "reason" => "missing").increment(1);
            return Err(Denied::Missing);
        };
        // A key is looked up by its hash: comparing hashes leaks nothing about the key.
        if let Some(caller) = self.keys.get(&digest(token)) {
            return Ok(caller.clone());
        }
        let refused = match &self.jwt {
            Some(verifier) if token.matches('.').count() == 2 => {
                match verifier.verify(token).await {
                    Ok(caller) => return Ok(caller),
                    Err(reason) => reason,
                }
            }
            Some(_) => "neither a known key nor a JWT".to_string(),
            None => "not a known key".to_string(),
        };
        metrics::counter!(m::AUTH_FAILURES, "reason" => "invalid").increment(1);
        Err(Denied::Invalid(refused))
    }

    /// Takes one call from the caller's bucket, or says how long until it may call again.
    pub(crate) async fn admit(&self, caller: &Caller) -> Result<(), Duration> {
        match caller.rate {
            Some(rate) => self.limiter.take(&caller.owner, rate).await,
            None => Ok(()),
        }
    }

    /// Starts the record of one call: counted and audited when it ends (or is dropped: the
    /// client went away).
    pub(crate) fn call(
        self: &Arc<Self>,
        caller: &Arc<Caller>,
        transport: &'static str,
        flow: &str,
        traceparent: Option<&str>,
        input: Option<&serde_json::Map<String, serde_json::Value>>,
    ) -> Call {
        let audited = self.audit.as_ref();
        Call {
            auth: self.clone(),
            caller: caller.clone(),
            transport,
            flow: flow.to_string(),
            run_id: None,
            started: Instant::now(),
            time: audited.map(|_| now_text()),
            chunks: 0,
            traceparent: audited.and_then(|_| Some(clip(traceparent?, 128).to_string())),
            // Copied only when the trail keeps inputs.
            input: audited
                .filter(|a| a.inputs)
                .and(input)
                .map(|input| serde_json::Value::Object(input.clone())),
            ended: false,
        }
    }

    /// Records a call refused for its flow (`denied`).
    pub(crate) fn deny(
        self: &Arc<Self>,
        caller: &Arc<Caller>,
        transport: &'static str,
        flow: &str,
    ) {
        self.call(caller, transport, flow, None, None)
            .end(Outcome::Denied);
    }

    /// Takes one call from the caller's rate limit and starts its record; a call past the
    /// limit is recorded as `rate_limited` and refused with what to tell the caller.
    pub(crate) async fn start(
        self: &Arc<Self>,
        caller: &Arc<Caller>,
        transport: &'static str,
        flow: &str,
        traceparent: Option<&str>,
        input: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Call, Limited> {
        let call = self.call(caller, transport, flow, traceparent, Some(input));
        match self.admit(caller).await {
            Ok(()) => Ok(call),
            Err(wait) => {
                call.end(Outcome::RateLimited);
                let retry_after = wait.as_secs_f64().ceil().max(1.0) as u64;
                Err(Limited {
                    message: format!(
                        "rate limit reached: `{}` may make {} calls; retry in {retry_after} s",
                        caller.subject,
                        caller.rate.map(|r| r.to_string()).unwrap_or_default()
                    ),
                    retry_after,
                })
            }
        }
    }

    /// The RFC 9728 protected-resource metadata, for `base` (the URL the request reached,
    /// with the path of the protected resource), when bearer tokens are accepted.
    pub(crate) fn resource_metadata(&self, resource: &str) -> Option<serde_json::Value> {
        let jwt = self.jwt()?;
        let servers = if jwt.authorization_servers.is_empty() {
            vec![jwt.issuer.clone()]
        } else {
            jwt.authorization_servers.clone()
        };
        let mut scopes = vec![format!("{}*", jwt.scope_prefix)];
        scopes.extend(
            jwt.flows
                .iter()
                .filter(|f| f.as_str() != "*")
                .map(|f| format!("{}{f}", jwt.scope_prefix)),
        );
        Some(serde_json::json!({
            "resource": jwt.resource.clone().unwrap_or_else(|| resource.to_string()),
            "authorization_servers": servers,
            "scopes_supported": scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": "flowhost",
        }))
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn now_text() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// One call being made: counted in `flowhost_calls_total` and written to the audit trail
/// when it ends. Dropped without [`Call::end`]: the client went away (`cancelled`).
pub(crate) struct Call {
    auth: Arc<Auth>,
    caller: Arc<Caller>,
    transport: &'static str,
    flow: String,
    run_id: Option<String>,
    started: Instant,
    /// Set only when audited.
    time: Option<String>,
    chunks: u64,
    traceparent: Option<String>,
    input: Option<serde_json::Value>,
    ended: bool,
}

impl Call {
    pub(crate) fn run_id(&mut self, id: &str) {
        self.run_id = Some(id.to_string());
    }

    pub(crate) fn add_chunks(&mut self, n: usize) {
        self.chunks += n as u64;
    }

    pub(crate) fn end(mut self, outcome: Outcome) {
        self.record(outcome);
    }

    fn record(&mut self, outcome: Outcome) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let label = &self.caller.label;
        self.caller.calls.0[outcome as usize]
            .get_or_init(|| metrics::counter!(m::CALLS, "subject" => label.to_string(), "outcome" => outcome.as_str()))
            .increment(1);
        let (Some(audit), Some(time)) = (&self.auth.audit, self.time.take()) else {
            return;
        };
        audit.write(audit::Entry {
            time,
            subject: self.caller.subject.to_string(),
            via: self.caller.via,
            transport: self.transport,
            // A made-up name is the caller's to choose: bounded here.
            flow: clip(&self.flow, 128).to_string(),
            run_id: self.run_id.take(),
            outcome: outcome.as_str(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            chunks: self.chunks,
            traceparent: self.traceparent.take(),
            input: self.input.take(),
        });
    }
}

/// `text`'s first `chars` characters.
fn clip(text: &str, chars: usize) -> &str {
    match text.char_indices().nth(chars) {
        Some((at, _)) => &text[..at],
        None => text,
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.record(Outcome::Cancelled);
    }
}
