// The flowhost playground: flows and their status (live from GET /events), a form per flow
// built from its input_schema, runs streamed into the page, copy-as snippets, ops, metrics.
// Same origin only; the API key (if the host has one) is asked once and kept in this tab.
"use strict";

const KEY = "flowhost-api-key"; // shared with /docs
const $ = (id) => document.getElementById(id);
const state = { catalog: null, ops: [], selected: null, run: null, tab: "curl" };

// ---- requests -------------------------------------------------------------------------

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const key = sessionStorage.getItem(KEY);
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

let askingKey = null;
function askKey() {
  if (askingKey) return askingKey;
  askingKey = new Promise((resolve) => {
    const dialog = $("key-dialog");
    $("key-input").value = "";
    dialog.onclose = () => {
      const key = $("key-input").value.trim();
      if (dialog.returnValue === "ok" && key) sessionStorage.setItem(KEY, key);
      askingKey = null;
      resolve(dialog.returnValue === "ok" && !!key);
    };
    dialog.showModal();
  });
  return askingKey;
}

// fetch with the key; on a 401, ask for the key once and try again.
async function call(path, options) {
  options = options || {};
  let res = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
  if (res.status === 401 && (await askKey())) {
    res = await fetch(path, Object.assign({}, options, { headers: headers(options.headers) }));
  }
  return res;
}

// Reads an event stream from a fetch response: calls onEvent(name, data) per event.
async function readEvents(res, onEvent) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      let name = "message";
      const data = [];
      for (const line of block.split(/\r?\n/)) {
        if (line.startsWith(":")) continue;
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, data.join("\n"));
    }
  }
}

// ---- the catalog, live ----------------------------------------------------------------

