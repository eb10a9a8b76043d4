"""Who may call what: named keys, OAuth bearer tokens (JWTs), rate limits, runs per subject and
the audit trail, seen through real clients against `flowhost serve --config` on the default
flows: plain HTTP (urllib), the official `openai` package on /v1, the official MCP Python SDK
over streamable HTTP on /mcp, and the playground in headless Chromium (Selenium).

A JWKS server in a thread serves a JWKS the tests change while the host runs (an RSA-2048 key
`r1`, an EC P-256 key `e1`; `r2` is added to test rotation); tokens are minted with PyJWT, and
the forged ones (`alg: none`, HS256 signed with the RSA public key as its HMAC secret) are
built by hand. One host serves most tests: keys alice (echo*), bob (count*), ratey
(echo_flow, 2/s) and root (every flow), plus tokens. The audit test starts its own host, so
that its trail and counters hold exactly the calls it makes.

Run through scripts/client-tests (it installs PyJWT, mcp, openai, selenium and chromium)."""

import asyncio
import base64
import hashlib
import hmac
import json
import re
import subprocess
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import BIN, flowhost_server
from test_playground import browser, by_css, js_errors, pick, run_button, shot, wait

ISSUER = "https://issuer.test"
AUDIENCE = "flowhost-test"
KEYS = {"alice": "alice-k3y", "bob": "bob-k3y", "ratey": "ratey-k3y", "root": "root-k3y"}
ALICE_FLOWS = ["echo_flow", "echo_stream_flow"]
BOB_FLOWS = ["count_stream_flow"]
FORBIDDEN = "no flow `{}` that this caller may call (GET /flows lists the flows it may)"


# ---- the issuer: keys, a JWKS server, tokens ----------------------------------------------

class Issuer:
    """Signing keys and the JWKS document a thread serves at /jwks.json (changeable while
    served), counting how often it was fetched."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        self.private = {
            "r1": rsa.generate_private_key(public_exponent=65537, key_size=2048),
            "e1": ec.generate_private_key(ec.SECP256R1()),
            "r2": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        }
        self.published = ["r1", "e1"]
        self.fetches = 0
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                issuer.fetches += 1
                body = json.dumps({"keys": [issuer.jwk(kid) for kid in issuer.published]}).encode()
                self.send_response(200 if self.path == "/jwks.json" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.jwks_url = f"http://127.0.0.1:{self.server.server_port}/jwks.json"

    def jwk(self, kid):
        from jwt.algorithms import ECAlgorithm, RSAAlgorithm

        key = self.private[kid].public_key()
        if kid.startswith("r"):
            jwk = RSAAlgorithm.to_jwk(key, as_dict=True)
            alg = "RS256"
        else:
            jwk = ECAlgorithm.to_jwk(key, as_dict=True)
            alg = "ES256"
        return {**jwk, "kid": kid, "alg": alg, "use": "sig"}

    def claims(self, sub="user-1", scope="flow:echo_flow", expires_in=300, **changes):
        claims = {"sub": sub, "iss": ISSUER, "aud": AUDIENCE, "iat": int(time.time()),
                  "exp": int(time.time()) + expires_in}
        if scope is not None:
            claims["scope"] = scope
        claims.update(changes)
        return claims

    def token(self, kid="r1", signed_with=None, **claims):
        """A token signed with key `signed_with` (default: `kid`'s) and naming `kid`."""
        import jwt

        signer = signed_with or kid
        alg = "RS256" if signer.startswith("r") else "ES256"
        return jwt.encode(self.claims(**claims), self.private[signer], algorithm=alg, headers={"kid": kid})

    def public_pem(self, kid):
        from cryptography.hazmat.primitives import serialization

        return self.private[kid].public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def b64url(data):
    if not isinstance(data, bytes):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_token(claims):
    """`alg: none`: no signature at all."""
    return f"{b64url({'alg': 'none', 'typ': 'JWT'})}.{b64url(claims)}."


def hmac_token(claims, secret, kid):
    """HS256 with a key anyone can read as the HMAC secret (the algorithm-confusion attack)."""
    signing_input = f"{b64url({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64url(claims)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


# ---- the host ----------------------------------------------------------------------------

def sha256(text):
    return hashlib.sha256(text.encode()).hexdigest()


def write_config(path, issuer, audit=None):
    config = f"""\
auth:
  keys:
    alice: {{key_sha256: "{sha256(KEYS['alice'])}", flows: ["echo*"]}}
    bob: {{key_sha256: "{sha256(KEYS['bob'])}", flows: ["count*"]}}
    ratey: {{key_sha256: "{sha256(KEYS['ratey'])}", flows: ["echo_flow"], rate: "2/s"}}
    root: {{key_sha256: "{sha256(KEYS['root'])}"}}
  jwt:
    issuer: "{ISSUER}"
    audience: "{AUDIENCE}"
    jwks_url: "{issuer.jwks_url}"
    algorithms: [RS256, ES256]
    leeway: 0
    flows: ["*"]
"""
    if audit:
        config += f"audit:\n  path: {audit}\n  inputs: false\n  max_bytes: 10MB\n"
    path.write_text(config)
    return path


@pytest.fixture(scope="module")
def issuer():
    issuer = Issuer()
    yield issuer
    issuer.server.shutdown()


@pytest.fixture(scope="module")
def host(issuer, tmp_path_factory):
    config = write_config(tmp_path_factory.mktemp("auth") / "flowhost.yaml", issuer)
    with flowhost_server(args=["--config", str(config)]) as url:
        yield url


def http(method, url, credential=None, body=None, headers=None):
    """(status, headers, parsed body) for any status."""
    headers = dict(headers or {})
    if credential:
        headers["Authorization"] = f"Bearer {credential}"
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=10)
    except urllib.error.HTTPError as err:
        response = err
    with response:
        text = response.read().decode()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = text
    return response.status, response.headers, parsed


