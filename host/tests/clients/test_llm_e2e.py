"""End to end with a real model: scripts/local-llm (SmolLM2-135M, offline) behind flowhost.
The seed's demo_stream_http_flow over HTTP SSE and over MCP, and the non-stream chat_flow.
Assertions are on structure, not wording (a 135M model says odd things)."""

import json
import os
import subprocess

import httpx
import pytest
from conftest import BIN, ROOT, flowhost_server

LLM_URL = os.environ.get("FLOWHOST_LLM_URL")

pytestmark = pytest.mark.skipif(not LLM_URL, reason="FLOWHOST_LLM_URL not set (scripts/client-tests starts the local model)")


def llm_env():
    return {**os.environ, "NO_COLOR": "1", "FLOW_LLM_BASE_URL": LLM_URL, "FLOW_LLM_API_KEY": "local"}


@pytest.fixture(scope="module")
def server():
    with flowhost_server({"FLOW_LLM_BASE_URL": LLM_URL, "FLOW_LLM_API_KEY": "local"}) as url:
        yield url


def test_demo_stream_over_http_sse(server):
    events = []
    with httpx.stream("POST", server + "/demo_stream_http_flow", json={"query": "Name a colour.", "max_tokens": 24},
                      timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:])
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    kinds = [c["chunk_type"] for c in chunks]
    assert "error" not in kinds, chunks
    answers = [c for c in chunks if c["chunk_type"] == "answer"]
    assert len(answers) >= 2, "the answer arrives in several chunks"
    assert "".join(c["chunk"] for c in answers).strip()
    assert all(c["metadata"]["op"] == "StreamChatOp" for c in answers)
    usage = [c for c in chunks if c["chunk_type"] == "usage"]
    assert usage and usage[0]["chunk"]["completion_tokens"] > 0, "usage from the server"
    assert len({c["flow_id"] for c in chunks}) == 1


def test_chat_flow_answers_json(server):
    response = httpx.post(server + "/chat_flow", json={"query": "Say hello.", "max_tokens": 16}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert isinstance(body["answer"], str) and body["answer"].strip()


def test_demo_stream_over_mcp_stdio():
    proc = subprocess.Popen(
        [str(BIN), "serve", "--transport", "stdio", "--flows", str(ROOT / "flows")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=llm_env(),
    )

    def send(message):
        proc.stdin.write(json.dumps(message) + "\n")
        proc.stdin.flush()

    def receive():
        line = proc.stdout.readline()
        assert line, "stdout closed"
        return json.loads(line)

    try:
        send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}})
        assert receive()["result"]["serverInfo"]["name"] == "flowhost"
        send({"jsonrpc": "2.0", "method": "notifications/initialized"})
        send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {
            "name": "demo_stream_http_flow", "arguments": {"query": "Name a fruit.", "max_tokens": 24},
            "_meta": {"progressToken": "e2e"}}})
        progress = []
        while True:
            message = receive()
            if message.get("method") == "notifications/progress":
                progress.append(message["params"])
                continue
            if message.get("id") == 2:
                result = message["result"]
                break
        assert len(progress) >= 2, "chunks arrive as progress notifications"
        values = [p["progress"] for p in progress]
        assert values == sorted(values)
        assert result.get("isError") is False, result
        assert result["content"][0]["text"].strip()
        structured = result["structuredContent"]
        assert structured["answer"] == result["content"][0]["text"]
        assert structured["usage"]["completion_tokens"] > 0
    finally:
        proc.stdin.close()
        proc.wait(timeout=15)


def test_agent_flow_with_the_real_model_ends_cleanly(server):
    """ReactAgentOp with tools against the real model: whatever it chooses (answer, or tool
    calls the host runs), the stream ends with [DONE] and no error."""
    events = []
    with httpx.stream("POST", server + "/agent_flow", json={"query": "Echo the word blue."},
                      timeout=180) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:])
    assert events and events[-1] == "[DONE]", events
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if c["chunk_type"] == "error"], chunks
    assert any(c["chunk_type"] in ("answer", "tool") for c in chunks), chunks
