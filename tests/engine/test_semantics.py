"""What plan says is what apply does: the semantics every kind shares, end to end.

A local channel beside an active and a passive mirror of one upstream served on
127.0.0.1, driven through the command line at fixed times (``RECONCILE_NOW``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.engine.history import History
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from reconciler.store.local import LocalStore
from tests.client import solve
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.window_spy import spy_window_scans

T0 = "2026-03-01T12:00:00+00:00"
T1 = "2026-03-01T13:00:00+00:00"  # an hour later: the daily mirrors are not due
T1_GRACE_OVER = "2026-03-01T13:02:00+00:00"  # the default grace period later
T2 = "2026-03-02T12:00:00+00:00"  # the next day: they are

UPSTREAM = [
    PackageSpec("alpha", "1.0", subdir="linux-64"),
    PackageSpec("alpha", "1.1", subdir="linux-64"),
    PackageSpec("alpha", "1.2", subdir="linux-64"),
    PackageSpec("beta", "1.0", subdir="linux-64"),
    PackageSpec("beta", "2.0", subdir="linux-64"),
    PackageSpec("gamma", "1.0", noarch="generic"),
]


def config_text(source: str, *, latest: int = 2, extra_mirror: str = "", bad: str = "") -> str:
    return textwrap.dedent(
        f"""\
        version: 1
        channels:
          - name: chan
            path: ./chan
            subdirs: [linux-64, noarch]
            mirrors:
              - name: act
                source: {source}
                schedule: "0 3 * * *"
                retries: 0
                timeout: 5
                filters:
                  include: [{{name: "alpha"}}, {{name: "gamma"}}]
                  latest: {latest}
              - name: pas
                source: {source}
                mode: passive
                schedule: "0 3 * * *"
                retries: 0
                timeout: 5
                filters:
                  include: [{{name: "beta"}}]
        {extra_mirror}{bad}"""
    )


class World:
    """An upstream served over HTTP, a config, and the CLI at a chosen time."""

    def __init__(
        self,
        root: Path,
        capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch,
        url: str,
        state: dict[str, Any],
    ) -> None:
        self.root = root
        self.capsys = capsys
        self.monkeypatch = monkeypatch
        self.url = url
        self.state = state
        self.config = root / "channels.yaml"
        self.channel = root / "chan"
        self.upstream = root / "upstream"

    def write(self, **options: Any) -> None:
        self.config.write_text(config_text(self.url, **options))

    def run(self, *args: str, at: str = T0) -> tuple[int, str, str]:
        self.monkeypatch.setenv("RECONCILE_NOW", at)
        self.capsys.readouterr()
        code = cli.main([*args, "-c", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def published(self, subdir: str = "linux-64") -> set[str]:
        data = json.loads((self.channel / subdir / "repodata.json").read_text())
        return {*data["packages"], *data["packages.conda"]}

    def inventory(self) -> dict[str, Any]:
        state = json.loads((self.channel / ".reconciler" / "state.json").read_text())
        files: dict[str, Any] = state["files"]
        return files

    def history(self) -> History:
        return History(LocalStore(self.channel))

    def plan_actions(self, *args: str, at: str = T0) -> list[dict[str, Any]]:
        code, out, err = self.run("plan", "--json", *args, at=at)
        assert code in (ExitCode.OK, ExitCode.ERROR), err
        return [a for c in json.loads(out)["channels"] for a in c["actions"]]

    def add_upstream(self, spec: PackageSpec) -> None:
        build_package(self.upstream, spec)
        index_channel(self.upstream)


@pytest.fixture
def world(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Iterator[World]:
    upstream = tmp_path / "upstream"
    for spec in UPSTREAM:
        build_package(upstream, spec)
    index_channel(upstream)
    build_package(tmp_path / "chan", PackageSpec("mine", "1.0", subdir="linux-64"))
    with faulty_server(upstream) as (url, state):
        world = World(tmp_path, capsys, monkeypatch, url, state)
        world.write()
        code, _, err = world.run("apply")
        assert code == ExitCode.OK, err
        assert world.published() == {
            "alpha-1.1-0.conda",
            "alpha-1.2-0.conda",
            "beta-1.0-0.conda",
            "beta-2.0-0.conda",
            "mine-1.0-0.conda",
        }
        yield world


def test_mirror_option_touches_only_that_mirror(world: World) -> None:
    """--mirror A never touches other mirrors' records or local packages."""
    world.add_upstream(PackageSpec("alpha", "1.3", subdir="linux-64"))
    world.add_upstream(PackageSpec("beta", "3.0", subdir="linux-64"))
    build_package(world.channel, PackageSpec("mine", "2.0", subdir="linux-64"))
    actions = world.plan_actions("--run-now", "--mirror", "act", at=T1)
    touched = {(a["kind"], a["name"], a["source"]) for a in actions if a["name"]}
    assert touched == {
        ("add", "alpha-1.3-0.conda", "act"),
        ("remove", "alpha-1.1-0.conda", "act"),
    }
    code, _, err = world.run("apply", "--run-now", "--mirror", "act", at=T1)
    assert code == ExitCode.OK, err
    published = world.published()
    # The passive sibling's records (not fetched yet) and the local package stay published.
    assert {"beta-1.0-0.conda", "beta-2.0-0.conda", "mine-1.0-0.conda"} <= published
    assert "beta-3.0-0.conda" not in published and "mine-2.0-0.conda" not in published
    assert {"alpha-1.2-0.conda", "alpha-1.3-0.conda"} <= published
    # And nothing bogus is left for the next run: only the others' real news.
    later = world.plan_actions(at=T1)
    assert {(a["kind"], a["name"]) for a in later if a["name"]} == {("add", "mine-2.0-0.conda")}