def listed_flows(url, credential):
    status, _, body = http("GET", url + "/flows", credential)
    assert status == 200, body
    assert body["errors"] == [] or credential == KEYS["root"], body["errors"]
    return sorted(f["name"] for f in body["flows"])


def openai_client(url, credential):
    from openai import OpenAI

    return OpenAI(base_url=url + "/v1", api_key=credential, max_retries=0)


def chat(url, credential, model="echo_flow", content="hi"):
    completion = openai_client(url, credential).chat.completions.create(
        model=model, messages=[{"role": "user", "content": content}])
    return completion.choices[0].message.content


def mcp(url, credential, *calls):
    """tools/list, then each (tool, arguments) through tools/call, with the official MCP SDK
    over streamable HTTP. Returns {"tools", "results" [(is_error, text)], "statuses" (every
    HTTP status the SDK got), "error" (what the SDK raised, if anything)}."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    seen = {"tools": None, "results": [], "statuses": [], "error": None}

    async def record(response):
        seen["statuses"].append(response.status_code)

    async def main():
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {credential}"},
                                      timeout=httpx2.Timeout(30, read=60),
                                      event_hooks={"response": [record]}) as client:
            transport = streamable_http_client(url + "/mcp", http_client=client)
            async with Client(transport, cache=None) as session:
                seen["tools"] = sorted(t.name for t in (await session.list_tools()).tools)
                for name, arguments in calls:
                    result = await session.call_tool(name, arguments)
                    text = "".join(getattr(block, "text", "") for block in result.content)
                    seen["results"].append((bool(result.is_error), text))

    try:
        asyncio.run(main())
    except Exception as err:  # noqa: BLE001 - the SDK's refusal is what some tests check
        seen["error"] = err
    return seen


def every_flow(url):
    return listed_flows(url, KEYS["root"])


def catalog_event(url, credential):
    """The flow names of the first `catalog` event of GET /events (the playground's feed)."""
    request = urllib.request.Request(url + "/events", headers={
        "Authorization": f"Bearer {credential}", "Accept": "text/event-stream"})
    with urllib.request.urlopen(request, timeout=10) as response:
        event, data = None, []
        for raw in response:
            line = raw.decode().rstrip("\r\n")
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())
            elif not line and data:
                if event == "catalog":
                    return sorted(f["name"] for f in json.loads("\n".join(data))["flows"]["flows"])
                event, data = None, []
    pytest.fail("GET /events sent no catalog event")


