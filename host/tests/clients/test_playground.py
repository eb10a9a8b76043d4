"""The playground (`GET /`) in headless Chromium, used as a person would through Selenium and
Debian's chromium-driver: pick a flow, fill the form, press Run, watch the stream, press Stop,
edit the flow file and watch the page follow. Screenshots go to target/client-tests; any
JavaScript error the page logs fails the test."""

import json
import os
import re
import shutil
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import ROOT, flowhost_server

ARTIFACTS = Path(os.environ.get("CLIENT_TEST_ARTIFACTS", ROOT / "target" / "client-tests"))

SLOW = """
slow_tick_flow:
  flow_content: TickOp(n=300, interval_ms=100)
  stream: true
  description: "A tick every 100 ms for 30 s: to stop half-way"
"""


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.fail("chromium and chromium-driver are needed (scripts/client-tests installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1100", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def wait(what, condition, seconds=15):
    deadline = time.time() + seconds
    last = None
    while time.time() < deadline:
        try:
            last = condition()
            if last:
                return last
        except Exception as err:  # the element is not there yet
            last = err
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def js_errors(driver, allowed=()):
    errors = []
    for entry in driver.get_log("browser"):
        if entry["level"] != "SEVERE":
            continue
        if any(re.search(pattern, entry["message"]) for pattern in allowed):
            continue
        errors.append(entry["message"])
    return errors


def metric(url, name, headers=None):
    request = urllib.request.Request(url + "/metrics", headers=headers or {})
    text = urllib.request.urlopen(request, timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def shot(driver, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"playground-{name}.png"
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 5_000, f"screenshot {path} is empty"


def by_css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, selector)


def run_button(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.XPATH, "//button[normalize-space()='Run']")


def pick(driver, flow):
    wait(f"{flow} in the list", lambda: by_css(driver, f'#flows li[data-flow="{flow}"]')).click()
    wait(f"{flow} selected", lambda: by_css(driver, "#flow-name").text == flow)


@pytest.fixture()
def flows(tmp_path):
    shutil.copy(ROOT / "flows" / "basic.yaml", tmp_path / "basic.yaml")
    (tmp_path / "slow.yaml").write_text(SLOW)
    return tmp_path


def test_playground_runs_flows_stops_a_stream_and_follows_file_edits(flows):
    with flowhost_server(flows=flows) as url:
        driver = browser()
        try:
            driver.get(url + "/")
            wait("the flow list", lambda: by_css(driver, '#flows li[data-flow="echo_flow"]'))
            assert "live" in by_css(driver, '#flows li[data-flow="echo_flow"] .status').text
            wait("the live badge", lambda: by_css(driver, "#connection").text == "live")
            wait("the ops table", lambda: "EchoOp" in by_css(driver, "#ops").text)
            assert "echo(query)" in by_css(driver, "#ops").text, "the tool column"
            # A marker that a page reload would wipe.
            driver.execute_script("window.__still_here = true;")

            # A JSON flow through the form.
            pick(driver, "echo_flow")
            field = by_css(driver, '#fields [name="query"]')
            assert field.get_attribute("required") is not None
            field.send_keys("hello playground")
            run_button(driver).click()
            wait("the answer", lambda: by_css(driver, "#output pre.answer").text == "hello playground")
            wait("done", lambda: by_css(driver, "#run-state").text.startswith("done"))
            shot(driver, "echo")

            # A stream flow: 300 chunks, counted and timed.
            pick(driver, "count_stream_flow")
            n = by_css(driver, '#fields [name="n"]')
            assert n.get_attribute("type") == "number"
            n.send_keys("300")
            run_button(driver).click()
            wait("300 chunks", lambda: by_css(driver, "#s-chunks").text == "300")
            wait("done", lambda: by_css(driver, "#run-state").text.startswith("done"))
            assert by_css(driver, "#output pre.answer").text == "hello " * 300
            assert by_css(driver, "#s-first").text.endswith("ms")
            shot(driver, "stream")

            # Stop a long stream half-way: the host sees the client go.
            cancelled_before = metric(url, "flowhost_cancellations_total")
            pick(driver, "slow_tick_flow")
            run_button(driver).click()
            wait("a few ticks", lambda: int(by_css(driver, "#s-chunks").text) >= 3)
            by_css(driver, "#stop").click()
            wait("stopped", lambda: by_css(driver, "#run-state").text.startswith("stopped"))
            wait("the host to cancel the run",
                 lambda: metric(url, "flowhost_cancellations_total") > cancelled_before
                 and metric(url, "flowhost_ops_running") == 0, seconds=30)
            ticks = int(by_css(driver, "#s-chunks").text)
            assert 3 <= ticks < 300, ticks
            shot(driver, "stopped")

            # Copy as: the snippets name this host and flow.
            pick(driver, "echo_flow")
            by_css(driver, "#copy-as summary").click()
            by_css(driver, '.tabs button[data-tab="curl"]').click()
            snippet = by_css(driver, "#snippet").text
            assert url + "/echo_flow" in snippet and "--json" in snippet, snippet
            by_css(driver, '.tabs button[data-tab="openai"]').click()
            assert url + "/v1" in by_css(driver, "#snippet").text
            by_css(driver, '.tabs button[data-tab="flowllm"]').click()
            assert "execute_flow(\"echo_flow\"" in by_css(driver, "#snippet").text
            by_css(driver, '.tabs button[data-tab="mcp"]').click()
            assert json.loads(by_css(driver, "#snippet").text.split("\n\n")[0])["mcpServers"]["flowhost"]["url"] == url + "/mcp"

            # Edit the flow file while the page is open: a new flow appears...
            basic = flows / "basic.yaml"
            good = basic.read_text()
            basic.write_text(good + '\nadded_flow:\n  flow_content: EchoOp()\n  description: "added while the page was open"\n')
            wait("added_flow on the page", lambda: by_css(driver, '#flows li[data-flow="added_flow"]'))
            # ...and a broken edit keeps the last good version live, marked stale, with the
            # diagnostic and its caret.
            basic.write_text(good.replace("flow_content: EchoOp()\n  description: \"Echo the query back (JSON answer)\"",
                                          "flow_content: EchoOp(\n  description: \"Echo the query back (JSON answer)\"", 1))
            wait("echo_flow stale", lambda: "stale" in by_css(driver, '#flows li[data-flow="echo_flow"] .status').text)
            diagnostic = wait("the diagnostic", lambda: by_css(driver, "#diagnostic").is_displayed() and by_css(driver, "#diagnostic").text)
            assert "basic.yaml" in diagnostic and "^" in diagnostic, diagnostic
            assert driver.execute_script("return window.__still_here === true;"), "the page reloaded"
            shot(driver, "stale")
            # The stale flow still runs on its last good version.
            field = by_css(driver, '#fields [name="query"]')
            field.clear()
            field.send_keys("still served")
            run_button(driver).click()
            wait("the answer", lambda: by_css(driver, "#output pre.answer").text == "still served")

            assert js_errors(driver) == []
        finally:
            driver.quit()


def test_playground_asks_for_the_api_key_once(flows):
    with flowhost_server(flows=flows, args=["--api-key", "s3cret"]) as url:
        driver = browser()
        try:
            driver.get(url + "/")
            wait("the key dialog", lambda: by_css(driver, "#key-dialog").get_attribute("open") is not None)
            shot(driver, "api-key")
            by_css(driver, "#key-input").send_keys("s3cret")
            by_css(driver, '#key-dialog button[value="ok"]').click()
            wait("the flow list", lambda: by_css(driver, '#flows li[data-flow="echo_flow"]'))
            pick(driver, "echo_flow")
            by_css(driver, '#fields [name="query"]').send_keys("with a key")
            run_button(driver).click()
            wait("the answer", lambda: by_css(driver, "#output pre.answer").text == "with a key")
            assert metric(url, "flowhost_http_requests_total", {"Authorization": "Bearer s3cret"}) > 0
            assert js_errors(driver, allowed=[r"Failed to load resource.*401"]) == []
        finally:
            driver.quit()
