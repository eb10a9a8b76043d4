//! `auth.jwt`: OAuth 2.1 bearer tokens (JWTs) checked against the issuer's JWKS. The JWKS is
//! fetched at start and kept; a token naming a key id the host does not know makes it fetch
//! again, at most once a minute, so a rotated key is picked up and a stream of made-up key ids
//! cannot turn into a stream of fetches. Accepted tokens are remembered (by their text) until
//! they expire or five minutes pass, so a caller that sends the same token again costs a hash
//! lookup, not a signature check.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::grant::Grant;
use super::rate::Rate;
use super::Caller;

/// The `auth.jwt` section.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) issuer: String,
    pub(crate) audience: Vec<String>,
    pub(crate) jwks_url: String,
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) leeway: Duration,
    /// What any token may reach at most (globs); its `flow:` scopes narrow it.
    pub(crate) flows: Vec<String>,
    pub(crate) scope_prefix: String,
    pub(crate) rate: Option<Rate>,
    /// The resource identifier in the protected-resource metadata; None: the request's own
    /// base URL.
    pub(crate) resource: Option<String>,
    /// The metadata's `authorization_servers`; empty: the issuer.
    pub(crate) authorization_servers: Vec<String>,
}

/// The algorithms a JWKS may be used with: asymmetric only (an HMAC key "verified" with a
/// public key is the classic confusion attack, and `none` is no signature at all).
pub(crate) const ALGORITHMS: &[(&str, Algorithm)] = &[
    ("RS256", Algorithm::RS256),
    ("RS384", Algorithm::RS384),
    ("RS512", Algorithm::RS512),
    ("PS256", Algorithm::PS256),
    ("PS384", Algorithm::PS384),
    ("PS512", Algorithm::PS512),
    ("ES256", Algorithm::ES256),
    ("ES384", Algorithm::ES384),
    ("EdDSA", Algorithm::EdDSA),
];

/// How often an unknown key id may make the host fetch the JWKS again.
const REFETCH_EVERY: Duration = Duration::from_secs(60);
/// Longest time an accepted token is remembered, and how many are.
const REMEMBER_FOR: Duration = Duration::from_secs(300);
const MAX_REMEMBERED: usize = 4096;

#[derive(Default)]
struct Keys {
    /// By key id; keys without one are tried in order.
    by_kid: HashMap<String, (DecodingKey, Option<Algorithm>)>,
    unnamed: Vec<(DecodingKey, Option<Algorithm>)>,
}

/// Checks bearer tokens.
pub(crate) struct Verifier {
    settings: Settings,
    flows: Arc<Grant>,
    client: reqwest::Client,
    keys: RwLock<Arc<Keys>>,
    /// When an unknown key id last made the host fetch the JWKS (fetches are one at a time).
    fetched: tokio::sync::Mutex<Option<Instant>>,
    remembered: Mutex<HashMap<Box<str>, Remembered>>,
}

/// An accepted token's caller, until when it may be taken without a check.
type Remembered = (Arc<Caller>, Instant);

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    scp: Option<serde_json::Value>,
}