# ---- 1. tokens over HTTP, /v1 and /mcp -----------------------------------------------------

def test_valid_tokens_reach_the_flows_their_scopes_name(host, issuer):
    everything = every_flow(host)
    assert {"echo_flow", "count_stream_flow", "parallel_flow"} <= set(everything)
    narrow = issuer.token("r1", scope="openid flow:echo_flow")
    wide = issuer.token("e1", sub="user-2", scope="flow:*")

    # RS256, one flow.
    assert listed_flows(host, narrow) == ["echo_flow"]
    status, _, body = http("POST", host + "/echo_flow", narrow, {"query": "by rs256"})
    assert (status, body["answer"]) == (200, "by rs256"), body
    status, _, body = http("POST", host + "/count_stream_flow", narrow, {"n": 1})
    assert (status, body["detail"]) == (403, FORBIDDEN.format("count_stream_flow"))
    assert [m.id for m in openai_client(host, narrow).models.list()] == ["echo_flow"]
    assert chat(host, narrow) == "hi"
    seen = mcp(host, narrow, ("echo_flow", {"query": "over mcp"}))
    assert seen["error"] is None, seen
    assert seen["tools"] == ["echo_flow"]
    assert seen["results"] == [(False, "over mcp")], seen

    # ES256, every flow.
    assert listed_flows(host, wide) == everything
    status, _, body = http("POST", host + "/count_stream_flow", wide, {"n": 2})
    assert status == 200, body
    assert sorted(m.id for m in openai_client(host, wide).models.list()) == everything
    assert chat(host, wide, content="by es256") == "by es256"
    seen = mcp(host, wide, ("echo_flow", {"query": "es256 over mcp"}))
    assert seen["error"] is None, seen
    assert seen["tools"] == everything
    assert seen["results"] == [(False, "es256 over mcp")], seen

    # Scopes as an `scp` list, with a glob.
    listed = issuer.token("e1", sub="user-3", scope=None, scp=["flow:count*"])
    assert listed_flows(host, listed) == ["count_stream_flow"]


def assert_refused(host, token, reason):
    """401 on every transport, naming `reason`."""
    from openai import AuthenticationError

    status, headers, body = http("POST", host + "/echo_flow", token, {"query": "x"})
    assert status == 401, body
    assert body["detail"].startswith(f"the credential was refused: {reason}"), body
    challenge = headers["WWW-Authenticate"]
    assert challenge.startswith(f'Bearer resource_metadata="{host}/.well-known/oauth-protected-resource"')
    assert 'error="invalid_token"' in challenge and reason in challenge, challenge

    with pytest.raises(AuthenticationError) as err:
        chat(host, token)
    assert err.value.status_code == 401
    assert err.value.body["code"] == "invalid_api_key" and reason in err.value.body["message"]

    seen = mcp(host, token)
    assert seen["tools"] is None and seen["error"] is not None, seen
    assert 401 in seen["statuses"] and all(s == 401 for s in seen["statuses"]), seen


@pytest.mark.parametrize("case", ["expired", "audience", "issuer", "alg-none", "hs256-with-public-key"])
def test_refused_tokens(host, issuer, case):
    claims = issuer.claims(sub="mallory", scope="flow:*")
    token, reason = {
        "expired": (issuer.token("r1", expires_in=-5), "the token has expired"),
        "audience": (issuer.token("e1", aud="another-service"), "the token is for another audience (aud)"),
        "issuer": (issuer.token("r1", iss="https://evil.test"), "the token is from another issuer (iss)"),
        "alg-none": (unsigned_token(claims), "not a signed JWT ("),
        "hs256-with-public-key": (hmac_token(claims, issuer.public_pem("r1"), "r1"),
                                  "algorithm HS256 is not accepted"),
    }[case]
    assert_refused(host, token, reason)


