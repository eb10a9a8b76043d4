//! Who may call what (issue 25): what a credential costs a non-stream call. The same JSON flow
//! under load with no auth, with a named key, with a JWT (ES256 against a JWKS this process
//! serves: fetched once at the host's start, never on the hot path; the host remembers an
//! accepted token, so the figure also shows the first, checked, call of each token), and
//! with a named key and the audit trail on. Alternating rounds, the median of each.

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

use crate::compare::{free_port, serve_command, start};

const FLOWS: &str = "fake_echo_flow:\n  flow_content: EchoOp()\n";
const KEY: &str = "bench-key";
const ROUNDS: usize = 5;
const SECONDS: u64 = 5;
const WORKERS: usize = 32;

/// An ES256 key pair: the JWKS that publishes it, and a token for `scope`.
struct Issuer {
    jwks: Value,
    key: jsonwebtoken::EncodingKey,
}

impl Issuer {
    fn new() -> Issuer {
        use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("an EC key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("the EC key");
        let point = pair.public_key().as_ref();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        Issuer {
            jwks: json!({"keys": [{
                "kty": "EC", "crv": "P-256", "kid": "bench", "alg": "ES256", "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }]}),
            key: jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref()),
        }
    }

    fn token(&self, sub: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("bench".into());
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        let claims = json!({
            "iss": "https://issuer.bench", "aud": "flowhost-bench", "sub": sub,
            "exp": exp, "scope": "flow:*",
        });
        jsonwebtoken::encode(&header, &claims, &self.key).expect("a token")
    }
}

/// Serves `jwks` at `/jwks.json` on a free port; returns its URL.
async fn serve_jwks(jwks: Value) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port for the JWKS");
    let url = format!(
        "http://{}/jwks.json",
        listener.local_addr().expect("its address")
    );
    let app = axum::Router::new().route(
        "/jwks.json",
        axum::routing::get(move || {
            let jwks = jwks.clone();
            async move { axum::Json(jwks) }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

fn sha256_hex(text: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, text.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub async fn run(bin_dir: &Path) -> Value {
    flowhost::llm::tls_init();
    let dir = tempfile::tempdir().expect("a temp folder");
    let flows = dir.path().join("flows");
    std::fs::create_dir_all(&flows).expect("flows folder");
    std::fs::write(flows.join("f.yaml"), FLOWS).expect("flow file");
    let issuer = Issuer::new();
    let jwks_url = serve_jwks(issuer.jwks.clone()).await;
    let config = |name: &str, body: String| {
        let path = dir.path().join(name);
        std::fs::write(&path, body).expect("config");
        path
    };
    let keys = format!(
        "auth:\n  keys:\n    bench: {{key_sha256: \"{}\"}}\n",
        sha256_hex(KEY)
    );
    let none = config("none.yaml", String::new());
    let key = config("key.yaml", keys.clone());
    let jwt = config(
        "jwt.yaml",
        format!("auth:\n  jwt:\n    issuer: https://issuer.bench\n    audience: flowhost-bench\n    jwks_url: {jwks_url}\n    algorithms: [ES256]\n"),
    );
    let audited = config(
        "audit.yaml",
        format!(
            "{keys}audit:\n  path: {}\n",
            dir.path().join("audit.jsonl").display()
        ),
    );
    let token = issuer.token("bench-caller");
    let setups: [(&str, &Path, Option<&str>); 4] = [
        ("no auth", &none, None),
        ("named key", &key, Some(KEY)),
        ("JWT (ES256)", &jwt, Some(&token)),
        ("named key + audit", &audited, Some(KEY)),
    ];
    let mut rounds: Vec<Vec<Value>> = vec![Vec::new(); setups.len()];
    for _ in 0..ROUNDS {
        for (i, (_, config, bearer)) in setups.iter().enumerate() {
            let port = free_port();
            let mut command = serve_command(bin_dir, port, &flows);
            command.arg("--config").arg(config);
            let server = start("flowhost", command, port, Duration::from_secs(60)).await;
            let result = crate::load::nonstream_as(
                &server.url,
                "fake_echo_flow",
                WORKERS,
                Duration::from_secs(SECONDS),
                *bearer,
            )
            .await;
            rounds[i].push(result);
        }
    }
    let median = |results: &[Value], key: &str| {
        let mut values: Vec<f64> = results.iter().filter_map(|r| r[key].as_f64()).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let base = median(&rounds[0], "requests_per_sec");
    let mut report = serde_json::Map::new();
    for (i, (name, _, _)) in setups.iter().enumerate() {
        let rps = median(&rounds[i], "requests_per_sec");
        report.insert(
            name.to_string(),
            json!({
                "requests_per_sec": rps.round(),
                "vs_no_auth_pct": ((rps / base - 1.0) * 1000.0).round() / 10.0,
                "p50_ms": median(&rounds[i], "p50_ms"),
                "p99_ms": median(&rounds[i], "p99_ms"),
                "errors": rounds[i].iter().filter_map(|r| r["errors"].as_u64()).sum::<u64>(),
                "rounds": rounds[i].iter().map(|r| r["requests_per_sec"].as_f64().unwrap_or(0.0).round()).collect::<Vec<_>>(),
            }),
        );
    }
    report.insert(
        "first_call_of_a_new_token_ms".into(),
        json!(first_calls(bin_dir, &flows, &jwt, &issuer).await),
    );
    report.insert(
        "setup".into(),
        json!(format!("{WORKERS} workers, {SECONDS} s per round, {ROUNDS} alternating rounds, median; a JSON flow (EchoOp)")),
    );
    Value::Object(report)
}

/// The latency of a call with a token the host has not seen (its signature checked), median
/// of 200 distinct tokens, one at a time.
async fn first_calls(bin_dir: &Path, flows: &Path, config: &Path, issuer: &Issuer) -> f64 {
    let port = free_port();
    let mut command = serve_command(bin_dir, port, flows);
    command.arg("--config").arg(config);
    let server = start("flowhost", command, port, Duration::from_secs(60)).await;
    let client = reqwest::Client::new();
    let mut times = Vec::new();
    for i in 0..200 {
        let token = issuer.token(&format!("caller-{i}"));
        let at = Instant::now();
        let response = client
            .post(format!("{}/fake_echo_flow", server.url))
            .bearer_auth(&token)
            .header("content-type", "application/json")
            .body(r#"{"query":"hi"}"#)
            .send()
            .await
            .expect("a call");
        assert!(response.status().is_success(), "{}", response.status());
        let _ = response.bytes().await;
        times.push(at.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2] * 1000.0).round() / 1000.0
}
