"""The admin views over HTTP, from the bundled example applied for real: every mirror, a
channel with its packages, a mirror, a run; a private channel's views only with its token."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from typing import Any
from urllib.parse import urljoin

import pytest
import requests
import yaml

from reconciler import cli
from tests.conftest import REPO_ROOT
from tests.serve.helpers import running

TOKEN = "views-reader-3f9a0c2e7b41d5a8"
WRONG = "views-wrong-0000000000000000"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The example, with ``internal`` made private (a token grants it), applied three
    times: as it is; with one more exclude rule (a removal, naming the rule); with a broken
    package dropped into ``scratch`` (a failed run)."""
    root = tmp_path_factory.mktemp("views")
    examples = root / "examples"
    shutil.copytree(
        REPO_ROOT / "examples", examples, ignore=shutil.ignore_patterns(".reconciler", "channels")
    )
    config = examples / "channels.yaml"
    data = yaml.safe_load(config.read_text())
    data["channels"][0]["access"] = "private"
    data["serve"] = {
        "tokens": [{"name": "readers", "token_env": "VIEWS_E2E_TOKEN", "channels": ["internal"]}]
    }
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VIEWS_E2E_TOKEN", TOKEN)
        assert cli.main(["apply", "-c", str(config)]) == 0
        data["channels"][0]["filters"]["exclude"].append({"name": "demo-tool"})
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        assert cli.main(["apply", "-c", str(config)]) == 0
        (examples / "channels" / "scratch" / "noarch" / "broken-1-0.conda").write_bytes(b"junk")
        assert cli.main(["apply", "-c", str(config)]) == 1
        with running(config) as server:
            yield {"url": server.url, "server": server}


def _get(served: dict[str, Any], path: str, **kwargs: Any) -> requests.Response:
    response = requests.get(served["url"] + path, timeout=60, **kwargs)
    for secret in (TOKEN, WRONG):
        assert secret not in response.text, path
    return response


def _mine(served: dict[str, Any], path: str) -> requests.Response:
    """``path`` under the conda-style token prefix; must answer 200."""
    response = _get(served, f"/t/{TOKEN}{path}")
    assert response.status_code == 200, (path, response.text[:300])
    return response


def test_all_mirrors(served: dict[str, Any]) -> None:
    anonymous = _get(served, "/-/mirrors")
    assert anonymous.status_code == 200 and "text/html" in anonymous.headers["Content-Type"]
    # The private channel's mirrors are not listed without its token; its name is.
    assert "demo-core" not in anonymous.text and "demo-metadata" not in anonymous.text
    assert "private channels, shown with a token that grants them: internal" in anonymous.text
    assert '<a href="../-/mirror/pypi/pypi-demo">pypi-demo</a>' in anonymous.text
    listed = _get(served, "/-/mirrors?format=json").json()
    assert [m["name"] for m in listed["mirrors"]] == ["pypi-demo"]
    assert listed["private_channels"] == ["internal"]

    page = _mine(served, "/-/mirrors").text
    row = re.search(
        r"<tr><td><a[^>]*>internal</a></td><td><a[^>]*>demo-core</a></td>.*?</tr>", page
    )
    assert row is not None, page
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row.group(0))
    assert cells[3:6] == ["active", "linux-64, noarch", "17 3 * * *"]
    assert '<span class="completed">completed</span>' in cells[6]
    assert cells[8].startswith("in ")  # next due, from the schedule
    mirrors = {m["name"]: m for m in _mine(served, "/-/mirrors?format=json").json()["mirrors"]}
    assert set(mirrors) == {"demo-core", "demo-metadata", "pypi-demo"}
    core = mirrors["demo-core"]
    assert core["source"].endswith("upstream/demo") and core["mode"] == "active"
    assert core["locations"] == ["linux-64", "noarch"] and core["state"] == "completed"
    assert core["schedule"] == "17 3 * * *" and core["next_due"]
    assert mirrors["pypi-demo"]["locations"] == ["demo-tool", "demo-native>=0.5"]