def test_a_config_change_applies_without_the_schedule_and_without_network(world: World) -> None:
    """Narrowing a not-due mirror re-selects from the metadata of its last run."""
    world.write(latest=1)
    seen = len(world.state["requests"])
    actions = world.plan_actions(at=T1)
    assert [(a["kind"], a["name"], a["reason"]) for a in actions if a["name"]] == [
        ("remove", "alpha-1.1-0.conda", "filtered")
    ]
    code, out, err = world.run("apply", at=T1)
    assert code == ExitCode.OK, err
    assert "alpha-1.1-0.conda" not in world.published()
    # Unpublished, not deleted: a client may hold the previous index for its max-age.
    pruned = world.channel / "linux-64" / "alpha-1.1-0.conda"
    assert pruned.is_file()
    state = json.loads((world.channel / ".reconciler" / "state.json").read_text())
    (pending,) = state["pending_deletions"]
    assert pending["key"] == "linux-64/alpha-1.1-0.conda" and pending["source"] == "act"
    assert pending["after"] == "2026-03-01T13:02:00.000Z"  # the default grace: 120 s
    assert world.run("plan", "--detailed-exitcode", at=T1)[0] == ExitCode.OK
    code, out, _ = world.run("status", at=T1)
    assert (
        "deletions  1 unpublished file(s) waiting for their grace period (the first due "
        "at 2026-03-01T13:02:00.000Z)"
    ) in out
    # Once the grace period is over, plan shows the deletion and apply carries it out.
    actions = world.plan_actions(at=T1_GRACE_OVER)
    assert [(a["kind"], a["name"], a["reason"]) for a in actions if a["name"]] == [
        ("remove", "alpha-1.1-0.conda", "grace-over")
    ]
    code, out, err = world.run("apply", at=T1_GRACE_OVER)
    assert code == ExitCode.OK, err
    assert not pruned.exists()
    assert world.run("plan", "--detailed-exitcode", at=T1_GRACE_OVER)[0] == ExitCode.OK
    assert len(world.state["requests"]) == seen  # no network at all
    # Widening downloads the newly selected files, still without fetching metadata.
    world.write(latest=3)
    code, _, err = world.run("apply", at=T1_GRACE_OVER)
    assert code == ExitCode.OK, err
    assert {"alpha-1.0-0.conda", "alpha-1.1-0.conda"} <= world.published()
    assert (world.channel / "linux-64" / "alpha-1.0-0.conda").is_file()
    fetched = world.state["requests"][seen:]
    assert fetched and not [r for r in fetched if "repodata" in r], fetched
    code, out, _ = world.run("explain", "alpha", at=T1_GRACE_OVER)
    assert "chan/linux-64/alpha-1.0-0.conda (mirror act): in" in out


