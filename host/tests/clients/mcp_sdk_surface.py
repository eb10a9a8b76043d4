"""The official MCP Python SDK (`mcp`, in /tmp/peers/mcp-venv) against `flowhost serve` on stdio,
in both protocol eras: resources, templates, prompts, flows as resources, and ops that ask the
client (sampling and elicitation answered by the SDK's callbacks; on 2026-07-28 through
input-required rounds the SDK drives itself).

    python mcp_sdk_surface.py FLOWHOST FLOWS_DIR PLUGINS_DIR

Prints one line per check; exits 1 if any failed. Run by scripts/mcp-conformance.
"""

import asyncio
import json
import sys

import mcp_types as types
from mcp import Client, StdioServerParameters

FLOWHOST, FLOWS, PLUGINS = sys.argv[1:4]
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""))
    if not ok:
        failures.append(name)


async def sampling(context, params):
    asked = params.messages[0].content.text
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled <{asked}>"),
        model="python-sdk-test",
        stop_reason="endTurn",
    )


async def elicitation(context, params):
    props = (params.requested_schema or {}).get("properties", {})
    content = {}
    for key, schema in props.items():
        kind = schema.get("type")
        content[key] = {"boolean": True, "integer": 7, "number": 1.5}.get(kind, f"py-{key}")
    return types.ElicitResult(action="accept", content=content)


def text_of(result):
    return "".join(block.text for block in result.content if getattr(block, "text", None))


async def session(mode):
    server = StdioServerParameters(
        command=FLOWHOST,
        args=["serve", "--transport", "stdio", "--no-watch", "--flows", FLOWS, "--plugins", PLUGINS],
    )
    async with Client(server, mode=mode, sampling_callback=sampling,
                      elicitation_callback=elicitation) as client:
        era = client.protocol_version
        resources = await client.list_resources()
        uris = [str(r.uri) for r in resources.resources]
        check(f"[{era}] resources/list has flows and plugin resources",
              "flow://test_simple_text" in uris and "test://static-text" in uris, ", ".join(uris[:4]))
        read = await client.read_resource("test://template/9/data")
        check(f"[{era}] resources/read through a template", "Data for ID: 9" in read.contents[0].text,
              read.contents[0].text)
        flow = await client.read_resource("flow://test_simple_text")
        summary = json.loads(flow.contents[0].text)
        check(f"[{era}] flow://{{name}} gives the flow's YAML and status",
              summary["status"] == "live" and summary["yaml"].startswith("test_simple_text:"),
              summary["yaml"].splitlines()[0])
        prompt = await client.get_prompt("test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        check(f"[{era}] prompts/get with arguments",
              prompt.messages[0].content.text == "Prompt with arguments: arg1='a', arg2='b'",
              prompt.messages[0].content.text)
        sampled = await client.call_tool("test_sampling", {"prompt": "hi"})
        check(f"[{era}] an op samples through the SDK's callback",
              text_of(sampled) == "LLM response: sampled <hi>", text_of(sampled))
        elicited = await client.call_tool("test_input_required_result_elicitation", {})
        check(f"[{era}] an op elicits through the SDK's callback",
              text_of(elicited) == "Hello, py-name!", text_of(elicited))
        if era >= "2026-07-28":
            rounds = await client.call_tool("test_input_required_result_multi_round", {})
            check(f"[{era}] two input-required rounds, driven by the SDK",
                  text_of(rounds) == "color=py-color", text_of(rounds))
        return era


async def main():
    legacy = await session("legacy")
    check("legacy mode negotiated a 2025 revision", legacy.startswith("2025"), legacy)
    modern = await session("2026-07-28")
    check("2026-07-28 mode negotiated 2026-07-28", modern == "2026-07-28", modern)


asyncio.run(main())
sys.exit(1 if failures else 0)
