//! `external_mcp:` in FlowLLM's shape: a map of server names to a stdio server (`command`,
//! `args`, `env`, `cwd`) or an HTTP one (`url`, `type: streamable-http | sse`, `headers`), with
//! `timeout` (seconds per call) and `expose` (flowhost's: its tools served onward). Values may
//! name environment variables: `${NAME}`, or FlowLLM's `{NAME}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::plan::Expose;

/// Every configured server, by name.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Settings {
    pub(crate) servers: BTreeMap<String, Server>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Server {
    pub(crate) name: String,
    pub(crate) transport: Transport,
    /// Each call's deadline unless the op sets `timeout`; None: no deadline of its own.
    pub(crate) timeout: Option<Duration>,
    pub(crate) expose: Option<Expose>,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Transport {
    /// A child process the host owns, spoken to over its stdin and stdout.
    Stdio {
        command: String,
        args: Vec<String>,
        /// Set in the child's environment, over the few the official SDKs pass on
        /// (`HOME`, `LOGNAME`, `PATH`, `SHELL`, `TERM`, `USER`): the host's own secrets stay
        /// in the host.
        env: BTreeMap<String, String>,
        cwd: Option<PathBuf>,
    },
    /// Streamable HTTP at `url` (or, `sse`, the HTTP+SSE transport of MCP 2024-11-05), with
    /// `headers` on every request.
    Http {
        url: String,
        headers: Vec<(String, String)>,
        sse: bool,
    },
}

/// What a server entry may say (FlowLLM's keys and flowhost's `expose`).
const KEYS: [&str; 9] = [
    "command", "args", "env", "cwd", "url", "type", "headers", "timeout", "expose",
];

/// The host's variables a stdio server gets (the official SDKs' default environment).
const INHERITED: [&str; 6] = ["HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER"];

/// Headers the Streamable HTTP client sets itself.
const RESERVED_HEADERS: [&str; 4] = [
    "accept",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

/// The longest a server's name may be: it becomes part of tool and flow names.
const MAX_NAME: usize = 64;

/// Reads `external_mcp` (`section`, JSON of the YAML); `env` looks variables up. Errors name
/// the key (`external_mcp.fs.command: ...`) and what to write instead.
pub(crate) fn parse(
    section: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Settings, String> {
    let mut settings = Settings::default();
    let map = match section {
        Value::Null => return Ok(settings),
        Value::Object(map) => map,
        other => {
            return Err(format!(
                "external_mcp: expected a map of server names to servers ({{fs: {{command: npx, args: [...]}}}}), found {}",
                kind(other)
            ))
        }
    };
    for (name, entry) in map {
        let at = format!("external_mcp.{name}");
        if name.is_empty()
            || name.len() > MAX_NAME
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "{at}: a server name may only use letters, digits, `_` and `-` (at most {MAX_NAME}): it names the server in flows (mcp_name=) and in served tool names"
            ));
        }
        settings
            .servers
            .insert(name.clone(), server(name, &at, entry, env)?);
    }
    Ok(settings)
}

