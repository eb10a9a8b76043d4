// flowhost's local LLM for demos and tests: an OpenAI-compatible chat server over
// node-llama-cpp (CPU, prebuilt binary) and SmolLM2-135M-Instruct. Started by scripts/local-llm.
//   GET /health, GET /v1/models, POST /v1/chat/completions (stream: true -> SSE chunks, then
//   `data: [DONE]`; usage when stream_options.include_usage). A client that disconnects aborts
//   the generation.
// Env: PORT, HOST, MODEL_PATH, MODEL_ID, SLOTS (parallel requests), CTX (tokens per slot), THREADS.
import http from "node:http";
import { randomUUID } from "node:crypto";
import { getLlama, LlamaChat, resolveChatWrapper } from "node-llama-cpp";

const env = process.env;
const port = Number(env.PORT || 8088);
const host = env.HOST || "127.0.0.1";
const modelId = env.MODEL_ID || "smollm2-135m-instruct";
const slots = Number(env.SLOTS || 2);
const ctxTokens = Number(env.CTX || 2048);
const threads = Number(env.THREADS || 1);

const llama = await getLlama({ gpu: false, build: "never" });
const model = await llama.loadModel({ modelPath: env.MODEL_PATH });
const chatWrapper = resolveChatWrapper(model);
const context = await model.createContext({ contextSize: ctxTokens * slots, sequences: slots, threads });

let idle = slots;
const queue = [];
const takeSlot = () => (idle > 0 ? (idle--, Promise.resolve()) : new Promise((resolve) => queue.push(resolve)));
const giveSlot = () => { const next = queue.shift(); if (next) next(); else idle++; };

const textOf = (content) => typeof content === "string" ? content
  : Array.isArray(content) ? content.map((part) => part.text ?? "").join("") : "";

function history(messages) {
  const turns = messages.map((m) =>
    m.role === "system" || m.role === "developer" ? { type: "system", text: textOf(m.content) }
      : m.role === "assistant" ? { type: "model", response: [textOf(m.content)] }
        : { type: "user", text: textOf(m.content) });
  if (turns.at(-1)?.type !== "model") turns.push({ type: "model", response: [] });
  return turns;
}

function reply(res, status, body) {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

async function completions(req, res, raw) {
  let request;
  try { request = JSON.parse(raw); } catch { return reply(res, 400, { error: { message: "the body is not JSON", type: "invalid_request_error" } }); }
  if (!Array.isArray(request.messages)) return reply(res, 400, { error: { message: "`messages` must be an array", type: "invalid_request_error" } });
  const id = `chatcmpl-${randomUUID()}`;
  const created = Math.floor(Date.now() / 1000);
  const streaming = request.stream === true;
  const abort = new AbortController();
  res.on("close", () => { if (!res.writableFinished) abort.abort(); });
  const event = (body) => res.write(`data: ${JSON.stringify(body)}\n\n`);
  const chunk = (delta, finish_reason = null) =>
    ({ id, object: "chat.completion.chunk", created, model: modelId, choices: [{ index: 0, delta, finish_reason }] });

  await takeSlot();
  const sequence = context.getSequence();
  let tokens = 0;
  try {
    if (streaming) {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      event(chunk({ role: "assistant", content: "" }));
    }
    const chat = new LlamaChat({ contextSequence: sequence, chatWrapper, autoDisposeSequence: false });
    const result = await chat.generateResponse(history(request.messages), {
      maxTokens: Number(request.max_tokens ?? request.max_completion_tokens ?? 256),
      temperature: Number(request.temperature ?? 0),
      topP: request.top_p,
      seed: request.seed,
      signal: abort.signal,
      stopOnAbortSignal: true,
      onToken: (t) => { tokens += t.length; },
      onTextChunk: (text) => { if (streaming && !abort.signal.aborted) event(chunk({ content: text })); },
    });
    const finish = result.metadata.stopReason === "maxTokens" ? "length" : "stop";
    const prompt = model.tokenize(request.messages.map((m) => textOf(m.content)).join("\n")).length;
    const usage = { prompt_tokens: prompt, completion_tokens: tokens, total_tokens: prompt + tokens };
    if (abort.signal.aborted) {
      console.error(`${id}: client went away after ${tokens} tokens; generation stopped`);
      res.end();
    } else if (streaming) {
      event(chunk({}, finish));
      if (request.stream_options?.include_usage) event({ id, object: "chat.completion.chunk", created, model: modelId, choices: [], usage });
      res.end("data: [DONE]\n\n");
    } else {
      reply(res, 200, { id, object: "chat.completion", created, model: modelId,
        choices: [{ index: 0, message: { role: "assistant", content: result.response }, finish_reason: finish }], usage });
    }
  } catch (error) {
    console.error(`${id}: ${error}`);
    if (res.headersSent) res.end(); else reply(res, 500, { error: { message: String(error), type: "server_error" } });
  } finally {
    sequence.dispose();
    giveSlot();
  }
}

http.createServer((req, res) => {
  const path = new URL(req.url, "http://local").pathname;
  if (req.method === "GET" && path === "/health") return reply(res, 200, { status: "ok", model: modelId });
  if (req.method === "GET" && path === "/v1/models") return reply(res, 200, { object: "list", data: [{ id: modelId, object: "model", created: 0, owned_by: "local" }] });
  if (req.method === "POST" && path === "/v1/chat/completions") {
    let raw = "";
    req.setEncoding("utf8");
    req.on("data", (part) => { raw += part; });
    req.on("end", () => completions(req, res, raw));
    return;
  }
  reply(res, 404, { error: { message: `no route ${req.method} ${path}`, type: "invalid_request_error" } });
}).listen(port, host, () => console.error(`local LLM on http://${host}:${port}/v1 (${modelId})`));
for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => process.exit(0));
