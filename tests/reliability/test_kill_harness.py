"""SIGKILL at every checkpoint of index, active-mirror and passive-mirror runs.

After each kill the channel must be usable (every published repodata parses and
names only files that exist with the recorded sha256, noarch stays, the history
and state read), and a rerun must converge to exactly what an uninterrupted run
produces. Random-time kills are added on top of the deterministic points.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from reconciler import cli
from reconciler.config.models import Channel, load_config
from reconciler.kinds.conda.indexer import index_channel
from reconciler.serve.passive import PassiveFetcher
from tests.http_server import serve_directory
from tests.packages import PackageSpec, build_package
from tests.reliability.harness import (
    Tally,
    apply_action,
    channel_files,
    fork_run,
    inventory,
    kill_and_converge,
    random_delays,
    trace_points,
)

pytestmark = pytest.mark.slow

SUBDIRS = ["linux-64", "noarch"]
RANDOM_KILLS = 15
TOTALS: dict[str, Tally] = {}
_SWITCHES: list[str] = []


def _specs(version: str) -> list[tuple[PackageSpec, str]]:
    return [
        (PackageSpec("alpha", version, subdir="linux-64"), ".conda"),
        (PackageSpec("beta", version, subdir="linux-64", depends=["alpha"]), ".tar.bz2"),
        (PackageSpec("gamma", version, noarch="generic"), ".conda"),
    ]


def _config(root: Path, mirror: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "channels.yaml"
    config.write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
        "    subdirs: [linux-64, noarch]\n    index: {bz2: true, shards: true}\n" + mirror
    )
    return config


def _run_scenario(
    name: str,
    tmp_path: Path,
    prepare: Callable[[Path], Path],
    action_for: Callable[[Path], Callable[[], int]],
    passive: set[str],
) -> Tally:
    """Reference run, then every traced checkpoint and some random instants."""
    reference = tmp_path / f"{name}-reference"
    config = prepare(reference)
    points = trace_points(action_for(config), tmp_path / f"{name}.trace")
    # The traced run itself was the reference: record what it produced.
    expected_files = channel_files(reference / "chan")
    expected_inventory = inventory(reference / "chan")
    assert expected_files, "the reference run produced nothing"
    tally = Tally()
    work = tmp_path / f"{name}-work"
    for point in points + random_delays(len(points), RANDOM_KILLS, 0.6):
        kill_and_converge(
            tally,
            prepare,
            work,
            point,
            expected_files,
            expected_inventory,
            SUBDIRS,
            passive,
            action_for,
        )
    TOTALS[name] = tally
    return tally


def _assert_clean(tally: Tally, minimum: int) -> None:
    assert not tally.violations, "\n".join(tally.violations[:20])
    assert tally.points >= minimum
    assert tally.converged == tally.points


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An upstream channel over HTTP; tests switch it between two states."""
    root = tmp_path_factory.mktemp("upstream")
    states = {}
    for version in ("1.0", "2.0"):
        folder = root / version
        for spec, fmt in _specs(version):
            build_package(folder, spec, fmt)
        if version == "2.0":  # 2.0 drops beta 1.0 but keeps alpha/gamma 1.0 as well
            for spec, fmt in _specs("1.0")[::2]:
                build_package(folder, spec, fmt)
        index_channel(folder)
        states[version] = folder
    live = root / "live"
    shutil.copytree(states["1.0"], live)
    with serve_directory(live) as (url, _requests):
        yield url, root


def _switch(root: Path, version: str) -> None:
    live = root / "live"
    shutil.rmtree(live)
    shutil.copytree(root / version, live, copy_function=shutil.copyfile)
    # A new Last-Modified, so the mirror's conditional GET sees the change.
    _SWITCHES.append(version)
    stamp = time.time() + 100 * len(_SWITCHES)
    for path in live.rglob("*"):
        os.utime(path, (stamp, stamp))


