//! The `telemetry:` settings, and the standard `OTEL_*` variables over them (a variable that
//! is set wins over the file: the operator's knob, as every OpenTelemetry SDK reads them).

use std::collections::BTreeMap;
use std::time::Duration;

use opentelemetry::KeyValue;

use super::record::Sampler;

/// The `telemetry:` section.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub(crate) struct Settings {
    /// The OTLP/HTTP base URL (`/v1/traces` is added), as `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub(crate) endpoint: Option<String>,
    /// The full traces URL, as `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
    pub(crate) traces_endpoint: Option<String>,
    pub(crate) service_name: Option<String>,
    /// As `OTEL_TRACES_SAMPLER`: always_on, always_off, traceidratio, parentbased_always_on
    /// (the default), parentbased_always_off, parentbased_traceidratio.
    pub(crate) sampler: Option<String>,
    pub(crate) sampler_arg: Option<f64>,
    pub(crate) resource_attributes: BTreeMap<String, String>,
    /// Sent with every export (`OTEL_EXPORTER_OTLP_HEADERS` adds to them).
    pub(crate) headers: BTreeMap<String, String>,
    /// One export's limit (`OTEL_EXPORTER_OTLP_TIMEOUT`, default 10 s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) timeout: Option<f64>,
    pub(crate) conventions: Conventions,
}

/// Whose attribute names are added to the OpenTelemetry ones (`telemetry.conventions`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Conventions {
    /// OpenTelemetry's GenAI and MCP names only.
    #[default]
    Otel = 0,
    /// Also Arize Phoenix's (`openinference.span.kind`, `llm.*`).
    Openinference = 1,
    /// Also Langfuse's (`langfuse.observation.*`).
    Langfuse = 2,
}

/// The settings with the variables applied: what the exporter is built from.
#[derive(Debug)]
pub(super) struct Resolved {
    pub(super) endpoint: String,
    pub(super) service: String,
    pub(super) sampler: Sampler,
    pub(super) sampler_name: String,
    pub(super) resource: Vec<KeyValue>,
    pub(super) headers: BTreeMap<String, String>,
    pub(super) timeout: Duration,
    pub(super) conventions: Conventions,
    /// `OTEL_BSP_MAX_QUEUE_SIZE`, `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`.
    pub(super) queue: usize,
    pub(super) delay: Duration,
    pub(super) batch: usize,
}

const SAMPLERS: &str = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off, parentbased_traceidratio";