fn server(
    name: &str,
    at: &str,
    entry: &Value,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Server, String> {
    let Value::Object(entry) = entry else {
        return Err(format!(
            "{at}: expected a server ({{command: ..., args: [...]}} or {{url: ...}}), found {}",
            kind(entry)
        ));
    };
    for key in entry.keys() {
        if !KEYS.contains(&key.as_str()) {
            let hint = match crate::util::suggest::closest(key, KEYS.iter().copied()) {
                Some(near) => format!("did you mean `{near}`?"),
                None => format!("a server takes {}", KEYS.join(", ")),
            };
            return Err(format!("{at}: unknown key `{key}`; {hint}"));
        }
    }
    let text = |key: &str| -> Result<Option<String>, String> {
        match entry.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => expand(s, env, false)
                .map(Some)
                .map_err(|e| format!("{at}.{key}: {e}")),
            Some(other) => Err(format!("{at}.{key}: expected text, found {}", kind(other))),
        }
    };
    let strings = |key: &str| -> Result<Vec<String>, String> {
        match entry.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => {
                        expand(s, env, false).map_err(|e| format!("{at}.{key}[{i}]: {e}"))
                    }
                    Value::Number(n) => Ok(n.to_string()),
                    other => Err(format!(
                        "{at}.{key}[{i}]: expected text, found {}",
                        kind(other)
                    )),
                })
                .collect(),
            Some(other) => Err(format!(
                "{at}.{key}: expected a list of text, found {}",
                kind(other)
            )),
        }
    };
    let pairs = |key: &str| -> Result<Vec<(String, String)>, String> {
        match entry.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Object(map)) => map
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        other => {
                            return Err(format!(
                                "{at}.{key}.{k}: expected text, found {}",
                                kind(other)
                            ))
                        }
                    };
                    Ok((
                        k.clone(),
                        expand(&value, env, true).map_err(|e| format!("{at}.{key}.{k}: {e}"))?,
                    ))
                })
                .collect(),
            Some(other) => Err(format!(
                "{at}.{key}: expected a map of names to values, found {}",
                kind(other)
            )),
        }
    };
    let timeout = match entry.get("timeout") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_f64()
                .filter(|s| *s > 0.0 && *s <= crate::plan::MAX_SECONDS)
                .map(Duration::from_secs_f64)
                .ok_or_else(|| {
                    format!("{at}.timeout: expected seconds above 0 (e.g. 30), found {value}")
                })?,
        ),
    };
    let kind_of = text("type")?.map(|t| t.to_ascii_lowercase().replace('_', "-"));
    let command = text("command")?;
    let url = text("url")?;
    let transport = match (command, url) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "{at}: both `command` (a stdio server) and `url` (an HTTP one): keep one"
            ))
        }
        (None, None) => {
            return Err(format!(
                "{at}: needs `command` (a stdio server: {{command: npx, args: [-y, some-server]}}) or `url` (an HTTP one)"
            ))
        }
        (Some(command), None) => {
            if let Some(t) = kind_of.as_deref().filter(|t| *t != "stdio") {
                return Err(format!("{at}.type: `{t}` with `command`: a command is a stdio server (type: stdio, or leave type out)"));
            }
            if command.trim().is_empty() {
                return Err(format!("{at}.command: empty"));
            }
            let mut vars: BTreeMap<String, String> = INHERITED
                .iter()
                .filter_map(|name| Some((name.to_string(), env(name)?)))
                .collect();
            vars.extend(pairs("env")?);
            Transport::Stdio {
                command,
                args: strings("args")?,
                env: vars,
                cwd: text("cwd")?.map(PathBuf::from),
            }
        }
        (None, Some(url)) => {
            let sse = match kind_of.as_deref() {
                None | Some("streamable-http" | "streamablehttp" | "http") => false,
                Some("sse") => true,
                Some(other) => {
                    return Err(format!(
                        "{at}.type: `{other}` is not an HTTP transport; use streamable-http (or sse for servers of MCP 2024-11-05)"
                    ))
                }
            };
            let parsed = url.parse::<http::Uri>().ok().filter(|u| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            });
            if parsed.is_none() {
                return Err(format!("{at}.url: `{url}` is not an http:// or https:// URL"));
            }
            let headers = pairs("headers")?;
            for (name, value) in &headers {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    return Err(format!("{at}.headers.{name}: not a valid HTTP header"));
                }
                if RESERVED_HEADERS.iter().any(|r| name.eq_ignore_ascii_case(r)) {
                    return Err(format!("{at}.headers.{name}: set by the MCP client itself (it would break every request); remove it"));
                }
            }
            Transport::Http { url, headers, sse }
        }
    };
    if let (Transport::Http { .. }, true) = (
        &transport,
        entry.contains_key("args") || entry.contains_key("env") || entry.contains_key("cwd"),
    ) {
        return Err(format!(
            "{at}: `args`, `env` and `cwd` are for stdio servers (`command`), not `url`"
        ));
    }
    let expose = match entry.get("expose") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::Bool(true)) => Some(Expose {
            separator: "__".to_string(),
            include: Vec::new(),
            exclude: Vec::new(),
        }),
        Some(Value::Object(options)) => Some(expose(&format!("{at}.expose"), options)?),
        Some(other) => {
            return Err(format!(
                "{at}.expose: expected true, or {{include: [...], exclude: [...], separator: \"__\"}}, found {}",
                kind(other)
            ))
        }
    };
    Ok(Server {
        name: name.to_string(),
        transport,
        timeout,
        expose,
    })
}

