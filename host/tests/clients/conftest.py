"""Shared helpers for the real-client tests: the flowhost binary serving the default flows."""

import contextlib
import os
import re
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("FLOWHOST_BIN", ROOT / "target" / "debug" / "flowhost"))


@contextlib.contextmanager
def flowhost_server(env=None):
    """`flowhost serve` on a free port over the repository's flows/; yields its base URL."""
    proc = subprocess.Popen(
        [str(BIN), "serve", "--port", "0", "--flows", str(ROOT / "flows")],
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
    try:
        assert url, "flowhost serve printed no banner"
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=15)
