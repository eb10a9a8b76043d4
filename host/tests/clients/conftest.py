"""Shared helpers for the real-client tests: the flowhost binary serving the default flows."""

import contextlib
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("FLOWHOST_BIN", ROOT / "target" / "debug" / "flowhost"))


@contextlib.contextmanager
def flowhost_server(env=None, flows=None, args=()):
    """`flowhost serve` on a free port over `flows` (default: the repository's flows/); yields
    its base URL."""
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0", "--flows", str(flows or ROOT / "flows"), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "NO_COLOR": "1", **(env or {})},
    )
    url = None
    deadline = time.time() + 30
    while time.time() < deadline and url is None:
        line = proc.stderr.readline()
        if not line:
            break
        match = re.search(r"listening on (http://\S+)", line)
        url = match.group(1) if match else None
    # Keep reading the server's log so a chatty server never blocks on a full pipe.
    threading.Thread(target=lambda: proc.stderr.read(), daemon=True).start()
    try:
        assert url, "flowhost serve printed no banner"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI a skipped test is a failed one: a missing prerequisite (the local model, a
    browser) must show up as red, not vanish as a skip."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, where every prerequisite must be present: {report.longrepr}"