impl Verifier {
    /// Fetches the JWKS once; a failure is logged and tokens are refused until a later fetch
    /// (on the next token) succeeds.
    pub(crate) async fn new(settings: Settings, flows: Grant) -> Verifier {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        let verifier = Verifier {
            settings,
            flows: Arc::new(flows),
            client,
            keys: RwLock::default(),
            fetched: tokio::sync::Mutex::new(None),
            remembered: Mutex::default(),
        };
        verifier.refetch(true).await;
        verifier
    }

    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Fetches the JWKS (`force`: at start), or for an unknown key id unless one already made
    /// it fetch in the last minute.
    async fn refetch(&self, force: bool) {
        let mut last = self.fetched.lock().await;
        if !force {
            if last.is_some_and(|at| at.elapsed() < REFETCH_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(
                    "auth.jwt: {} key(s) from {}",
                    keys.by_kid.len() + keys.unnamed.len(),
                    self.settings.jwks_url
                );
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                // A key that left the set takes its tokens with it.
                self.remembered
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clear();
            }
            Err(err) => {
                let kept = {
                    let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
                    keys.by_kid.len() + keys.unnamed.len()
                };
                if kept > 0 {
                    tracing::warn!(
                        "auth.jwt: could not fetch the JWKS from {}: {err}; the {kept} key(s) read before stay in use",
                        self.settings.jwks_url
                    );
                } else {
                    tracing::error!(
                        "auth.jwt: could not fetch the JWKS from {}: {err}; bearer tokens are refused until it can be read (tried again every few minutes, and for a new key id at most once a minute)",
                        self.settings.jwks_url
                    );
                }
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, String> {
        let response = self
            .client
            .get(&self.settings.jwks_url)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let bytes = response.bytes().await.map_err(|err| err.to_string())?;
        if bytes.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the JWKS is {} bytes, more than the {MAX_JWKS_BYTES} read",
                bytes.len()
            ));
        }
        let body: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|err| format!("not JSON: {err}"))?;
        Ok(keys_of(&body))
    }

    /// The key for `kid`: `Ok(None)` when the JWKS does not have it (worth a refetch),
    /// `Err` when it has it but not for `alg` (a refetch would not help).
    fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<Option<DecodingKey>, String> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let fits = |(key, key_alg): &(DecodingKey, Option<Algorithm>)| match key_alg {
            Some(a) if *a != alg => Err(format!(
                "the key `{}` is for {a:?}, not the token's {alg:?}",
                kid.unwrap_or_default()
            )),
            _ => Ok(Some(key.clone())),
        };
        match kid {
            Some(kid) => keys.by_kid.get(kid).map_or(Ok(None), fits),
            None if keys.unnamed.len() + keys.by_kid.len() == 1 => keys
                .unnamed
                .iter()
                .chain(keys.by_kid.values())
                .next()
                .map_or(Ok(None), fits),
            None if keys.unnamed.len() + keys.by_kid.len() > 1 => {
                Err("the token names no key id (`kid`) and the JWKS has several keys".to_string())
            }
            None => Ok(None),
        }
    }

    /// The caller a token speaks for, or why it is refused.
    pub(crate) async fn verify(&self, token: &str) -> Result<Arc<Caller>, String> {
        if let Some(caller) = self.remembered(token) {
            return Ok(caller);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|err| {
            format!("not a signed JWT ({err}; `alg: none` and unknown algorithms are refused)")
        })?;
        if !self.settings.algorithms.contains(&header.alg) {
            return Err(format!(
                "algorithm {:?} is not accepted (auth.jwt.algorithms: {})",
                header.alg,
                names(&self.settings.algorithms)
            ));
        }
        let kid = header.kid.as_deref();
        let key = match self.key(kid, header.alg)? {
            Some(key) => key,
            None => {
                self.refetch(false).await;
                self.key(kid, header.alg)?.ok_or_else(|| match kid {
                    Some(kid) => format!("unknown key id `{kid}` (not in the issuer's JWKS)"),
                    None => "the issuer's JWKS has no key".to_string(),
                })?
            }
        };
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&self.settings.audience);
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|err| reason(&err))?;
        let exp = data_exp(token).unwrap_or(0);
        let claims = data.claims;
        let Some(sub) = claims.sub.clone().filter(|s| !s.is_empty()) else {
            return Err("the token has no `sub` claim".to_string());
        };
        let scopes: Vec<String> = scopes(&claims)
            .filter_map(|s| {
                s.strip_prefix(&self.settings.scope_prefix)
                    .map(str::to_string)
            })
            .collect();
        let grant = Grant::new(&scopes)
            .map_err(|err| format!("scope: {err}"))?
            .and(self.flows.clone());
        let caller = Arc::new(Caller {
            owner: format!("jwt:{sub}").into(),
            subject: sub.into(),
            label: "jwt".into(),
            grant: Arc::new(grant),
            rate: self.settings.rate,
            via: "jwt",
            calls: super::Calls::default(),
        });
        self.remember(token, &caller, exp);
        Ok(caller)
    }

    fn remembered(&self, token: &str) -> Option<Arc<Caller>> {
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        let (caller, until) = remembered.get(token)?;
        (Instant::now() < *until).then(|| caller.clone())
    }

    fn remember(&self, token: &str, caller: &Arc<Caller>, exp: u64) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let left = Duration::from_secs(exp.saturating_sub(now)).min(REMEMBER_FOR);
        let mut remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
        if remembered.len() >= MAX_REMEMBERED {
            let now = Instant::now();
            remembered.retain(|_, (_, until)| *until > now);
            if remembered.len() >= MAX_REMEMBERED {
                remembered.clear();
            }
        }
        remembered.insert(token.into(), (caller.clone(), Instant::now() + left));
    }
}