def test_a_rotated_key_is_fetched_and_an_unknown_one_refused(host, issuer):
    """The only test that sends the module's host an unknown key id: the host fetches the JWKS
    for one at most once a minute."""
    fetches = issuer.fetches
    # The issuer rotates first (adds r2), then signs with it: the host fetches the JWKS again.
    issuer.published.append("r2")
    rotated = issuer.token("r2", sub="user-r2", scope="flow:echo_flow")
    status, _, body = http("POST", host + "/echo_flow", rotated, {"query": "rotated"})
    assert (status, body.get("answer")) == (200, "rotated"), body
    assert issuer.fetches == fetches + 1
    assert chat(host, rotated, content="rotated /v1") == "rotated /v1"
    seen = mcp(host, rotated, ("echo_flow", {"query": "rotated mcp"}))
    assert seen["error"] is None and seen["tools"] == ["echo_flow"], seen
    # A key id never published: refused, and no second fetch within the minute.
    ghost = issuer.token("ghost", signed_with="r2")
    assert_refused(host, ghost, "unknown key id `ghost`")
    assert issuer.fetches == fetches + 1


def test_a_token_without_flow_scopes_sees_and_calls_nothing(host, issuer):
    from openai import PermissionDeniedError

    token = issuer.token("r1", sub="user-noscope", scope="openid profile")
    assert listed_flows(host, token) == []
    assert list(openai_client(host, token).models.list()) == []
    status, _, body = http("POST", host + "/echo_flow", token, {"query": "x"})
    assert (status, body["detail"]) == (403, FORBIDDEN.format("echo_flow"))
    with pytest.raises(PermissionDeniedError) as err:
        chat(host, token)
    assert err.value.body["code"] == "permission_denied"
    seen = mcp(host, token, ("echo_flow", {"query": "x"}))
    assert seen["error"] is None and seen["tools"] == [], seen
    assert seen["results"] == [(True, "no tool `echo_flow` that this caller may call (tools/list names the tools it may)")]


# ---- 2. how a client learns where tokens come from ---------------------------------------

def test_protected_resource_metadata_and_the_challenge(host):
    status, _, document = http("GET", host + "/.well-known/oauth-protected-resource")
    assert status == 200, document
    assert document["resource"] == host
    assert document["authorization_servers"] == [ISSUER]
    assert document["bearer_methods_supported"] == ["header"]
    assert "flow:*" in document["scopes_supported"]
    status, _, document = http("GET", host + "/.well-known/oauth-protected-resource/mcp")
    assert (status, document["resource"]) == (200, host + "/mcp")

    root = f"{host}/.well-known/oauth-protected-resource"
    for method, path in [("GET", "/flows"), ("POST", "/echo_flow"), ("GET", "/v1/models"), ("POST", "/mcp")]:
        status, headers, body = http(method, host + path, body={} if method == "POST" else None)
        assert status == 401, (path, body)
        message = body["error"]["message"] if path.startswith("/v1/") else body["detail"]
        assert message.startswith("missing credential: "), body
        challenge = re.fullmatch(r'Bearer resource_metadata="([^"]+)"', headers["WWW-Authenticate"])
        assert challenge, headers["WWW-Authenticate"]
        if path != "/mcp":
            assert challenge.group(1) == root, path
        # The document a 401 names covers the URL refused (the MCP SDK's check: same origin,
        # the resource's path a prefix of the request's).
        status, _, document = http("GET", challenge.group(1))
        assert status == 200 and (host + path).startswith(document["resource"]), (path, document)

    status, headers, _ = http("GET", host + "/flows", "not-a-key")
    assert status == 401
    assert 'error="invalid_token", error_description="neither a known key nor a JWT"' in headers["WWW-Authenticate"]


def test_without_tokens_there_is_no_metadata(tmp_path):
    with flowhost_server(args=["--api-key", "only-key"]) as url:
        assert http("GET", url + "/.well-known/oauth-protected-resource")[0] == 404
        status, headers, body = http("GET", url + "/flows")
        assert (status, headers["WWW-Authenticate"]) == (401, "Bearer"), body
        status, headers, _ = http("GET", url + "/flows", "wrong")
        assert (status, headers["WWW-Authenticate"]) == \
            (401, 'Bearer error="invalid_token", error_description="not a known key"')
        # http.api_key: subject `default`, every flow.
        assert http("POST", url + "/count_stream_flow", "only-key", {"n": 1})[0] == 200