def test_a_private_channel_s_views_need_its_token(served: dict[str, Any]) -> None:
    run_id = _mine(served, "/-/mirror/internal/demo-core?format=json").json()["runs"][0]["run_id"]
    paths = [
        "/-/channel/internal",
        "/-/mirror/internal/demo-core",
        "/-/mirror/internal/no-such-mirror",  # the same answer: mirror names stay private
        f"/-/run/internal/{run_id}",
        "/-/run/internal/no-such-run",
    ]
    for path in paths:
        anonymous = _get(served, path)
        assert anonymous.status_code == 401, path
        assert anonymous.headers["WWW-Authenticate"].startswith('Basic realm="')
        assert "demo-core" not in anonymous.text or "no-such" in path
        wrong = _get(served, path, headers={"Authorization": f"Bearer {WRONG}"})
        assert wrong.status_code == 403, path
        assert _get(served, f"/t/{WRONG}{path}").status_code == 403
    bearer = _get(served, paths[0], headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200 and "Channel internal" in bearer.text
    assert _get(served, f"/t/{TOKEN}/-/mirror/internal/no-such-mirror").status_code == 404
    assert _get(served, f"/t/{TOKEN}/-/run/internal/no-such-run").status_code == 404
    assert _get(served, "/-/channel/no-such-channel").status_code == 404
    # The overview still lists the private channel by name only.
    overview = _get(served, "/").text
    assert '<section class="channel private" id="channel-internal">' in overview
    assert "-/channel/internal" not in overview


def test_a_channel_page_shows_filters_mirrors_and_searchable_packages(
    served: dict[str, Any],
) -> None:
    page = _mine(served, "/-/channel/internal").text
    assert (
        "<code>channels[0].filters.exclude[0]</code>: license: GPL, except name: libgcc* or "
        "name: libstdcxx* or name: libgomp" in page
    )
    assert "<code>channels[0].mirrors[1].filters.include[0]</code>: name: demo-app" in page
    assert '<a href="../../-/mirror/internal/demo-core">demo-core</a>' in page
    assert "7 of 7 package file(s)" in page and '<svg class="timeline"' in page
    assert "<code>channels[0].filters.exclude[2]</code>: name: demo-tool" in page
    found = _mine(served, "/-/channel/internal?q=demo-app&location=linux-64").text
    rows = re.findall(r"<tr><td>(demo-[a-z]+)</td><td>([^<]*)</td>", found)
    assert rows == [("demo-app", "2.0"), ("demo-app", "1.0")]  # newest first
    assert '<option value="linux-64" selected>' in found
    assert 'href="../../internal/linux-64/demo-app-2.0-py311_0.conda"' in found
    # The counts come from the parsed listings, and agree with the kinds' (/api/status).
    api = {c["name"]: c for c in _mine(served, "/api/status").json()["channels"]}
    for name in ("internal", "scratch", "pypi"):
        view = _mine(served, f"/-/channel/{name}?format=json").json()["channel"]
        assert view["packages"] == api[name]["packages"], name
    listing = _mine(served, "/-/channel/internal?format=json&q=lib*").json()["packages"]
    assert {r["name"] for r in listing["rows"]} == {"libgcc-ng"}
    assert listing["total"] == 7 and listing["matched"] == 1

    pypi = _get(served, "/-/channel/pypi?q=native")
    assert pypi.status_code == 200
    assert re.findall(r"<tr><td>(demo-[a-z]+)</td>", pypi.text) == ["demo-native"]
    assert "<code>channels[2].filters.wheel_tags.exclude[0]</code>: platform: win*" in pypi.text


def test_a_mirror_page_shows_its_effective_filters_and_runs(served: dict[str, Any]) -> None:
    page = _mine(served, "/-/mirror/internal/demo-core").text
    assert "<h2>Effective filters</h2>" in page
    assert "<code>channels[0].filters.exclude[1]</code>: name: pywin32, subdir: win-*" in page
    assert "<code>channels[0].mirrors[0].filters.latest</code>: 3" in page
    assert "<code>channels[0].mirrors[0].filters.dependencies</code>: true" in page
    assert 'http-equiv="refresh"' not in page  # nothing runs
    view = _mine(served, "/-/mirror/internal/demo-core?format=json").json()
    run = view["runs"][0]
    assert (run["state"], run["added"], run["target"]) == ("completed", 7, "internal/demo-core")
    assert run["bytes"] > 0
    assert f'href="../../../-/run/internal/{run["run_id"]}"' in page
    assert [f["key"] for f in view["channel_filters"]] == [
        "channels[0].filters.exclude[0]",
        "channels[0].filters.exclude[1]",
        "channels[0].filters.exclude[2]",
    ]


def test_run_pages_show_counts_reasons_and_errors(served: dict[str, Any]) -> None:
    core = _mine(served, "/-/mirror/internal/demo-core?format=json").json()["runs"][0]
    view = _mine(served, f"/-/run/internal/{core['run_id']}?format=json").json()
    details = view["details"]
    assert details["locations"]["linux-64"]["added"] == 4
    assert details["locations"]["noarch"]["added"] == 3
    assert details["reasons"]["added"] == {"dependency": 2, "new-upstream": 5}
    assert [r["target"] for r in view["related"]] == ["internal"]  # the channel's run
    page = _mine(served, f"/-/run/internal/{core['run_id']}").text
    assert "<h2>Per location</h2>" in page and "<code>dependency</code>" in page
    assert re.search(r"<tr><td>linux-64</td><td class=\"num\">4</td>", page)
    channel_run = view["related"][0]["run_id"]
    assert f'href="../../../-/run/internal/{channel_run}"' in page

    # The run that applied the new exclude rule: the removal, its reason and the rule.
    history = _mine(served, "/api/status").json()["channels"][0]["history"]
    removal = next(r for r in history if r["mirror"] is None and r["removed"])
    details = _mine(served, f"/-/run/internal/{removal['run_id']}?format=json").json()["details"]
    assert details["locations"]["linux-64"] == {"removed": 1, "added": 0, "updated": 0,
                                                "restored": 0, "reindexed": 0}  # fmt: skip
    assert details["reasons"] == {"removed": {"filtered": 1}}
    assert details["examples"]["removed"] == [
        {
            "where": "linux-64/demo-tool-0.3-py311_1.conda",
            "source": "demo-core",
            "reason": "filtered",
            "detail": "excluded by channels[0].filters.exclude[2] (name: demo-tool) "
            "(file deleted after 120 s)",
        }
    ]
    page = _mine(served, f"/-/run/internal/{removal['run_id']}").text
    assert "<h3>Removed</h3>" in page and "<code>filtered</code>" in page
    assert "excluded by channels[0].filters.exclude[2] (name: demo-tool)" in page

    status = _get(served, "/api/status").json()
    scratch = next(c for c in status["channels"] if c["name"] == "scratch")
    failed = next(r for r in scratch["history"] if r["state"] == "failed")
    page = _get(served, f"/-/run/scratch/{failed['run_id']}").text
    assert '<span class="failed">failed</span>' in page
    assert "<h2>Errors</h2>" in page and "broken-1-0.conda" in page


def test_every_link_of_the_views_stays_under_the_token_and_answers(
    served: dict[str, Any],
) -> None:
    core = _mine(served, "/-/mirror/internal/demo-core?format=json").json()["runs"][0]
    base = f"{served['url']}/t/{TOKEN}"
    pages = [
        "/",
        "/-/mirrors",
        "/-/channel/internal",
        "/-/channel/pypi",
        "/-/mirror/internal/demo-core",
        f"/-/run/internal/{core['run_id']}",
    ]
    checked = set()
    for path in pages:
        page_url = base + path
        text = requests.get(page_url, timeout=60).text
        for href in re.findall(r'href="([^"]*)"', text):
            if href.startswith("data:"):
                continue
            target = urljoin(page_url, href.replace("&amp;", "&"))
            assert target.startswith(base + "/"), (path, href, target)
            if target in checked:
                continue
            checked.add(target)
            assert requests.get(target, timeout=60).status_code == 200, (path, href)
    assert len(checked) > 20