fn expose(at: &str, options: &serde_json::Map<String, Value>) -> Result<Expose, String> {
    let mut out = Expose {
        separator: "__".to_string(),
        include: Vec::new(),
        exclude: Vec::new(),
    };
    for (key, value) in options {
        match key.as_str() {
            "separator" => {
                let sep = value.as_str().unwrap_or_default();
                if sep.is_empty()
                    || sep.len() > 8
                    || !sep
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(format!("{at}.separator: 1 to 8 of letters, digits, `_` and `-` (served names are flow names), found {value}"));
                }
                out.separator = sep.to_string();
            }
            "include" | "exclude" => {
                let list: Vec<String> = match value {
                    Value::Array(items) => items
                        .iter()
                        .map(|i| i.as_str().map(str::to_string))
                        .collect::<Option<_>>()
                        .ok_or_else(|| {
                            format!(
                                "{at}.{key}: expected a list of tool names or patterns (`get-*`)"
                            )
                        })?,
                    _ => {
                        return Err(format!(
                        "{at}.{key}: expected a list of tool names or patterns (`get-*`), found {}",
                        kind(value)
                    ))
                    }
                };
                for pattern in &list {
                    glob::Pattern::new(pattern).map_err(|err| {
                        format!("{at}.{key}: `{pattern}` is not a pattern: {err}")
                    })?;
                }
                if key == "include" {
                    out.include = list;
                } else {
                    out.exclude = list;
                }
            }
            other => {
                return Err(format!(
                    "{at}: unknown key `{other}`; expose takes include, exclude and separator"
                ))
            }
        }
    }
    Ok(out)
}

/// The servers as `flowhost config` shows them: no values that may be secrets (an `env`'s or
/// a header's value, a URL's credentials or query, the arguments), only their names.
pub(crate) fn describe(settings: &Settings) -> Value {
    let servers: serde_json::Map<String, Value> = settings
        .servers
        .iter()
        .map(|(name, server)| {
            let transport = match &server.transport {
                Transport::Stdio { command, args, env, cwd } => serde_json::json!({
                    "type": "stdio",
                    "command": command,
                    "args": format!("({} given)", args.len()),
                    "env": env.keys().filter(|k| !INHERITED.contains(&k.as_str())).collect::<Vec<_>>(),
                    "cwd": cwd,
                }),
                Transport::Http { url, headers, sse } => serde_json::json!({
                    "type": if *sse { "sse" } else { "streamable-http" },
                    "url": shown_url(url),
                    "headers": headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                }),
            };
            let mut shown = transport;
            shown["timeout"] = serde_json::json!(server.timeout.map(|t| t.as_secs_f64()));
            shown["expose"] = match &server.expose {
                None => Value::Bool(false),
                Some(e) => serde_json::json!({"separator": e.separator, "include": e.include, "exclude": e.exclude}),
            };
            (name.clone(), shown)
        })
        .collect();
    Value::Object(servers)
}

