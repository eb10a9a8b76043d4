//! The `auth:` and `audit:` sections as the auth part's `Settings`: named keys kept as hashes,
//! bearer tokens' issuer / audience / JWKS (no audience is an error, not "any"), the audit
//! file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::seconds;
use super::units::{Bytes, Seconds};
use crate::auth::{self, Rate};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAuth {
    keys: BTreeMap<String, Value>,
    jwt: Option<RawJwt>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    key_sha256: String,
    #[serde(default)]
    flows: Option<OneOrMany>,
    #[serde(default)]
    rate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawJwt {
    issuer: Option<String>,
    audience: Option<OneOrMany>,
    jwks_url: Option<String>,
    algorithms: Option<OneOrMany>,
    leeway: Option<Seconds>,
    flows: Option<OneOrMany>,
    scope_prefix: Option<String>,
    rate: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    authorization_servers: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawAudit {
    path: Option<PathBuf>,
    inputs: bool,
    max_bytes: Option<Bytes>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(self) -> Vec<String> {
        match self {
            OneOrMany::One(one) => vec![one],
            OneOrMany::Many(many) => many,
        }
    }
}

pub(super) fn section<T: serde::de::DeserializeOwned + Default>(
    where_: &str,
    name: &str,
    value: Value,
) -> Result<T, String> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_path_to_error::deserialize(value).map_err(|err| {
        let key = err.path().to_string();
        let message = super::units::reword(&err.inner().to_string());
        if key == "." {
            format!("{where_}: {name}: {message}")
        } else {
            format!("{where_}: {name}.{key}: {message}")
        }
    })
}

fn rate(where_: &str, key: &str, text: Option<String>) -> Result<Option<Rate>, String> {
    text.map(|t| Rate::parse(&t).map_err(|err| format!("{where_}: {key}: {err}")))
        .transpose()
}

/// The auth part's settings from `auth:`, `audit:` and `http.api_key`.
pub(super) fn auth_settings(
    where_: &str,
    auth: Value,
    audit: Value,
    api_key: Option<String>,
) -> Result<auth::Settings, String> {
    let raw: RawAuth = section(where_, "auth", auth)?;
    let mut keys = Vec::new();
    for (name, entry) in raw.keys {
        let at = format!("auth.keys.{name}");
        if auth::RESERVED_NAMES.contains(&name.as_str()) || name.contains(':') || name.is_empty() {
            return Err(format!(
                "{where_}: {at}: `{name}` cannot name a key: the host gives callers the subjects {} itself, and `:` marks a token's subject (`jwt:SUB`); choose another name",
                auth::RESERVED_NAMES.join(", ")
            ));
        }
        if entry.get("key").is_some() {
            return Err(format!(
                "{where_}: {at}.key: keys are not written in the config; write `key_sha256:` with the hash `flowhost auth hash-key` prints (it reads the key from stdin)"
            ));
        }
        let key: RawKey = serde_json::from_value(entry)
            .map_err(|err| format!("{where_}: {at}: {}", super::units::reword(&err.to_string())))?;
        let hex = key.key_sha256.trim().to_ascii_lowercase();
        let sha256 = decode_hex(&hex).ok_or_else(|| {
            format!(
                "{where_}: {at}.key_sha256: expected 64 hex digits (the SHA-256 `flowhost auth hash-key` prints), found `{}`",
                key.key_sha256
            )
        })?;
        let flows = key
            .flows
            .map_or_else(|| vec!["*".to_string()], OneOrMany::list);
        auth::Grant::new(&flows).map_err(|err| format!("{where_}: {at}.flows: {err}"))?;
        keys.push(auth::Key {
            rate: rate(where_, &format!("{at}.rate"), key.rate)?,
            name,
            sha256,
            flows,
        });
    }
    let jwt = match raw.jwt {
        None => None,
        Some(jwt) => Some(jwt_settings(where_, jwt)?),
    };
    let audit: RawAudit = section(where_, "audit", audit)?;
    Ok(auth::Settings {
        api_key,
        keys,
        jwt,
        audit: auth::audit::Settings {
            path: audit.path.filter(|p| !p.as_os_str().is_empty()),
            inputs: audit.inputs,
            max_bytes: audit
                .max_bytes
                .map_or(auth::audit::Settings::default().max_bytes, |b| b.0 as u64),
        },
    })
}

fn jwt_settings(where_: &str, jwt: RawJwt) -> Result<auth::jwt::Settings, String> {
    let required = |value: Option<String>, key: &str, why: &str| {
        value
            .filter(|v| !v.trim().is_empty())
            .ok_or_else(|| format!("{where_}: auth.jwt.{key} is required: {why}"))
    };
    let issuer = required(
        jwt.issuer,
        "issuer",
        "tokens are accepted only from your authorization server (its `iss`)",
    )?;
    let audience: Vec<String> = jwt
        .audience
        .map(OneOrMany::list)
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.trim().is_empty())
        .collect();
    if audience.is_empty() {
        return Err(format!(
            "{where_}: auth.jwt.audience is required: without it a token minted for any other service would be accepted here (set it to this server's resource identifier, e.g. https://flows.example.com)"
        ));
    }
    let jwks_url = required(jwt.jwks_url, "jwks_url", "the keys tokens are checked with (your authorization server's JWKS, e.g. https://auth.example.com/.well-known/jwks.json)")?;
    let authority = jwks_url
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or_default());
    let loopback = authority.is_some_and(|a| {
        let host = a.rsplit_once(':').map_or(a, |(host, _)| host);
        matches!(host, "127.0.0.1" | "localhost" | "[::1]")
    });
    if !jwks_url.starts_with("https://") && !loopback {
        return Err(format!(
            "{where_}: auth.jwt.jwks_url must be https:// (the keys every token is checked with must not be swappable on the way), found `{jwks_url}`; plain http only to this machine (127.0.0.1, localhost)"
        ));
    }
    let names = jwt.algorithms.map_or_else(
        || vec!["RS256".to_string(), "ES256".to_string()],
        OneOrMany::list,
    );
    let mut algorithms = Vec::new();
    for name in &names {
        let found = auth::jwt::ALGORITHMS
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        match found {
            Some((_, alg)) => algorithms.push(*alg),
            None if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") => {
                return Err(format!(
                    "{where_}: auth.jwt.algorithms: `{name}` is never accepted with a JWKS (`none` is no signature; an HMAC key would be the public key anyone can read)"
                ))
            }
            None => {
                return Err(format!(
                    "{where_}: auth.jwt.algorithms: unknown algorithm `{name}` (known: {})",
                    auth::jwt::ALGORITHMS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            }
        }
    }
    let flows = jwt
        .flows
        .map_or_else(|| vec!["*".to_string()], OneOrMany::list);
    auth::Grant::new(&flows).map_err(|err| format!("{where_}: auth.jwt.flows: {err}"))?;
    Ok(auth::jwt::Settings {
        issuer,
        audience,
        jwks_url,
        algorithms,
        leeway: match jwt.leeway {
            Some(Seconds(0.0)) => std::time::Duration::ZERO,
            Some(Seconds(s)) => seconds(where_, "auth.jwt.leeway", s)?,
            None => std::time::Duration::from_secs(60),
        },
        flows,
        scope_prefix: jwt.scope_prefix.unwrap_or_else(|| "flow:".into()),
        rate: rate(where_, "auth.jwt.rate", jwt.rate)?,
        resource: jwt.resource.filter(|r| !r.trim().is_empty()),
        authorization_servers: jwt.authorization_servers,
    })
}

fn decode_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}