# ---- 3. named keys -------------------------------------------------------------------------

def test_named_keys_see_and_call_only_their_flows(host):
    from openai import PermissionDeniedError

    everything = every_flow(host)
    for name, own, other in [("alice", ALICE_FLOWS, "count_stream_flow"), ("bob", BOB_FLOWS, "echo_flow")]:
        key = KEYS[name]
        assert listed_flows(host, key) == own, name
        assert sorted(m.id for m in openai_client(host, key).models.list()) == own
        status, _, spec = http("GET", host + "/openapi.json", key)
        assert status == 200, spec
        assert sorted(p for p in spec["paths"] if p.lstrip("/") in everything) == [f"/{f}" for f in own]
        status, _, resources = http("GET", host + "/resources", key)
        flow_uris = sorted(r["uri"] for r in resources["resources"] if r["uri"].startswith("flow://"))
        assert flow_uris == [f"flow://{f}" for f in own], name
        assert catalog_event(host, key) == own

        call = ("echo_flow", {"query": "mine"}) if name == "alice" else ("count_stream_flow", {"n": 2})
        status, _, body = http("POST", f"{host}/{call[0]}", key, call[1])
        assert status == 200, body
        # Someone else's flow and a flow that does not exist: the same refusal, word for word.
        forbidden = http("POST", f"{host}/{other}", key, {})
        missing = http("POST", f"{host}/no_such_flow", key, {})
        assert forbidden[0] == missing[0] == 403
        assert forbidden[2]["detail"] == FORBIDDEN.format(other)
        assert missing[2]["detail"] == FORBIDDEN.format("no_such_flow")
        assert forbidden[2]["detail"].replace(other, "X") == missing[2]["detail"].replace("no_such_flow", "X")
        with pytest.raises(PermissionDeniedError) as err:
            chat(host, key, model=other)
        assert err.value.body["code"] == "permission_denied"
        assert err.value.body["message"] == FORBIDDEN.format(other)

        seen = mcp(host, key, call, (other, {}), ("no_such_flow", {}))
        assert seen["error"] is None, seen
        assert seen["tools"] == own
        ok, denied, unknown = seen["results"]
        assert ok[0] is False, ok
        tool_refusal = "no tool `{}` that this caller may call (tools/list names the tools it may)"
        assert denied == (True, tool_refusal.format(other))
        assert unknown == (True, tool_refusal.format("no_such_flow"))


def page_flows(driver):
    from selenium.webdriver.common.by import By

    return sorted(li.get_attribute("data-flow") for li in driver.find_elements(By.CSS_SELECTOR, "#flows li"))


def test_the_playground_lists_each_keys_flows(host):
    driver = browser()
    try:
        for name, own in [("alice", ALICE_FLOWS), ("bob", BOB_FLOWS)]:
            driver.get(host + "/")
            # A new key: forget the last one (the page keeps it in this tab's sessionStorage).
            driver.execute_script("sessionStorage.clear();")
            driver.refresh()
            wait("the key dialog", lambda: by_css(driver, "#key-dialog").get_attribute("open") is not None)
            by_css(driver, "#key-input").send_keys(KEYS[name])
            by_css(driver, '#key-dialog button[value="ok"]').click()
            wait(f"{name}'s flows", lambda: page_flows(driver) == own)
            wait("the live badge", lambda: by_css(driver, "#connection").text == "live")
            assert driver.execute_script("return sessionStorage.getItem('flowhost-api-key');") == KEYS[name]
            shot(driver, f"auth-{name}")
        # Bob runs his flow from the page.
        pick(driver, "count_stream_flow")
        by_css(driver, '#fields [name="n"]').send_keys("3")
        run_button(driver).click()
        wait("3 chunks", lambda: by_css(driver, "#s-chunks").text == "3")
        assert by_css(driver, "#output pre.answer").text.strip() == "hello hello hello"
        # A key that may not see every flow may not read /metrics: the page asks once per key.
        assert js_errors(driver, allowed=[r"Failed to load resource.*401", r"/metrics .*Failed to load resource.*403"]) == []
        assert by_css(driver, "#m-requests").text == "—"
    finally:
        driver.quit()


