"""The status page in a real headless browser (Debian's chromium), from a real applied config."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.config.models import load_config
from reconciler.serve.server import ChannelServer
from tests.conftest import REPO_ROOT

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTEFACTS = REPO_ROOT / "tests" / "artefacts"

# Flags that keep Chromium off the (closed) network and quiet in a container.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_status_page_renders_in_chromium(tmp_path: Path) -> None:
    examples = tmp_path / "examples"
    shutil.copytree(
        REPO_ROOT / "examples", examples, ignore=shutil.ignore_patterns(".reconciler", "channels")
    )
    config = examples / "channels.yaml"
    assert cli.main(["apply", "-c", str(config)]) == 0
    # A failed run too, so the page shows an error.
    (examples / "channels" / "scratch" / "noarch" / "broken-1-0.conda").write_bytes(b"junk")
    assert cli.main(["apply", "-c", str(config)]) == 1

    server = ChannelServer(("127.0.0.1", 0), load_config(config))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        assert CHROMIUM is not None
        ARTEFACTS.mkdir(exist_ok=True)
        screenshot = ARTEFACTS / "status-page.png"
        common = [CHROMIUM, *FLAGS, "--window-size=1200,900"]
        shot = subprocess.run(
            [
                *common,
                f"--user-data-dir={tmp_path / 'p1'}",
                f"--screenshot={screenshot}",
                server.url + "/",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        dom = subprocess.run(
            [*common, f"--user-data-dir={tmp_path / 'p2'}", "--dump-dom", server.url + "/"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000
    page = dom.stdout
    # What the browser rendered holds the channels, the mirrors and the history.
    assert '<section class="channel" id="channel-internal">' in page
    assert '<section class="channel" id="channel-scratch">' in page
    assert "<td>demo-core</td><td>active</td><td>17 3 * * *</td>" in page
    assert "<td>demo-metadata</td><td>passive</td>" in page
    assert '<td class="failed">failed</td>' in page
    assert "broken-1-0.conda" in page
    assert '<svg class="timeline"' in page
    # No console messages, and every request the page made succeeded.
    for run in (shot, dom):
        assert ":CONSOLE" not in run.stderr, run.stderr
    page_requests = [line for line in server.access_log if '"GET ' in line]
    assert page_requests and all('" 200 ' in line for line in page_requests), page_requests