async function followEvents() {
  for (;;) {
    try {
      const res = await call("/events", { headers: { Accept: "text/event-stream" } });
      if (!res.ok) throw new Error("GET /events: " + res.status);
      setConnection("live", "live");
      await readEvents(res, (name, data) => {
        if (name === "catalog") showCatalog(JSON.parse(data));
      });
    } catch (err) {
      console.warn("catalog updates interrupted:", err.message || err);
    }
    setConnection("reconnecting…", "stale");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function setConnection(text, cls) {
  const el = $("connection");
  el.textContent = text;
  el.className = "badge " + cls;
}

function showCatalog(catalog) {
  const previous = state.catalog;
  state.catalog = catalog;
  state.ops = catalog.ops.ops || [];
  renderFlows(previous);
  renderOps(catalog.ops);
  const errors = catalog.flows.errors || [];
  const box = $("catalog-errors");
  box.hidden = errors.length === 0;
  box.textContent = errors.length ? errors.length + " flow file problem(s); see the flows marked broken or stale" : "";
  if (state.selected) {
    const flow = findFlow(state.selected);
    if (flow) renderFlow(flow, previous ? findFlow(state.selected, previous) : null);
    else { state.selected = null; $("flow-view").hidden = true; $("empty").hidden = false; }
  } else if (!previous && location.hash.length > 1) {
    select(decodeURIComponent(location.hash.slice(1)));
  }
}

function findFlow(name, catalog) {
  catalog = catalog || state.catalog;
  return catalog && catalog.flows.flows.find((f) => f.name === name);
}

function renderFlows(previous) {
  const list = $("flows");
  list.textContent = "";
  for (const flow of state.catalog.flows.flows) {
    const li = document.createElement("li");
    li.dataset.flow = flow.name;
    if (flow.name === state.selected) li.classList.add("selected");
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = flow.name;
    const status = document.createElement("span");
    status.className = "badge status " + flow.status;
    status.textContent = flow.status;
    li.append(name, status);
    if (flow.stream) {
      const kind = document.createElement("span");
      kind.className = "badge kind";
      kind.textContent = "stream";
      li.append(kind);
    }
    li.title = flow.description || "";
    li.onclick = () => select(flow.name);
    const before = previous && findFlow(flow.name, previous);
    if (previous && (!before || before.status !== flow.status || before.flow_content !== flow.flow_content)) {
      li.classList.add("flash");
    }
    list.append(li);
  }
}

function select(name) {
  const flow = findFlow(name);
  if (!flow) return;
  state.selected = name;
  history.replaceState(null, "", "#" + encodeURIComponent(name));
  for (const li of $("flows").children) li.classList.toggle("selected", li.dataset.flow === name);
  $("empty").hidden = true;
  $("flow-view").hidden = false;
  renderFlow(flow, null);
  clearOutput();
}

function renderFlow(flow, before) {
  $("flow-name").textContent = flow.name;
  const status = $("flow-status");
  status.textContent = flow.status;
  status.className = "badge " + flow.status;
  $("flow-kind").textContent = flow.stream ? "stream (SSE)" : "JSON";
  $("flow-description").textContent = flow.description || "";
  $("flow-content").textContent = flow.flow_content;
  $("flow-file").textContent = flow.file ? "— " + flow.file : "";
  const diagnostic = $("diagnostic");
  diagnostic.hidden = !flow.error;
  diagnostic.textContent = flow.error || "";
  $("run").disabled = flow.status === "broken" || !!state.run;
  // Rebuild the form only when the schema changed, so typed values survive a reload.
  if (!before || JSON.stringify(before.input_schema) !== JSON.stringify(flow.input_schema)) {
    renderFields(flow.input_schema || {});
  }
  renderSnippet();
}

// ---- the form -------------------------------------------------------------------------

function renderFields(schema) {
  const fields = $("fields");
  fields.textContent = "";
  const props = schema.properties || {};
  const required = new Set(schema.required || []);
  const names = Object.keys(props);
  if (names.length === 0) {
    const p = document.createElement("p");
    p.className = "muted";
    p.textContent = "This flow takes no input.";
    fields.append(p);
  }
  for (const name of names) {
    const prop = props[name] || {};
    const type = Array.isArray(prop.type) ? prop.type.find((t) => t !== "null") : prop.type;
    const div = document.createElement("div");
    div.className = "field";
    const id = "field-" + name;
    const label = document.createElement("label");
    label.htmlFor = id;
    label.textContent = name + (required.has(name) ? " *" : "") + (type ? "  (" + type + ")" : "");
    let input;
    if (Array.isArray(prop.enum)) {
      input = document.createElement("select");
      if (!required.has(name)) input.append(new Option("", ""));
      for (const v of prop.enum) input.append(new Option(String(v), JSON.stringify(v)));
      if (prop.default !== undefined) input.value = JSON.stringify(prop.default);
    } else if (type === "boolean") {
      input = document.createElement("input");
      input.type = "checkbox";
      input.checked = prop.default === true;
    } else if (type === "integer" || type === "number") {
      input = document.createElement("input");
      input.type = "number";
      input.step = type === "integer" ? "1" : "any";
      if (prop.minimum !== undefined) input.min = prop.minimum;
      if (prop.maximum !== undefined) input.max = prop.maximum;
      if (prop.default !== undefined) input.value = prop.default;
    } else if (type === "object" || type === "array" || !type) {
      input = document.createElement("textarea");
      input.placeholder = type === "array" ? "[ ... ] (JSON)" : "JSON";
      if (prop.default !== undefined) input.value = JSON.stringify(prop.default, null, 2);
    } else {
      input = document.createElement("input");
      input.type = "text";
      if (prop.default !== undefined) input.value = prop.default;
    }
    input.id = id;
    input.name = name;
    input.dataset.type = type || "json";
    if (required.has(name) && type !== "boolean") input.required = true;
    input.oninput = renderSnippet;
    input.onchange = renderSnippet;
    div.append(label, input);
    if (prop.description) {
      const hint = document.createElement("span");
      hint.className = "hint";
      hint.textContent = prop.description;
      div.append(hint);
    }
    fields.append(div);
  }
}

// The request body from the form; throws with a message naming the field on bad input.
function body() {
  const out = {};
  for (const input of $("fields").querySelectorAll("[name]")) {
    const name = input.name;
    const type = input.dataset.type;
    if (input.tagName === "SELECT") {
      if (input.value !== "") out[name] = JSON.parse(input.value);
    } else if (type === "boolean") {
      out[name] = input.checked;
    } else if (input.value === "") {
      continue;
    } else if (type === "integer" || type === "number") {
      out[name] = Number(input.value);
    } else if (type === "string") {
      out[name] = input.value;
    } else {
      try { out[name] = JSON.parse(input.value); } catch (err) {
        throw new Error("field " + name + " is not valid JSON: " + err.message);
      }
    }
  }
  return out;
}

// ---- a run ----------------------------------------------------------------------------

function clearOutput() {
  $("output").textContent = "";
  $("s-first").textContent = "–";
  $("s-chunks").textContent = "0";
  $("s-rate").textContent = "–";
  $("run-state").textContent = "";
}

function outputPart(kind) {
  const out = $("output");
  if (kind === "answer") {
    let pre = out.querySelector("pre.answer");
    if (!pre) { pre = document.createElement("pre"); pre.className = "answer"; out.append(pre); }
    return pre;
  }
  if (kind === "think") {
    let d = out.querySelector("details.think");
    if (!d) {
      d = document.createElement("details");
      d.className = "think";
      const s = document.createElement("summary");
      s.textContent = "thinking";
      const pre = document.createElement("pre");
      d.append(s, pre);
      out.prepend(d);
    }
    return d.querySelector("pre");
  }
  return null;
}

function showChunk(kind, text) {
  const out = $("output");
  if (kind === "answer" || kind === "think") {
    outputPart(kind).textContent += text;
  } else if (kind === "tool") {
    const card = document.createElement("div");
    card.className = "tool";
    let shown = text;
    try { shown = JSON.stringify(JSON.parse(text), null, 2); } catch (_) { /* plain text */ }
    const b = document.createElement("b");
    b.textContent = "tool ";
    const pre = document.createElement("pre");
    pre.textContent = shown;
    card.append(b, pre);
    out.append(card);
  } else if (kind === "usage") {
    let u = out.querySelector(".usage");
    if (!u) { u = document.createElement("div"); u.className = "usage"; out.append(u); }
    u.textContent = "usage " + text;
  } else {
    const e = document.createElement("div");
    e.className = "chunk-error";
    e.textContent = text;
    out.append(e);
  }
}

async function run(event) {
  event.preventDefault();
  const flow = findFlow(state.selected);
  if (!flow || state.run) return;
  clearOutput();
  let payload;
  try { payload = body(); } catch (err) { showChunk("error", err.message); return; }
  const controller = new AbortController();
  const started = performance.now();
  const run = { controller, started, first: null, chunks: 0, timer: null };
  state.run = run;
  $("run").disabled = true;
  $("stop").disabled = false;
  $("run-state").textContent = "running…";
  const tick = () => {
    $("s-chunks").textContent = String(run.chunks);
    if (run.first !== null) {
      $("s-first").textContent = (run.first - started).toFixed(1) + " ms";
      const secs = (performance.now() - run.first) / 1000;
      if (secs > 0 && run.chunks > 1) $("s-rate").textContent = Math.round(run.chunks / secs).toLocaleString();
    }
  };
  run.timer = setInterval(tick, 200);
  const seen = (kind, text) => {
    if (run.first === null) run.first = performance.now();
    run.chunks += 1;
    showChunk(kind, text);
  };
  let ending = "done";
  try {
    const res = await call("/" + encodeURIComponent(flow.name), {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: flow.stream ? "text/event-stream" : "application/json" },
      body: JSON.stringify(payload),
      signal: controller.signal,
    });
    const type = res.headers.get("content-type") || "";
    if (!res.ok) {
      const text = await res.text();
      let detail = text;
      try { const j = JSON.parse(text); detail = j.detail || (j.error && j.error.message) || text; } catch (_) { /* text */ }
      showChunk("error", res.status + " " + res.statusText + ": " + (typeof detail === "string" ? detail : JSON.stringify(detail)));
      ending = "failed";
    } else if (type.startsWith("text/event-stream")) {
      await readEvents(res, (_name, data) => {
        if (data === "[DONE]") return;
        const c = JSON.parse(data);
        seen(c.chunk_type, typeof c.chunk === "string" ? c.chunk : JSON.stringify(c.chunk));
      });
    } else {
      const j = await res.json();
      if (run.first === null) run.first = performance.now();
      if (j.answer !== undefined && j.answer !== "") seen("answer", String(j.answer));
      if (j.success === false) { showChunk("error", (j.metadata && j.metadata.error) || "the flow failed"); ending = "failed"; }
    }
  } catch (err) {
    if (err.name === "AbortError") ending = "stopped";
    else { showChunk("error", String(err.message || err)); ending = "failed"; }
  } finally {
    clearInterval(run.timer);
    tick();
    state.run = null;
    $("stop").disabled = true;
    const current = findFlow(state.selected);
    $("run").disabled = !current || current.status === "broken";
    $("run-state").textContent = ending + " in " + Math.round(performance.now() - started) + " ms";
  }
}

function stop() {
  if (state.run) state.run.controller.abort();
}

// ---- copy as --------------------------------------------------------------------------

function py(value, indent) {
  indent = indent || "";
  if (value === null) return "None";
  if (value === true) return "True";
  if (value === false) return "False";
  if (Array.isArray(value)) return "[" + value.map((v) => py(v, indent)).join(", ") + "]";
  if (typeof value === "object") {
    return "{" + Object.entries(value).map(([k, v]) => JSON.stringify(k) + ": " + py(v, indent)).join(", ") + "}";
  }
  return JSON.stringify(value);
}

function sh(text) {
  return "'" + text.replace(/'/g, "'\\''") + "'";
}

function renderSnippet() {
  const flow = findFlow(state.selected);
  if (!flow) return;
  let payload;
  try { payload = body(); } catch (_) { payload = {}; }
  const origin = location.origin;
  const hasKey = !!sessionStorage.getItem(KEY);
  const json = JSON.stringify(payload);
  const kwargs = Object.entries(payload).map(([k, v]) => (/^[A-Za-z_]\w*$/.test(k) ? k + "=" + py(v) : null));
  const args = kwargs.every((k) => k !== null) ? kwargs.join(", ") : "**" + py(payload);
  const question = typeof payload.query === "string" ? payload.query : json;
  let text;
  if (state.tab === "curl") {
    text = "curl" + (flow.stream ? " -N" : "") + " " + origin + "/" + flow.name +
      (hasKey ? " \\\n  -H \"Authorization: Bearer $FLOWHOST_API_KEY\"" : "") +
      " \\\n  --json " + sh(json);
  } else if (state.tab === "flowllm") {
    text = "import asyncio\n" + (hasKey ? "import os\n" : "") + "from flowllm.core.utils import HttpClient\n\n" +
      "async def main():\n    async with HttpClient(base_url=" + JSON.stringify(origin) + ") as client:\n" +
      (hasKey ? "        client.client.headers[\"Authorization\"] = \"Bearer \" + os.environ[\"FLOWHOST_API_KEY\"]\n" : "") +
      (flow.stream
        ? "        async for chunk in client.execute_stream_flow(" + JSON.stringify(flow.name) + (args ? ", " + args : "") + "):\n            print(chunk[\"content\"], end=\"\", flush=True)\n"
        : "        response = await client.execute_flow(" + JSON.stringify(flow.name) + (args ? ", " + args : "") + ")\n        print(response.answer)\n") +
      "\nasyncio.run(main())\n";
  } else if (state.tab === "openai") {
    text = (hasKey ? "import os\n" : "") + "from openai import OpenAI\n\nclient = OpenAI(base_url=" + JSON.stringify(origin + "/v1") +
      ", api_key=" + (hasKey ? "os.environ[\"FLOWHOST_API_KEY\"]" : "\"unused\"") + ")\n" +
      (flow.stream
        ? "stream = client.chat.completions.create(\n    model=" + JSON.stringify(flow.name) + ",\n    messages=[{\"role\": \"user\", \"content\": " + JSON.stringify(question) + "}],\n    stream=True,\n)\nfor part in stream:\n    if part.choices and part.choices[0].delta.content:\n        print(part.choices[0].delta.content, end=\"\", flush=True)\n"
        : "reply = client.chat.completions.create(\n    model=" + JSON.stringify(flow.name) + ",\n    messages=[{\"role\": \"user\", \"content\": " + JSON.stringify(question) + "}],\n)\nprint(reply.choices[0].message.content)\n");
  } else {
    const server = { type: "http", url: origin + "/mcp" };
    if (hasKey) server.headers = { Authorization: "Bearer ${FLOWHOST_API_KEY}" };
    text = JSON.stringify({ mcpServers: { flowhost: server } }, null, 2) +
      "\n\n// or over stdio, with this host's flow folder:\n" +
      JSON.stringify({ mcpServers: { flowhost: { command: "flowhost", args: ["serve", "--transport", "stdio", "--flows", "flows"] } } }, null, 2) +
      "\n\n// the tool to call: " + flow.name + " with arguments " + json;
  }
  $("snippet").textContent = text;
}

// ---- ops and metrics ------------------------------------------------------------------

function renderOps(ops) {
  const tbody = $("ops").querySelector("tbody");
  tbody.textContent = "";
  for (const op of ops.ops || []) {
    const tr = document.createElement("tr");
    const cells = [
      [op.name, "mono"],
      [op.plugin, ""],
      [op.plugin_version + " (sdk " + op.sdk_version + ")", ""],
      [op.runs || "", ""],
      [op.description || "", ""],
      [op.args_schema ? Object.keys(op.args_schema.properties || {}).join(", ") : "", "mono"],
      [op.tool ? op.tool.name + "(" + Object.keys((op.tool.input_schema || {}).properties || {}).join(", ") + ")" : "", "mono"],
      [op.file || "", "mono"],
    ];
    for (const [text, cls] of cells) {
      const td = document.createElement("td");
      td.textContent = text;
      if (cls) td.className = cls;
      tr.append(td);
    }
    if (op.tool) tr.title = "tool schema: " + JSON.stringify(op.tool.input_schema);
    tbody.append(tr);
  }
  const errors = ops.errors || [];
  const box = $("plugin-errors");
  box.hidden = errors.length === 0;
  box.textContent = errors.map((e) => e.file + ": " + e.message).join("\n");
}

let lastRequests = null;
// The key in use may not read /metrics (it names every flow): stop asking until the key changes.
let metricsDeniedFor = null;
async function pollMetrics() {
  if (document.hidden) return;
  if (metricsDeniedFor !== null && metricsDeniedFor === sessionStorage.getItem(KEY)) return;
  try {
    const res = await call("/metrics");
    if (res.status === 403) {
      metricsDeniedFor = sessionStorage.getItem(KEY);
      for (const id of ["m-requests", "m-rate", "m-streams", "m-ops", "m-errors"]) {
        $(id).textContent = "—";
        $(id).title = "this key may not read /metrics (a key that may call every flow can)";
      }
      return;
    }
    if (!res.ok) return;
    const sums = {};
    for (const line of (await res.text()).split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const m = line.match(/^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+([-+\d.eE]+|NaN|[+-]Inf)/);
      if (m) sums[m[1]] = (sums[m[1]] || 0) + Number(m[3]);
    }
    const requests = sums.flowhost_http_requests_total || 0;
    $("m-requests").textContent = requests.toLocaleString();
    if (lastRequests !== null) $("m-rate").textContent = Math.max(0, (requests - lastRequests) / 2).toFixed(1);
    lastRequests = requests;
    $("m-streams").textContent = String(sums.flowhost_active_streams || 0);
    $("m-ops").textContent = String(sums.flowhost_ops_running || 0);
    $("m-errors").textContent = String(sums.flowhost_flow_errors_total || 0);
  } catch (err) {
    console.warn("metrics:", err.message || err);
  }
}

// ---- start ----------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  $("run-form").addEventListener("submit", run);
  $("stop").addEventListener("click", stop);
  $("key-button").addEventListener("click", async () => { await askKey(); renderSnippet(); });
  for (const button of document.querySelectorAll(".tabs button")) {
    button.addEventListener("click", () => {
      state.tab = button.dataset.tab;
      for (const b of document.querySelectorAll(".tabs button")) b.classList.toggle("on", b === button);
      renderSnippet();
    });
  }
  $("copy").addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText($("snippet").textContent);
      $("copy").textContent = "Copied";
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents($("snippet"));
      getSelection().removeAllRanges();
      getSelection().addRange(range);
      $("copy").textContent = "Selected: press Ctrl+C";
    }
    setTimeout(() => { $("copy").textContent = "Copy"; }, 1500);
  });
  followEvents();
  pollMetrics();
  setInterval(pollMetrics, 2000);
});