# ---- 4. rate limits ------------------------------------------------------------------------

def test_rate_limit_over_http_openai_and_mcp(host):
    from openai import RateLimitError

    key = KEYS["ratey"]
    # Listings do not count.
    for _ in range(5):
        assert http("GET", host + "/flows", key)[0] == 200
    statuses = [http("POST", host + "/echo_flow", key, {"query": "q"}) for _ in range(3)]
    assert [s[0] for s in statuses] == [200, 200, 429], statuses
    _, headers, body = statuses[2]
    assert headers["Retry-After"] == "1"
    assert body["detail"] == "rate limit reached: `ratey` may make 2/s calls; retry in 1 s"
    time.sleep(int(headers["Retry-After"]))
    assert http("POST", host + "/echo_flow", key, {"query": "again"})[0] == 200

    time.sleep(1)  # a full bucket again
    client = openai_client(host, key)
    ask = dict(model="echo_flow", messages=[{"role": "user", "content": "hi"}])
    assert client.chat.completions.create(**ask).choices[0].message.content == "hi"
    assert client.chat.completions.create(**ask).choices[0].message.content == "hi"
    with pytest.raises(RateLimitError) as err:
        client.chat.completions.create(**ask)
    assert err.value.body["code"] == "rate_limit_exceeded"
    assert err.value.body["message"].startswith("rate limit reached: `ratey` may make 2/s calls")
    assert err.value.response.headers["Retry-After"] == "1"
    time.sleep(1)
    assert client.chat.completions.create(**ask).choices[0].message.content == "hi"

    time.sleep(1)
    seen = mcp(host, key, *[("echo_flow", {"query": f"m{i}"}) for i in range(3)])
    assert seen["error"] is None, seen
    assert [r[0] for r in seen["results"]] == [False, False, True], seen
    assert seen["results"][2][1].startswith("rate limit reached: `ratey` may make 2/s calls"), seen
    time.sleep(1)
    seen = mcp(host, key, ("echo_flow", {"query": "after"}))
    assert seen["results"][0][0] is False, seen


# ---- 5. runs belong to their subject -------------------------------------------------------

def start_async(host, credential, headers=None):
    status, response_headers, body = http("POST", host + "/echo_flow", credential, {"query": "later"},
                                          {"Prefer": "respond-async", **(headers or {})})
    assert status in (200, 202), body
    return body["run_id"], response_headers.get("Location")


def test_runs_belong_to_their_subject(host, issuer):
    alice, bob = KEYS["alice"], KEYS["bob"]
    run_id, location = start_async(host, alice)
    assert location == f"/runs/{run_id}"
    assert http("GET", host + location, bob)[0] == 404
    assert http("DELETE", host + location, bob)[0] == 404
    assert http("GET", host + location + "/events", bob)[0] == 404
    status, _, run = http("GET", host + location, alice)
    assert (status, run["run_id"]) == (200, run_id), run

    token = issuer.token("e1", sub="user-idem", scope="flow:echo_flow")
    headers = {"Idempotency-Key": "same-key-1"}
    first, _ = start_async(host, alice, headers)
    theirs, _ = start_async(host, token, headers)
    again, _ = start_async(host, alice, headers)
    assert first != theirs, "one Idempotency-Key, two subjects: two runs"
    assert again == first, "the same subject and key: the same run"
    assert http("GET", f"{host}/runs/{first}", token)[0] == 404
    assert http("GET", f"{host}/runs/{theirs}", token)[0] == 200


# ---- 6. the audit trail --------------------------------------------------------------------