def test_a_file_that_disappeared_is_restored(world: World) -> None:
    target = world.channel / "linux-64" / "alpha-1.2-0.conda"
    data = target.read_bytes()
    target.unlink()
    actions = world.plan_actions(at=T1)
    assert [(a["kind"], a["name"], a["reason"]) for a in actions if a["name"]] == [
        ("restore", "alpha-1.2-0.conda", "restored")
    ]
    code, out, err = world.run("apply", at=T1)
    assert code == ExitCode.OK, err
    assert "1 restored" in out
    assert target.read_bytes() == data
    assert "alpha-1.2-0.conda" in world.published()
    run = world.history().last_run(None)
    assert run is not None and run.restored == 1 and run.removed == 0


def test_a_failing_upstream_fails_that_mirror_only(world: World) -> None:
    text = world.config.read_text().replace(
        "      - name: pas\n",
        "      - name: gone\n"
        "        source: http://127.0.0.1:9/nothing\n"
        "        retries: 0\n"
        "        timeout: 2\n"
        "      - name: pas\n",
    )
    world.config.write_text(text + "  - name: other\n    path: ./other\n")
    build_package(world.root / "other", PackageSpec("solo", "1.0", noarch="generic"))
    world.add_upstream(PackageSpec("alpha", "1.3", subdir="linux-64"))
    code, out, err = world.run("apply", "--run-now", at=T1)
    assert code == ExitCode.ERROR
    assert "error: chan: mirror gone: " in err and "127.0.0.1:9" in err, err
    assert "alpha-1.3-0.conda" in world.published()  # the other mirrors went on
    other = json.loads((world.root / "other" / "noarch" / "repodata.json").read_text())
    assert "solo-1.0-0.conda" in other["packages.conda"]  # and the other channel
    failed = world.history().last_run("gone")
    assert failed is not None and failed.state == "failed"
    assert failed.error is not None and "127.0.0.1:9" in failed.error
    assert world.history().last_run("act").state == "completed"  # type: ignore[union-attr]
    code, out, _ = world.run("status", at=T1)
    assert "mirror     gone" in out and "last run failed" in out


def test_a_lost_state_is_rebuilt_and_written(world: World) -> None:
    before = world.inventory()
    assert before["linux-64/beta-1.0-0.conda"]["passive"] is True
    (world.channel / ".reconciler" / "state.json").write_text("{garbage")
    code, out, err = world.run("plan", at=T1)
    assert code == ExitCode.OK
    assert "is unreadable" in out and "state-rebuilt" in out
    code, _, err = world.run("apply", at=T1)
    assert code == ExitCode.OK, err
    assert world.inventory() == before  # nothing relabelled local, passive still passive
    code, out, _ = world.run("plan", "--detailed-exitcode", at=T1)
    assert code == ExitCode.OK, out
    # Removals upstream are still pruned (once the grace period is over).
    (world.upstream / "linux-64" / "alpha-1.2-0.conda").unlink()
    index_channel(world.upstream)
    code, _, err = world.run("apply", "--run-now", at=T1)
    assert code == ExitCode.OK, err
    assert "alpha-1.2-0.conda" not in world.published()
    code, _, err = world.run("apply", at=T1_GRACE_OVER)
    assert code == ExitCode.OK, err
    assert not (world.channel / "linux-64" / "alpha-1.2-0.conda").exists()


APPLY = textwrap.dedent(
    """
    import sys
    from reconciler import cli
    sys.exit(cli.main(["apply", "-c", sys.argv[1], "--wait", "--lock-timeout", "60"]))
    """
)