impl Settings {
    /// The settings under the variables `env` reads; `Ok(None)` when no endpoint is set or
    /// tracing is switched off (`OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none`).
    pub(super) fn resolve(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, String> {
        let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other}: flowhost exports traces over OTLP only (otlp, or none to switch tracing off)"
                ))
            }
        }
        let base = |url: &str| format!("{}/v1/traces", url.trim_end_matches('/'));
        let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT").map(|url| base(&url)))
            .or_else(|| self.traces_endpoint.clone())
            .or_else(|| self.endpoint.as_deref().map(base));
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ] {
            if let Some(protocol) = var(name) {
                if protocol.trim() != "http/protobuf" {
                    return Err(format!(
                        "{name}={protocol}: flowhost sends OTLP over HTTP with protobuf bodies only (http/protobuf, to port 4318 of a collector); unset it or set http/protobuf"
                    ));
                }
                break;
            }
        }
        let uri = endpoint.parse::<http::Uri>().ok();
        let web = uri.as_ref().is_some_and(|uri| {
            matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                // A port past 65535 is read by `http::Uri` (as no port), refused by the
                // HTTP client.
                && (uri.port_u16().is_some() || !port_given(uri))
        });
        if !web {
            return Err(format!(
                "telemetry: the traces endpoint `{}` is not an http:// or https:// URL (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, OTEL_EXPORTER_OTLP_ENDPOINT, telemetry.traces_endpoint or telemetry.endpoint)",
                shown(&endpoint)
            ));
        }
        let mut attributes = self.resource_attributes.clone();
        let mut env_service = None;
        if let Some(list) = var("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in list.split(',').filter(|pair| !pair.trim().is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(format!(
                        "OTEL_RESOURCE_ATTRIBUTES: `{pair}` is not key=value (the list is key=value,key=value)"
                    ));
                };
                let value = percent_decode(value.trim());
                if key.trim() == "service.name" {
                    env_service = Some(value.clone());
                }
                attributes.insert(key.trim().to_string(), value);
            }
        }
        let service = var("OTEL_SERVICE_NAME")
            .or(env_service)
            .or_else(|| self.service_name.clone())
            .or_else(|| attributes.get("service.name").cloned())
            .unwrap_or_else(|| "flowhost".to_string());
        attributes.insert("service.name".into(), service.clone());
        let resource = attributes
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, value))
            .collect();
        let sampler_name = var("OTEL_TRACES_SAMPLER")
            .or_else(|| self.sampler.clone())
            .unwrap_or_else(|| "parentbased_always_on".to_string())
            .trim()
            .to_string();
        let arg = match var("OTEL_TRACES_SAMPLER_ARG") {
            Some(arg) => Some(arg.trim().parse::<f64>().map_err(|_| {
                format!("OTEL_TRACES_SAMPLER_ARG={arg}: not a number (a ratio from 0 to 1)")
            })?),
            None => self.sampler_arg,
        };
        let ratio = arg.unwrap_or(1.0);
        if !(0.0..=1.0).contains(&ratio) {
            return Err(format!(
                "telemetry: the sampler's ratio {ratio} is not between 0 and 1 (OTEL_TRACES_SAMPLER_ARG, telemetry.sampler_arg)"
            ));
        }
        let parent = |root: Sampler| Sampler::ParentBased(Box::new(root));
        let sampler = match sampler_name.as_str() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio),
            "parentbased_always_on" => parent(Sampler::AlwaysOn),
            "parentbased_always_off" => parent(Sampler::AlwaysOff),
            "parentbased_traceidratio" => parent(Sampler::Ratio(ratio)),
            other => {
                return Err(format!(
                    "telemetry: no sampler `{other}` (OTEL_TRACES_SAMPLER, telemetry.sampler); use one of {SAMPLERS}"
                ))
            }
        };
        let sampler_name = match sampler_name.as_str() {
            "traceidratio" | "parentbased_traceidratio" => format!("{sampler_name} {ratio}"),
            _ => sampler_name,
        };
        let number = |name: &str, default: u64| -> Result<u64, String> {
            match var(name) {
                None => Ok(default),
                Some(text) => text
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{name}={text}: not a whole number above 0")),
            }
        };
        let mut headers = self.headers.clone();
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_HEADERS",
        ] {
            if let Some(list) = var(name) {
                for pair in list.split(',').filter(|pair| !pair.trim().is_empty()) {
                    let Some((key, value)) = pair.split_once('=') else {
                        return Err(format!(
                            "{name}: `{pair}` is not key=value (the list is key=value,key=value)"
                        ));
                    };
                    headers.insert(key.trim().to_string(), percent_decode(value.trim()));
                }
                break;
            }
        }
        for name in [
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_COMPRESSION",
        ] {
            if let Some(compression) = var(name) {
                if compression.trim() != "none" {
                    return Err(format!(
                        "{name}={compression}: flowhost sends OTLP bodies uncompressed; unset it or set none"
                    ));
                }
                break;
            }
        }
        let timeout = match var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
            .map(|t| ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", t))
            .or_else(|| {
                var("OTEL_EXPORTER_OTLP_TIMEOUT").map(|t| ("OTEL_EXPORTER_OTLP_TIMEOUT", t))
            }) {
            Some((name, text)) => Duration::from_millis(
                text.trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        format!("{name}={text}: not a whole number of milliseconds above 0")
                    })?,
            ),
            None => self
                .timeout
                .map_or(Duration::from_secs(10), Duration::from_secs_f64),
        };
        // Bounded whatever the variables say: a queue of a million spans is a few hundred MB.
        let queue = (number("OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize).min(1 << 20);
        let batch = (number("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)? as usize)
            .min(queue)
            .min(1 << 16);
        let delay = Duration::from_millis(number("OTEL_BSP_SCHEDULE_DELAY", 5000)?);
        Ok(Some(Resolved {
            endpoint,
            service,
            sampler,
            sampler_name,
            resource,
            headers,
            timeout,
            conventions: self.conventions,
            queue,
            delay,
            batch,
        }))
    }
}

/// An endpoint as it may be logged: no user, password or query (where credentials hide).
/// Whether `uri`'s authority ends in a port (`:` and digits after the host).
fn port_given(uri: &http::Uri) -> bool {
    uri.authority()
        .and_then(|authority| authority.as_str().rsplit_once(':'))
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

pub(super) fn shown(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or_default();
            let port = uri.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!(
                "{}://{host}{port}{}",
                uri.scheme_str().unwrap_or("?"),
                uri.path()
            )
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` values are percent-encoded
/// (W3C Baggage's octets).
fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| value.to_string())
        }
    }

    #[test]
    fn nothing_set_is_off_and_variables_win_over_the_file() {
        let settings = Settings::default();
        assert!(settings.resolve(&env(&[])).expect("ok").is_none());
        // What an auto-instrumentation sets for every process is no reason to refuse to
        // start while tracing is off.
        assert!(settings
            .resolve(&env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
            .expect("ok")
            .is_none());
        assert_eq!(
            shown("https://user:pw@collector:4318/v1/traces?api_key=s3cret"),
            "https://collector:4318/v1/traces"
        );
        let file = Settings {
            endpoint: Some("http://collector:4318/".into()),
            service_name: Some("from-file".into()),
            sampler: Some("traceidratio".into()),
            sampler_arg: Some(0.5),
            ..Settings::default()
        };
        let resolved = file.resolve(&env(&[])).expect("ok").expect("on");
        assert_eq!(resolved.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(resolved.service, "from-file");
        assert_eq!(resolved.sampler_name, "traceidratio 0.5");
        let resolved = file
            .resolve(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://other:4318"),
                ("OTEL_SERVICE_NAME", "svc"),
                ("OTEL_TRACES_SAMPLER", "always_on"),
                (
                    "OTEL_RESOURCE_ATTRIBUTES",
                    "deployment.environment=prod,team=a%20b",
                ),
            ]))
            .expect("ok")
            .expect("on");
        assert_eq!(resolved.endpoint, "http://other:4318/v1/traces");
        assert_eq!(resolved.service, "svc");
        assert_eq!(resolved.sampler_name, "always_on");
        assert!(resolved.resource.contains(&KeyValue::new("team", "a b")));
        let traces = file
            .resolve(&env(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://t:1/x",
            )]))
            .expect("ok")
            .expect("on");
        assert_eq!(traces.endpoint, "http://t:1/x");
        assert!(file
            .resolve(&env(&[("OTEL_SDK_DISABLED", "true")]))
            .expect("ok")
            .is_none());
        assert!(file
            .resolve(&env(&[("OTEL_TRACES_EXPORTER", "none")]))
            .expect("ok")
            .is_none());
    }

    #[test]
    fn what_cannot_work_is_refused_with_its_name() {
        let file = Settings {
            endpoint: Some("http://c:4318".into()),
            ..Settings::default()
        };
        let err = |pairs| file.resolve(&env(pairs)).expect_err("refused");
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).contains("http/protobuf"));
        assert!(err(&[("OTEL_TRACES_SAMPLER", "sometimes")]).contains("parentbased_always_on"));
        assert!(err(&[("OTEL_TRACES_SAMPLER_ARG", "lots")]).contains("OTEL_TRACES_SAMPLER_ARG"));
        assert!(err(&[("OTEL_TRACES_EXPORTER", "zipkin")]).contains("OTLP only"));
        assert!(err(&[("OTEL_RESOURCE_ATTRIBUTES", "novalue")]).contains("key=value"));
        // Not a URL; a port no TCP port can be (refused here, not by the exporter at its first
        // send).
        for endpoint in ["collector:4318", "http://collector:70000"] {
            let bad = Settings {
                endpoint: Some(endpoint.into()),
                ..Settings::default()
            };
            let refused = bad.resolve(&env(&[])).expect_err(endpoint);
            assert!(refused.contains("http://"), "{endpoint}: {refused}");
        }
    }
}