def metrics(url, credential):
    """flowhost_calls_total as {(subject, outcome): count}."""
    text = http("GET", url + "/metrics", credential)[2]
    calls = {}
    for line in text.splitlines():
        if line.startswith("flowhost_calls_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            calls[(labels["subject"], labels["outcome"])] = float(line.rsplit(" ", 1)[1])
    return calls


def test_the_audit_trail_and_its_chain(issuer, tmp_path):
    audit = tmp_path / "audit.jsonl"
    config = write_config(tmp_path / "flowhost.yaml", issuer, audit=audit)
    traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    with flowhost_server(args=["--config", str(config)]) as url:
        alice = KEYS["alice"]
        assert http("POST", url + "/echo_flow", alice, {"query": "a"}, {"traceparent": traceparent})[0] == 200
        assert http("POST", url + "/count_stream_flow", alice, {"n": 1})[0] == 403
        assert [http("POST", url + "/echo_flow", KEYS["ratey"], {"query": "r"})[0] for _ in range(3)] == [200, 200, 429]
        assert chat(url, issuer.token("e1", sub="auditor", scope="flow:echo_flow")) == "hi"
        seen = mcp(url, KEYS["bob"], ("count_stream_flow", {"n": 3}))
        assert seen["results"] and seen["results"][0][0] is False, seen
        run_id, location = start_async(url, alice)
        wait("the async run to end", lambda: http("GET", url + location, alice)[2]["status"] == "completed")
        expected = [
            ("alice", "http", "echo_flow", "ok"),
            ("alice", "http", "count_stream_flow", "denied"),
            ("ratey", "http", "echo_flow", "ok"),
            ("ratey", "http", "echo_flow", "ok"),
            ("ratey", "http", "echo_flow", "rate_limited"),
            ("auditor", "openai", "echo_flow", "ok"),
            ("bob", "mcp", "count_stream_flow", "ok"),
            ("alice", "async", "echo_flow", "ok"),
        ]
        text = wait("the audit lines", lambda: len(audit.read_text().splitlines()) >= len(expected) and audit.read_text())
        # /metrics names flows: only a caller that may see every flow reads it.
        assert http("GET", url + "/metrics", KEYS["bob"])[0] == 403
        assert metrics(url, KEYS["root"]) == {
            ("alice", "ok"): 2, ("alice", "denied"): 1, ("ratey", "ok"): 2, ("ratey", "rate_limited"): 1,
            ("jwt", "ok"): 1, ("bob", "ok"): 1,
        }

    lines = text.splitlines()
    entries = [json.loads(line) for line in lines]
    assert len(entries) == len(expected), entries
    assert sorted((e["subject"], e["transport"], e["flow"], e["outcome"]) for e in entries) == sorted(expected)
    # Each line names the hash of the one before it.
    previous = "0" * 64
    for line, entry in zip(lines, entries):
        assert entry["prev"] == previous
        previous = hashlib.sha256(line.encode()).hexdigest()
    traced = [e for e in entries if "traceparent" in e]
    assert [(e["subject"], e["flow"], e["traceparent"]) for e in traced] == [("alice", "echo_flow", traceparent)]
    (async_line,) = [e for e in entries if e["transport"] == "async"]
    assert async_line["run_id"] == run_id
    (mcp_line,) = [e for e in entries if e["transport"] == "mcp"]
    assert mcp_line["chunks"] == 3
    assert all("input" not in e for e in entries)  # audit.inputs: false

    verified = subprocess.run([str(BIN), "audit", "verify", str(audit)], capture_output=True, text=True, timeout=30)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"ok: {len(expected)} line(s), chain intact"), verified.stdout

    # Edit line 4 (its subject): the chain breaks there, and verify says which line.
    k = 4
    edited = lines[k - 1].replace(f'"subject":"{entries[k - 1]["subject"]}"', '"subject":"someone-else"')
    assert edited != lines[k - 1]
    audit.write_text("\n".join(lines[:k - 1] + [edited] + lines[k:]) + "\n")
    broken = subprocess.run([str(BIN), "audit", "verify", str(audit)], capture_output=True, text=True, timeout=30)
    assert broken.returncode == 1, broken.stdout
    assert f"{audit}:{k}: line {k} was edited, or lines after it were deleted" in broken.stderr, broken.stderr