@pytest.mark.slow
def test_applies_that_waited_do_the_work_once(world: World) -> None:
    from tests.store.test_local import hold_in_child

    build_package(world.channel, PackageSpec("mine", "2.0", subdir="linux-64"))
    holder = hold_in_child(world.channel, 2)
    env = {"RECONCILE_NOW": T1}
    import os

    runs = [
        subprocess.Popen(
            [sys.executable, "-c", APPLY, str(world.config)],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    holder.wait()
    assert [run.returncode for run in runs] == [0, 0], outputs
    added = [r for r in world.history().runs() if r.mirror is None and r.added]
    assert len(added) == 2  # the first apply (fixture) and exactly one of the two
    assert added[-1].added == 1
    assert "mine-2.0-0.conda" in world.published()


def test_a_history_line_of_the_wrong_shape_is_skipped(world: World) -> None:
    history = world.channel / ".reconciler" / "history.jsonl"
    with history.open("a") as handle:
        handle.write('{"run_id": 1, "channel": ["x"], "state": "done", "started": 5}\n')
    for command in (("status",), ("history",), ("plan",), ("apply",)):
        code, _, err = world.run(*command, at=T1)
        assert code == ExitCode.OK, (command, err)
        assert "Traceback" not in err and "internal error" not in err
    from reconciler.engine import history

    history._WARNED.clear()  # as in a new process: one warning per command, not per read
    code, _, err = world.run("status", at=T1)
    assert err.count("not runs") == 1 and "line 10" in err


EVIL = "alpha-9.9-0/../../evil.conda"


def test_warnings_are_shown_when_they_appear(world: World) -> None:
    repodata = world.upstream / "linux-64" / "repodata.json"
    data = json.loads(repodata.read_text())
    # Unsafe, under a name a mirror includes: read, so refused with a warning.
    data["packages.conda"][EVIL] = {"name": "alpha", "version": "9.9"}
    repodata.write_text(json.dumps(data))
    (world.upstream / "linux-64" / "repodata.json.zst").unlink()
    code, out, _ = world.run("plan", "--run-now", at=T1)
    assert "warning: " in out and f"refusing {EVIL!r}" in out
    code, out, _ = world.run("apply", "--run-now", at=T1)
    assert code == ExitCode.OK
    code, out, _ = world.run("plan", "--run-now", at=T1)
    assert "refusing" not in out
    assert "warning(s) still outstanding" in out
    code, out, _ = world.run("status", at=T1)
    assert f"refusing {EVIL!r}" in out
    # Once the upstream drops it, the warning is no longer outstanding.
    del data["packages.conda"][EVIL]
    repodata.write_text(json.dumps(data))
    world.run("apply", "--run-now", at=T1)
    code, out, _ = world.run("status", at=T1)
    assert "refusing" not in out


def test_what_apply_published_solves(world: World, tmp_path: Path) -> None:
    world.write(latest=1)
    world.run("apply", at=T1)
    solved = solve(world.channel.as_uri(), ["alpha"], "linux-64", tmp_path / "rattler")
    assert solved == {"alpha": "alpha-1.2-0.conda"}


def test_mirrors_naming_their_packages_read_upstream_repodata_through_the_window(
    world: World,
) -> None:
    scans = spy_window_scans(world.monkeypatch)
    world.add_upstream(PackageSpec("alpha", "1.3", subdir="linux-64"))
    actions = world.plan_actions("--run-now", at=T1)
    assert ("add", "alpha-1.3-0.conda") in {(a["kind"], a["name"]) for a in actions}
    assert scans and all(found is not None for found in scans), scans  # both name theirs
    scans.clear()
    world.config.write_text(
        world.config.read_text().replace('include: [{name: "beta"}]', "dependencies: true")
    )
    world.add_upstream(PackageSpec("beta", "3.0", subdir="linux-64"))
    world.plan_actions("--run-now", "--mirror", "pas", at=T1)
    assert scans == []  # the closure may need any record: read whole


def test_an_error_while_selecting_fails_that_mirror_only(world: World) -> None:
    from reconciler.errors import ReconcileError
    from reconciler.kinds.conda import mirrors

    real = mirrors._choose

    def failing(*args: Any) -> Any:
        if args[-1].name == "pas":
            raise ReconcileError("pas: cannot select")
        return real(*args)

    world.monkeypatch.setattr(mirrors, "_choose", failing)
    world.add_upstream(PackageSpec("alpha", "1.3", subdir="linux-64"))
    world.add_upstream(PackageSpec("beta", "3.0", subdir="linux-64"))
    code, _, err = world.run("apply", "--run-now", at=T1)
    assert code == ExitCode.ERROR
    assert "mirror pas: pas: cannot select" in err, err
    assert "alpha-1.3-0.conda" in world.published()  # the other mirror went on
    assert "beta-3.0-0.conda" not in world.published()
