"""The channels the crash tests start from: tiny, real, and changed between runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import string
import time
from pathlib import Path

import orjson

from tests.crash.harness import (
    DISK,
    Apply,
    Expect,
    Place,
    Scenario,
    known_digests,
    reconcile,
    upstream_records,
)
from tests.packages import PackageSpec, build_package

SUBDIRS = ("linux-64", "noarch")


def packages(version: str, extra: int = 0, padding: int = 0) -> list[tuple[PackageSpec, str]]:
    """A tiny channel's worth: both formats, both subdirs, a dependency, run_exports.

    ``padding`` adds that many characters of (seeded, barely compressible) text to each
    record, so index files span several filesystem pages.
    """
    specs = [
        (PackageSpec("alpha", version, subdir="linux-64"), ".conda"),
        (
            PackageSpec(
                "beta",
                version,
                subdir="linux-64",
                depends=["alpha"],
                run_exports={"weak": ["beta"]},
            ),
            ".tar.bz2",
        ),
        (PackageSpec("gamma", version, noarch="generic"), ".conda"),
    ]
    for i in range(extra):
        specs.append((PackageSpec(f"extra{i}", version, noarch="generic"), ".tar.bz2"))
    for spec, _ in specs if padding else []:
        rng = random.Random(spec.stem)
        spec.extra_index["notes"] = "".join(rng.choices(string.ascii_letters, k=padding))
    return specs


def write_config(root: Path, mirror: str = "", patches: str = "") -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "channels.yaml").write_text(
        "version: 1\nchannels:\n  - name: chan\n    path: ./chan\n"
        # Deletions in the same run, right after the index is published: killed runs
        # then also stop between the publish and the deletions.
        "    deletion_grace: 0\n"
        "    subdirs: [linux-64, noarch]\n    index: {bz2: true, shards: true}\n" + patches + mirror
    )


def applied(root: Path) -> None:
    """The starting state: the first apply has run to completion."""
    assert reconcile(["apply", "-c", "channels.yaml", "--quiet"], root) == 0, (
        root / ".run.log"
    ).read_text()[-2000:]
    (root / ".run.log").unlink()


def named_files(channel: Path) -> set[str]:
    names = set()
    for subdir in SUBDIRS:
        data = orjson.loads((channel / subdir / "repodata.json").read_bytes())
        names |= {f"{subdir}/{n}" for s in ("packages", "packages.conda") for n in data[s]}
    return names


def index_scenario(
    tmp_path: Path, name: str, extra: int, padding: int = 0, place: Place = DISK
) -> Scenario:
    seed = tmp_path / f"{name}-seed"
    for spec, fmt in packages("1.0", extra, padding):
        build_package(seed / "chan", spec, fmt)
    write_config(seed)
    place.adopt(seed)
    applied(seed)
    # The change the killed runs carry out: new packages, one deleted by hand
    # (published until the run), a patch.
    for spec, fmt in packages("2.0", extra, padding):
        build_package(seed / "chan", spec, fmt)
    deleted = "linux-64/beta-1.0-0.tar.bz2"
    (seed / "chan" / deleted).unlink()
    (seed / "patch.json").write_text(
        json.dumps(
            {
                "linux-64": {
                    "packages.conda": {"alpha-2.0-0.conda": {"license": "BSD-3-Clause"}},
                    "packages": {"beta-2.0-0.tar.bz2": {"depends": ["alpha >=2"]}},
                }
            }
        )
    )
    write_config(seed, patches="    patches: [patch.json]\n")
    place.adopt(seed)
    expect = Expect(SUBDIRS, known_digests([seed / "chan"]), frozenset({deleted}))
    return Scenario(name, seed, Apply(), expect, random_kills=12, seed_number=extra, place=place)


class Upstream:
    """An upstream channel on 127.0.0.1 that tests switch between two states."""

    def __init__(self, root: Path, url: str) -> None:
        self.root, self.url = root, url
        self.switches = 0

    def switch(self, state: str) -> None:
        live = self.root / "live"
        shutil.rmtree(live, ignore_errors=True)
        shutil.copytree(self.root / state, live, copy_function=shutil.copyfile)
        # A newer Last-Modified, so the mirror's conditional GET sees the change.
        self.switches += 1
        stamp = time.time() + 100 * self.switches
        for path in live.rglob("*"):
            os.utime(path, (stamp, stamp))

    def records(self) -> list[tuple[str, str, str]]:
        return upstream_records(self.root / "1") + upstream_records(self.root / "2")


def build_upstream(root: Path) -> None:
    """State 1, and state 2 with the 2.0 packages that drops beta and extra0 1.0 and
    re-uploads gamma 1.0 (the same filename, other bytes)."""
    from reconciler.kinds.conda.indexer import index_channel

    for spec, fmt in packages("1.0", 1):
        build_package(root / "1", spec, fmt)
    for spec, fmt in packages("2.0") + packages("1.0")[::2]:
        build_package(root / "2", spec, fmt)
    reupload = PackageSpec("gamma", "1.0", noarch="generic", files={"notes.txt": b"re-uploaded"})
    build_package(root / "2", reupload, ".conda")
    index_channel(root / "1")
    index_channel(root / "2")
    (root / "live").mkdir()


def mirror_seed(
    tmp_path: Path, upstream: Upstream, name: str, mode: str, place: Place = DISK
) -> Path:
    seed = tmp_path / f"{name}-seed"
    build_package(seed / "chan", PackageSpec("mine", "1.0", subdir="linux-64"))  # local
    write_config(
        seed,
        mirror=(
            f"    mirrors:\n      - {{name: up, source: '{upstream.url}', mode: {mode},"
            " prune: true, retries: 0, timeout: 10}\n"
        ),
    )
    upstream.switch("1")
    place.adopt(seed)
    applied(seed)
    upstream.switch("2")  # the killed runs download the new files and prune the dropped
    return seed