/// Fetches the JWKS again every few minutes, off the request path: a key the issuer removed
/// stops verifying (and the tokens it signed are forgotten) within that time.
pub(crate) fn keep_fresh(verifier: &Arc<Verifier>) {
    let verifier = Arc::downgrade(verifier);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(REFRESH_EVERY).await;
            let Some(verifier) = verifier.upgrade() else {
                return;
            };
            verifier.refetch(true).await;
        }
    });
}

/// How often the JWKS is fetched again on its own.
const REFRESH_EVERY: Duration = Duration::from_secs(300);

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// The token's `exp` (already checked by `decode`), for how long to remember it.
fn data_exp(token: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct Exp {
        exp: u64,
    }
    let payload = token.split('.').nth(1)?;
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    serde_json::from_slice::<Exp>(&bytes).ok().map(|e| e.exp)
}

/// `scope` (space-separated, RFC 8693/OAuth) or `scp` (a list or a string).
fn scopes(claims: &Claims) -> impl Iterator<Item = &str> {
    let listed: Vec<&str> = match &claims.scp {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str()).collect(),
        Some(serde_json::Value::String(text)) => text.split_whitespace().collect(),
        _ => Vec::new(),
    };
    claims
        .scope
        .as_deref()
        .unwrap_or_default()
        .split_whitespace()
        .chain(listed)
}

fn reason(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match err.kind() {
        K::ExpiredSignature => "the token has expired".into(),
        K::ImmatureSignature => "the token is not valid yet (nbf)".into(),
        K::InvalidAudience => "the token is for another audience (aud)".into(),
        K::InvalidIssuer => "the token is from another issuer (iss)".into(),
        K::InvalidSignature => "the signature does not verify".into(),
        K::InvalidAlgorithm => "the key does not fit the token's algorithm".into(),
        K::MissingRequiredClaim(claim) => format!("the token has no `{claim}` claim"),
        _ => format!("the token is not valid: {err}"),
    }
}

fn names(algorithms: &[Algorithm]) -> String {
    algorithms
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The usable public keys of a JWKS document; others (symmetric keys, unknown types, keys
/// for encryption) are skipped.
fn keys_of(document: &serde_json::Value) -> Keys {
    let mut keys = Keys::default();
    let Some(items) = document.get("keys").and_then(|k| k.as_array()) else {
        return keys;
    };
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            || item.get("use").and_then(|u| u.as_str()) == Some("enc")
        {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        let alg = item
            .get("alg")
            .and_then(|a| a.as_str())
            .and_then(|name| ALGORITHMS.iter().find(|(n, _)| *n == name))
            .map(|(_, a)| *a);
        match &jwk.common.key_id {
            Some(kid) => {
                keys.by_kid.insert(kid.clone(), (key, alg));
            }
            None => keys.unnamed.push((key, alg)),
        }
    }
    keys
}

/// Parses a token's header and claims without checking anything (for the fuzz tests: the
/// parser must never panic on hostile text).
pub(crate) fn parse_unverified(token: &str) -> Option<String> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    Some(format!("{:?}{:?}", header.alg, data_exp(token)))
}
