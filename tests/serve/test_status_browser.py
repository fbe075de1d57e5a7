"""The status page in a real headless browser (Debian's chromium), from a real applied config."""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

import pytest
import requests

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


def _browse(url: str, screenshot: Path, profile: Path) -> tuple[str, list[str]]:
    """Chromium on ``url``: a screenshot, then the DOM it rendered; (DOM, stderr of both)."""
    assert CHROMIUM is not None
    common = [CHROMIUM, *FLAGS, "--window-size=1200,900"]
    shot = subprocess.run(
        [*common, f"--user-data-dir={profile}-shot", f"--screenshot={screenshot}", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    dom = subprocess.run(
        [*common, f"--user-data-dir={profile}-dom", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.returncode == 0 and screenshot.stat().st_size > 10_000, shot.stderr
    assert dom.returncode == 0, dom.stderr
    return dom.stdout, [shot.stderr, dom.stderr]


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_status_pages_render_in_chromium(tmp_path: Path) -> None:
    """The overview, a mirror page and a run page, as a browser renders them."""
    examples = tmp_path / "examples"
    shutil.copytree(
        REPO_ROOT / "examples", examples, ignore=shutil.ignore_patterns(".reconciler", "channels")
    )
    config = examples / "channels.yaml"
    assert cli.main(["apply", "-c", str(config)]) == 0
    # A failed run too, so the pages show an error.
    (examples / "channels" / "scratch" / "noarch" / "broken-1-0.conda").write_bytes(b"junk")
    assert cli.main(["apply", "-c", str(config)]) == 1

    server = ChannelServer(("127.0.0.1", 0), load_config(config))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        ARTEFACTS.mkdir(exist_ok=True)
        url = server.url
        view = requests.get(f"{url}/-/mirror/internal/demo-core?format=json", timeout=30).json()
        run_id = view["runs"][0]["run_id"]
        status = requests.get(f"{url}/api/status", timeout=30).json()
        scratch = next(c for c in status["channels"] if c["name"] == "scratch")
        failed_id = next(r["run_id"] for r in scratch["history"] if r["state"] == "failed")
        pages = {
            "status-page": "/",
            "mirrors-page": "/-/mirrors",
            "mirror-page": "/-/mirror/internal/demo-core",
            "run-page": f"/-/run/internal/{run_id}",
            "failed-run-page": f"/-/run/scratch/{failed_id}",
        }
        doms: dict[str, str] = {}
        logs: list[str] = []
        for name, path in pages.items():
            doms[name], stderr = _browse(url + path, ARTEFACTS / f"{name}.png", tmp_path / name)
            logs += stderr
    finally:
        server.shutdown()
        server.server_close()
    overview = doms["status-page"]
    # What the browser rendered holds the channels, the mirrors and the history.
    assert '<section class="channel" id="channel-internal">' in overview
    assert '<section class="channel" id="channel-scratch">' in overview
    assert "<td>demo-core</td><td>active</td><td>17 3 * * *</td>" in overview
    assert "<td>demo-metadata</td><td>passive</td>" in overview
    assert '<td class="failed">failed</td>' in overview
    assert "broken-1-0.conda" in overview
    assert '<svg class="timeline"' in overview
    assert '<a href="-/mirror/internal/demo-core">details</a>' in overview

    mirrors = doms["mirrors-page"]
    assert '<a href="../-/mirror/internal/demo-metadata">demo-metadata</a>' in mirrors
    assert "osx-arm64, noarch" in mirrors and "45 */6 * * *" in mirrors

    mirror = doms["mirror-page"]
    assert "<h1>Mirror demo-core</h1>" in mirror
    assert "<code>channels[0].filters.exclude[0]</code>: license: GPL, except name: libgcc*" in (
        mirror
    )
    assert "<code>channels[0].mirrors[0].filters.include[0]</code>: spec: demo-app &gt;=1.0" in (
        mirror
    )
    assert f'href="../../../-/run/internal/{run_id}"' in mirror
    assert '<svg class="timeline"' in mirror

    run = doms["run-page"]
    assert f"<h1>Run {run_id}</h1>" in run
    assert "<h2>Per location</h2>" in run and "<code>new-upstream</code>" in run
    assert '<tr><td>linux-64</td><td class="num">4</td>' in run
    assert "<h2>The channel's run</h2>" in run

    failed = doms["failed-run-page"]
    assert '<span class="failed">failed</span>' in failed and "<h2>Errors</h2>" in failed
    assert "broken-1-0.conda" in failed

    # No console messages, and every request the pages made succeeded.
    for stderr in logs:
        assert ":CONSOLE" not in stderr, stderr
    page_requests = [line for line in server.access_log if '"GET ' in line]
    assert page_requests and all('" 200 ' in line for line in page_requests), page_requests
