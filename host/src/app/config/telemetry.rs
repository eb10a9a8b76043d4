//! The `telemetry:` section as the telemetry part's `Settings` (the `OTEL_*` variables are
//! applied over it when the exporter starts).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::units::Seconds;
use crate::telemetry::{Conventions, Settings};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawTelemetry {
    endpoint: Option<String>,
    traces_endpoint: Option<String>,
    service_name: Option<String>,
    sampler: Option<String>,
    sampler_arg: Option<f64>,
    resource_attributes: BTreeMap<String, String>,
    headers: BTreeMap<String, String>,
    timeout: Option<Seconds>,
    conventions: Conventions,
}

pub(super) fn telemetry_settings(where_: &str, value: Value) -> Result<Settings, String> {
    let raw: RawTelemetry = super::auth::section(where_, "telemetry", value)?;
    let timeout = match raw.timeout {
        Some(timeout) => Some(super::seconds(where_, "telemetry.timeout", timeout.0)?),
        None => None,
    };
    Ok(Settings {
        endpoint: raw.endpoint.filter(|e| !e.is_empty()),
        traces_endpoint: raw.traces_endpoint.filter(|e| !e.is_empty()),
        service_name: raw.service_name.filter(|e| !e.is_empty()),
        sampler: raw.sampler.filter(|e| !e.is_empty()),
        sampler_arg: raw.sampler_arg,
        resource_attributes: raw.resource_attributes,
        headers: raw.headers,
        timeout: timeout.map(|t| t.as_secs_f64()),
        conventions: raw.conventions,
    })
}
