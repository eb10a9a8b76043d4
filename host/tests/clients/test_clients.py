"""Real clients nobody here wrote, against `flowhost serve` on the default flows:
FlowLLM 0.2's own HttpClient, the official `openai` package, and headless Chromium on /docs.

Run through scripts/client-tests (it installs the clients and builds flowhost)."""

import asyncio
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from conftest import flowhost_server

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = Path(os.environ.get("CLIENT_TEST_ARTIFACTS", ROOT / "target" / "client-tests"))


@pytest.fixture(scope="module")
def server():
    """flowhost serving the repository's default flows on a free port."""
    with flowhost_server() as url:
        yield url


def flowllm_client(url):
    from flowllm.core.utils import HttpClient

    return HttpClient(base_url=url, max_retries=1)


def test_flowllm_health_and_endpoints(server):
    async def main():
        async with flowllm_client(server) as client:
            health = await client.health_check()
            assert health["status"] == "healthy"
            spec = await client.list_endpoints()
            assert spec["openapi"].startswith("3.1")
            assert "/echo_flow" in spec["paths"]
            assert "/count_stream_flow" in spec["paths"]

    asyncio.run(main())


def test_flowllm_execute_flow(server):
    async def main():
        async with flowllm_client(server) as client:
            response = await client.execute_flow("echo_flow", query="hello from FlowLLM")
            assert response.success is True
            assert response.answer == "hello from FlowLLM"
            response = await client.execute_flow("serial_flow", query="q", topic="owls")
            assert response.answer == "q"

    asyncio.run(main())


def test_flowllm_execute_stream_flow(server):
    async def main():
        async with flowllm_client(server) as client:
            chunks = [c async for c in client.execute_stream_flow("count_stream_flow", n=250)]
            assert len(chunks) == 250
            assert all(c == {"type": "answer", "content": "hello "} for c in chunks)
            chunks = [c async for c in client.execute_stream_flow("parallel_flow", query="both done")]
            contents = [c["content"] for c in chunks]
            assert contents[-1] == "both done"
            assert sorted(contents[:-1]) == sorted(
                [f"left {i}\n" for i in range(3)] + [f"right {i}\n" for i in range(3)]
            )

    asyncio.run(main())


def test_openai_sdk_streams_from_a_flow(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused")
    models = [m.id for m in client.models.list()]
    assert "count_stream_flow" in models and "echo_flow" in models
    stream = client.chat.completions.create(
        model="count_stream_flow",
        messages=[{"role": "user", "content": "count"}],
        stream=True,
    )
    text = ""
    finish = None
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text == "hello " * 1000
    assert finish == "stop"

    completion = client.chat.completions.create(
        model="echo_flow", messages=[{"role": "user", "content": "plain answer"}]
    )
    assert completion.choices[0].message.content == "plain answer"
    assert completion.choices[0].finish_reason == "stop"


def test_openai_sdk_sees_flow_errors(server):
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(NotFoundError) as err:
        client.chat.completions.create(model="no_such_flow", messages=[{"role": "user", "content": "x"}])
    assert "GET /v1/models" in str(err.value)


def test_openai_sdk_gets_the_flows_input_checks_and_its_own_habits(server):
    """Issue 22, item 9: the OpenAI route checks what POST /{flow} checks, types the sampling
    parameters, gives a usage object (not null) with include_usage, and serves models.retrieve."""
    from openai import BadRequestError, NotFoundError, OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)
    assert client.models.retrieve("echo_flow").id == "echo_flow"
    with pytest.raises(NotFoundError):
        client.models.retrieve("no_such_flow")
    # echo_flow requires `query`: a conversation without a user message has none.
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model="echo_flow", messages=[{"role": "system", "content": "be brief"}]
        )
    assert "query" in str(err.value)
    with pytest.raises(BadRequestError) as err:
        client.chat.completions.create(
            model="echo_flow",
            messages=[{"role": "user", "content": "x"}],
            temperature="hot",
        )
    assert "`temperature` must be a number" in str(err.value)
    stream = client.chat.completions.create(
        model="echo_stream_flow",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 0


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail("chromium is not installed (scripts/client-tests installs Debian's chromium)")


def test_docs_page_renders_the_flows_in_chromium(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    profile = tempfile.mkdtemp()
    flags = [
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--virtual-time-budget=15000", "--window-size=1280,2200",
    ]
    dom = subprocess.run(
        [chromium(), *flags, "--dump-dom", server + "/docs"],
        capture_output=True, text=True, timeout=120,
    ).stdout
    for flow in ("echo_flow", "count_stream_flow", "parallel_flow", "serial_flow"):
        assert f"/{flow}" in dom, f"{flow} not rendered on /docs"
    assert "swagger-ui" in dom
    shot = ARTIFACTS / "docs.png"
    subprocess.run(
        [chromium(), *flags, f"--screenshot={shot}", server + "/docs"],
        capture_output=True, timeout=120,
    )
    assert shot.exists() and shot.stat().st_size > 10_000, "no screenshot"
    shutil.rmtree(profile, ignore_errors=True)