/// A URL without credentials or query (for logs, `/ops` and `flowhost config`).
pub(crate) fn shown_url(url: &str) -> String {
    match url.parse::<http::Uri>() {
        Ok(uri) => format!(
            "{}://{}{}{}",
            uri.scheme_str().unwrap_or("http"),
            uri.host().unwrap_or_default(),
            uri.port().map(|p| format!(":{p}")).unwrap_or_default(),
            uri.path()
        ),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// `${NAME}` replaced by the variable's value, and, where FlowLLM expands them (`braces`:
/// header and `env` values), its `{NAME}` (an upper-case name in braces) too; `$${` is a
/// literal `${`, and `{{` a literal `{` where braces expand. A variable that is not set is an
/// error naming it.
fn expand(
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    braces: bool,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('{') {
        let dollar = at > 0 && rest.as_bytes()[at - 1] == b'$';
        let escaped = if dollar {
            at > 1 && rest.as_bytes()[at - 2] == b'$'
        } else {
            braces && rest.as_bytes().get(at + 1) == Some(&b'{')
        };
        if escaped {
            // `$${` → `${`; `{{` → `{`: kept as written, never expanded.
            if dollar {
                out.push_str(&rest[..at - 1]);
                out.push('{');
            } else {
                out.push_str(&rest[..=at]);
            }
            rest = &rest[at + 1 + usize::from(!dollar)..];
            continue;
        }
        let before = if dollar { &rest[..at - 1] } else { &rest[..at] };
        out.push_str(before);
        let after = &rest[at + 1..];
        let name = after.find('}').map(|c| &after[..c]);
        let is_var = name.is_some_and(|n| {
            (dollar || braces)
                && !n.is_empty()
                && n.chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && (dollar || n.chars().all(|c| !c.is_ascii_lowercase()))
        });
        match (name, is_var) {
            (Some(name), true) => {
                let value = env(name).ok_or_else(|| {
                    format!("names the environment variable `{name}`, which is not set (set it, or write the value)")
                })?;
                out.push_str(&value);
                rest = &after[name.len() + 1..];
            }
            _ => {
                if dollar {
                    out.push('$');
                }
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "true/false",
        Value::Number(_) => "a number",
        Value::String(_) => "text",
        Value::Array(_) => "a list",
        Value::Object(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TOKEN" => Some("s3cret".into()),
            "lower_ok" => Some("x".into()),
            _ => None,
        }
    }

    fn parse_yaml(yaml: &str) -> Result<Settings, String> {
        let value: Value = serde_yaml::from_str(yaml).expect("yaml");
        parse(&value, &env)
    }

    #[test]
    fn flowllm_servers_parse_with_their_variables() {
        let settings = parse_yaml(
            "fs: {command: npx, args: [-y, server, 3], env: {K: '${TOKEN}'}, timeout: 5}\n\
             web: {type: streamable-http, url: 'https://x.example/mcp', headers: {Authorization: 'Bearer {TOKEN}'}, expose: {include: ['get-*'], separator: '_'}}\n",
        )
        .expect("parses");
        let fs = &settings.servers["fs"];
        assert_eq!(fs.timeout, Some(Duration::from_secs(5)));
        let Transport::Stdio { args, env, .. } = &fs.transport else {
            panic!("stdio")
        };
        assert_eq!(args, &["-y", "server", "3"]);
        assert_eq!(env["K"], "s3cret");
        let web = &settings.servers["web"];
        let Transport::Http { headers, .. } = &web.transport else {
            panic!("http")
        };
        assert_eq!(
            headers,
            &[("Authorization".to_string(), "Bearer s3cret".to_string())]
        );
        let expose = web.expose.as_ref().expect("exposed");
        assert!(expose.admits("get-sum") && !expose.admits("echo"));
        assert_eq!(expose.separator, "_");
    }

    #[test]
    fn mistakes_name_their_key() {
        let cases = [
            (
                "fs: {comand: npx}",
                "external_mcp.fs: unknown key `comand`; did you mean `command`?",
            ),
            ("fs: {args: [x]}", "external_mcp.fs: needs `command`"),
            (
                "fs: {command: x, env: {K: '${NOPE}'}}",
                "external_mcp.fs.env.K: names the environment variable `NOPE`, which is not set",
            ),
            (
                "fs: {url: 'ftp://x'}",
                "external_mcp.fs.url: `ftp://x` is not an http:// or https:// URL",
            ),
            (
                "fs: {url: 'http://x/sse', type: websocket}",
                "external_mcp.fs.type: `websocket` is not an HTTP transport",
            ),
            (
                "'a b': {command: x}",
                "external_mcp.a b: a server name may only use",
            ),
            (
                "fs: {command: x, timeout: -1}",
                "external_mcp.fs.timeout: expected seconds above 0",
            ),
            (
                "fs: {command: x, expose: {separator: '.'}}",
                "external_mcp.fs.expose.separator",
            ),
        ];
        for (yaml, want) in cases {
            let err = parse_yaml(yaml).expect_err(yaml);
            assert!(err.starts_with(want), "{yaml}: {err}");
        }
    }

    #[test]
    fn braces_that_name_no_variable_stay() {
        assert_eq!(
            expand("{\"a\": 1} ${TOKEN} {TOKEN} {lower_ok}", &env, true).as_deref(),
            Ok("{\"a\": 1} s3cret s3cret {lower_ok}")
        );
        assert_eq!(expand("${lower_ok}", &env, false).as_deref(), Ok("x"));
        // Escapes: `$${` and (where braces expand) `{{`.
        assert_eq!(
            expand("$${TOKEN} {{TOKEN}}", &env, true).as_deref(),
            Ok("${TOKEN} {TOKEN}}")
        );
        // Arguments and URLs expand `${}` only: FlowLLM's braces are for headers and env.
        assert_eq!(
            expand("--format {JSON} ${TOKEN}", &env, false).as_deref(),
            Ok("--format {JSON} s3cret")
        );
    }
}
