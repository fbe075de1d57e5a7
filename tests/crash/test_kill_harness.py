"""SIGKILL at every checkpoint of real `reconcile` runs: local index, active mirror, passive.

Each scenario is a real channel. An uninterrupted, traced run lists every
checkpoint it reaches; then, for every ``step#N`` and for seeded random instants,
a fresh copy of the starting folder is run and killed there, the channel is
checked as a client would see it, and a rerun must converge to exactly the
uninterrupted run's files and inventory with nothing left to plan. See
``tests/crash/harness.py`` and docs/reliability.md.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.crash.harness import (
    TALLIES,
    Apply,
    BucketPlace,
    Expect,
    Scenario,
    ServeFetch,
    Tally,
    known_digests,
    run_scenario,
    summary_line,
)
from tests.crash.scenarios import (
    SUBDIRS,
    Upstream,
    build_upstream,
    index_scenario,
    mirror_seed,
    named_files,
)
from tests.http_server import serve_directory
from tests.s3_server import S3Server

pytestmark = pytest.mark.slow

MINIMUM_POINTS = 200


def record(tally: Tally) -> Tally:
    TALLIES.append(tally)
    assert not tally.violations, "\n".join(tally.violations[:25])
    assert tally.converged == tally.points
    return tally


# -- (a) indexing local packages --------------------------------------------------------


def test_kill_during_local_index(tmp_path: Path) -> None:
    record(run_scenario(index_scenario(tmp_path, "index", 0), tmp_path / "index"))


# -- (b) and (c): mirrors of an upstream served over HTTP -------------------------------


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    root = tmp_path_factory.mktemp("upstream")
    build_upstream(root)
    with serve_directory(root / "live") as (url, _requests):
        yield Upstream(root, url)


def test_kill_during_active_mirror_with_prune(tmp_path: Path, upstream: Upstream) -> None:
    seed = mirror_seed(tmp_path, upstream, "active", "active")
    assert (seed / "chan/linux-64/beta-1.0-0.tar.bz2").is_file()
    expect = Expect(SUBDIRS, known_digests([seed / "chan"], upstream.records()))
    tally = run_scenario(
        Scenario("active", seed, Apply(), expect, random_kills=12), tmp_path / "active"
    )
    record(tally)


def test_kill_during_passive_mirror_and_fetch_on_first_request(
    tmp_path: Path, upstream: Upstream
) -> None:
    seed = mirror_seed(tmp_path, upstream, "passive", "passive")
    passive = frozenset(f"{s}/{f}" for s, f, _ in upstream.records())
    expect = Expect(SUBDIRS, known_digests([seed / "chan"], upstream.records()), passive)
    record(
        run_scenario(
            Scenario("passive", seed, Apply(), expect, random_kills=8), tmp_path / "passive"
        )
    )
    # Then `reconcile serve` fetching passive files on their first request.
    served = tmp_path / "serve-seed"
    shutil.copytree(tmp_path / "passive" / "reference", served)
    wanted = sorted(named_files(served / "chan") & passive)
    assert len(wanted) >= 4 and not any((served / "chan" / w).exists() for w in wanted)
    digests = {f"{s}/{f}": d for s, f, d in upstream.records()}
    action = ServeFetch([f"chan/{w}" for w in wanted], {f"chan/{w}": digests[w] for w in wanted})
    record(
        run_scenario(Scenario("serve", served, action, expect, random_kills=8), tmp_path / "serve")
    )


# -- the same, with the channel in a bucket (moto's S3 server on 127.0.0.1) --------------

# Each run in a bucket is slower (every write is a request): a reduced set of traced
# points (the first of every step, the rest spread over the run) and fewer random ones.
BUCKET_POINTS = 20


@pytest.fixture
def bucket_place(s3: S3Server, bucket: str) -> BucketPlace:
    return BucketPlace(s3.client(), bucket)


def test_kill_during_local_index_in_a_bucket(tmp_path: Path, bucket_place: BucketPlace) -> None:
    scenario = index_scenario(tmp_path, "index-s3", 0, place=bucket_place)
    scenario.random_kills = 2
    tally = record(run_scenario(scenario, tmp_path / "index-s3", limit=BUCKET_POINTS))
    assert {"storage.before_put", "storage.put", "lease.taken"} <= tally.steps


def test_kill_during_active_mirror_with_prune_in_a_bucket(
    tmp_path: Path, upstream: Upstream, bucket_place: BucketPlace
) -> None:
    seed = mirror_seed(tmp_path, upstream, "active-s3", "active", place=bucket_place)
    expect = Expect(SUBDIRS, known_digests([seed / "chan"], upstream.records()))
    scenario = Scenario("active-s3", seed, Apply(), expect, random_kills=2, place=bucket_place)
    tally = record(run_scenario(scenario, tmp_path / "active-s3", limit=BUCKET_POINTS))
    assert {"download.placed", "apply.before_prune", "storage.removed"} <= tally.steps


def test_enough_kill_points() -> None:
    """Runs last in this module: the harness as a whole reached enough kill points."""
    if {t.name for t in TALLIES} < {"index", "active", "passive", "serve"}:
        pytest.skip("not every kill scenario ran in this session")
    assert sum(t.points for t in TALLIES) >= MINIMUM_POINTS, summary_line(TALLIES)