def test_kill_during_local_index(tmp_path: Path) -> None:
    seed = tmp_path / "seed"
    for spec, fmt in _specs("1.0"):
        build_package(seed / "chan", spec, fmt)
    _config(seed)
    assert fork_run(apply_action(seed / "channels.yaml"), {}) == 0
    # The change the killed runs make: new packages, one removed, a patch.
    for spec, fmt in _specs("2.0"):
        build_package(seed / "chan", spec, fmt)
    patch = seed / "patch.json"
    patch.write_text(
        json.dumps(
            {"linux-64": {"packages.conda": {"alpha-2.0-0.conda": {"license": "BSD-3-Clause"}}}}
        )
    )
    text = (seed / "channels.yaml").read_text() + "    patches: [patch.json]\n"
    text += "    filters: {exclude: [{name: beta, version: '1.0'}]}\n"  # unpublishes one
    (seed / "channels.yaml").write_text(text)

    def prepare(root: Path) -> Path:
        shutil.copytree(seed, root)
        return root / "channels.yaml"

    _assert_clean(_run_scenario("index", tmp_path, prepare, apply_action, set()), 60)


def test_kill_during_active_mirror_with_prune(tmp_path: Path, upstream: tuple[str, Path]) -> None:
    url, root = upstream
    mirror = f"    mirrors:\n      - {{name: up, source: '{url}', retries: 0, timeout: 10}}\n"
    seed = tmp_path / "seed"
    _switch(root, "1.0")
    _config(seed, mirror)
    assert fork_run(apply_action(seed / "channels.yaml"), {}) == 0
    _switch(root, "2.0")  # the killed runs download the new files and prune beta 1.0

    def prepare(work: Path) -> Path:
        shutil.copytree(seed, work)
        return work / "channels.yaml"

    _assert_clean(_run_scenario("active", tmp_path, prepare, apply_action, set()), 60)


def test_kill_during_passive_mirror_and_on_demand_fetch(
    tmp_path: Path, upstream: tuple[str, Path]
) -> None:
    url, root = upstream
    mirror = (
        f"    mirrors:\n      - {{name: up, source: '{url}', mode: passive, retries: 0,"
        " timeout: 10}\n"
    )
    seed = tmp_path / "seed"
    _switch(root, "1.0")
    _config(seed, mirror)
    assert fork_run(apply_action(seed / "channels.yaml"), {}) == 0
    _switch(root, "2.0")
    passive = {spec.stem + fmt for v in ("1.0", "2.0") for spec, fmt in _specs(v)}

    def prepare(work: Path) -> Path:
        shutil.copytree(seed, work)
        return work / "channels.yaml"

    def apply_then_fetch(config: Path) -> Callable[[], int]:
        """Apply, then serve the new files on first request, as `reconcile serve` does."""

        def run() -> int:
            code = cli.main(["apply", "-c", str(config), "--quiet"])
            loaded = load_config(config)
            channel = loaded.config.channels[0]
            assert isinstance(channel, Channel)
            fetcher = PassiveFetcher(loaded)
            for spec, fmt in _specs("2.0"):
                fetcher.fetch(channel, spec.subdir, spec.stem + fmt)
            return code

        return run

    _assert_clean(_run_scenario("passive", tmp_path, prepare, apply_then_fetch, passive), 40)


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """The harness's summary line (runs last in this module)."""
    if len(TOTALS) < 3:
        pytest.skip("the kill scenarios did not all run in this session")
    points = sum(t.points for t in TOTALS.values())
    violations = sum(len(t.violations) for t in TOTALS.values())
    converged = sum(t.converged for t in TOTALS.values())
    detail = ", ".join(f"{name} {t.points}" for name, t in TOTALS.items())
    line = (
        f"kill harness: {points} kill points ({detail}), {violations} invariant violations, "
        f"{converged} converged"
    )
    with capsys.disabled():
        print("\n" + line)
    assert points >= 200 and violations == 0 and converged == points
