"""Mirror selection end to end, judged by a solver.

A real upstream (real ``.conda`` / ``.tar.bz2`` archives, served on 127.0.0.1) with
python built per platform, noarch packages needing it, a library whose newest version
conflicts with what a root pins, builds that lag on one platform, and licences in
the shapes upstreams write them. ``reconcile apply`` mirrors it; ``rattler.solve``
then installs the same requests from the mirror and from the upstream (or the upstream
less what exclude rules remove) and must get the same answers.
"""

from __future__ import annotations

import itertools
import json
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from rattler.exceptions import SolverError

from reconciler import cli
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from tests.client import solve
from tests.http_server import serve_directory
from tests.packages import PackageSpec, build_package

PLATFORMS = ("linux-64", "osx-arm64")


def _python(version: str, subdir: str) -> PackageSpec:
    return PackageSpec(
        "python",
        version,
        build="h0_cpython",
        subdir=subdir,
        license="Python-2.0",
        license_family="PSF",
    )


SOLVER_UPSTREAM: list[tuple[PackageSpec, str]] = [
    *((_python(v, p), ".conda") for v in ("3.10.0", "3.12.0") for p in PLATFORMS),
    # noarch: python packages, which need the per-platform python.
    (
        PackageSpec("tqdm", "4.66", build="pyh_0", noarch="python", depends=["python >=3.8"]),
        ".conda",
    ),
    (
        PackageSpec("lib", "3.0", build="pyh_0", noarch="python", depends=["python >=3.12"]),
        ".conda",
    ),
    (
        PackageSpec("lib", "2.0", build="pyh_0", noarch="python", depends=["python >=3.8"]),
        ".tar.bz2",
    ),
    # app pins python 3.10: the newest lib (3.0, python >=3.12) cannot go with it.
    *(
        (PackageSpec("app", "1.0", subdir=p, depends=["python 3.10.*", "lib >=2"]), ".conda")
        for p in PLATFORMS
    ),
    # fast: 2.0 is built for linux-64 only so far; osx-arm64 still has 1.0.
    (PackageSpec("fast", "2.0", subdir="linux-64"), ".conda"),
    *((PackageSpec("fast", "1.0", subdir=p), ".tar.bz2") for p in PLATFORMS),
    (PackageSpec("fast", "0.9", subdir="osx-arm64"), ".conda"),
]


@pytest.fixture
def solver_upstream(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "upstream"
    for spec, fmt in SOLVER_UPSTREAM:
        build_package(root, spec, fmt)
    index_channel(root, subdirs=[*PLATFORMS, "noarch"])
    with serve_directory(root) as (url, _):
        yield root, url


class Project:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root = root
        self.capsys = capsys
        self.config = root / "channels.yaml"
        self.channel = root / "mirror"
        self._caches = itertools.count()

    def write(self, text: str) -> None:
        self.config.write_text(textwrap.dedent(text))

    def run(self, *args: str) -> tuple[int, str, str]:
        code = cli.main([*args, "-c", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def names(self, subdir: str) -> list[str]:
        data = json.loads((self.channel / subdir / "repodata.json").read_text())
        return sorted({**data["packages"], **data["packages.conda"]})

    def solve(self, channel: str, specs: list[str], platform: str) -> dict[str, str] | None:
        try:
            return solve(channel, specs, platform, self.root / f"cache-{next(self._caches)}")
        except SolverError:
            return None


@pytest.fixture
def project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Project:
    return Project(tmp_path, capsys)


def config(source: str, filters: str, channel_filters: str = "") -> str:
    return f"""\
        version: 1
        channels:
          - name: mirror
            path: ./mirror
            subdirs: [linux-64, osx-arm64, noarch]
            {channel_filters}
            mirrors:
              - name: up
                source: {source}
                mode: active
                filters: {filters}
        """


def test_noarch_conflicts_and_lagging_platforms_solve_like_the_upstream(
    project: Project, solver_upstream: tuple[Path, str]
) -> None:
    _, url = solver_upstream
    project.write(
        config(
            url,
            "{include: [{name: tqdm}, {name: app}, {name: fast}], latest: 1, dependencies: true}",
        )
    )
    code, out, err = project.run("apply")
    assert code == ExitCode.OK, out + err
    assert "warning" not in out
    mirror = project.channel.as_uri()
    for platform in PLATFORMS:
        for specs in (
            ["tqdm"],
            ["app"],
            ["fast"],
            ["app", "tqdm", "fast"],
            ["tqdm", "python 3.10.*"],
        ):
            expected = project.solve(url, specs, platform)
            assert expected is not None, (specs, platform)
            assert project.solve(mirror, specs, platform) == expected, (specs, platform)
    # (1) noarch tqdm found python in both platform subdirs.
    for platform in PLATFORMS:
        assert {"python-3.10.0-h0_cpython.conda", "python-3.12.0-h0_cpython.conda"} <= set(
            project.names(platform)
        )
    # (2) app on python 3.10 needs lib 2.0, though lib 3.0 is newer.
    solved = project.solve(mirror, ["app"], "osx-arm64")
    assert solved is not None and solved["lib"] == "lib-2.0-pyh_0.tar.bz2"
    assert {"lib-2.0-pyh_0.tar.bz2", "lib-3.0-pyh_0.conda"} <= set(project.names("noarch"))
    # (3) latest: 1 counts each subdir: osx-arm64 keeps its newest, 1.0.
    assert "fast-2.0-0.conda" in project.names("linux-64")
    assert "fast-1.0-0.tar.bz2" in project.names("osx-arm64")
    assert "fast-0.9-0.conda" not in project.names("osx-arm64")
    assert project.solve(mirror, ["fast"], "osx-arm64") == {"fast": "fast-1.0-0.tar.bz2"}

    # explain names the record that pulled each dependency in, with its subdir.
    code, out, _ = project.run("explain", "python")
    assert code == ExitCode.OK
    assert (
        "mirror/osx-arm64/python-3.12.0-h0_cpython.conda (mirror up): in — dependency of "
        "noarch/tqdm-4.66-pyh_0.conda (python >=3.8)"
    ) in out
    assert (
        "mirror/linux-64/python-3.10.0-h0_cpython.conda (mirror up): in — dependency of "
        "linux-64/app-1.0-0.conda (python 3.10.*)"
    ) in out
    code, out, _ = project.run("explain", "fast")
    assert (
        "mirror/osx-arm64/fast-0.9-0.conda (mirror up): out — older than the newest 1 in "
        "osx-arm64 by channels[0].mirrors[0].filters.latest"
    ) in out
    assert project.run("plan", "--detailed-exitcode")[0] == ExitCode.OK


def test_without_dependencies_the_mirror_cannot_install_what_it_lists(
    project: Project, solver_upstream: tuple[Path, str]
) -> None:
    # The control: the same roots without the closure cannot be installed.
    _, url = solver_upstream
    project.write(config(url, "{include: [{name: tqdm}, {name: app}]}"))
    assert project.run("apply")[0] == ExitCode.OK
    for platform in PLATFORMS:
        assert project.solve(url, ["tqdm"], platform) is not None
        assert project.solve(project.channel.as_uri(), ["tqdm"], platform) is None


# -- licences -----------------------------------------------------------------------------

LICENCE_UPSTREAM: list[tuple[PackageSpec, str]] = [
    *((_python("3.12.0", p), ".conda") for p in PLATFORMS),
    # Dual-licensed: the user may pick MIT, whatever license_family says.
    (
        PackageSpec(
            "dual",
            "1.0",
            subdir="linux-64",
            license="GPL-2.0-or-later OR MIT",
            license_family="GPL2",
        ),
        ".conda",
    ),
    # Free forms, as older upstreams write them.
    (
        PackageSpec("oldgpl", "1.0", subdir="linux-64", license="GPL v3", license_family=None),
        ".conda",
    ),
    (
        PackageSpec(
            "oldbsd", "1.0", subdir="linux-64", license="BSD 3-clause", license_family="BSD"
        ),
        ".tar.bz2",
    ),
    *(
        (
            PackageSpec(
                f"gpl{i}", "1.0", subdir="linux-64", license="GPL-3.0-only", license_family="GPL3"
            ),
            ".conda",
        )
        for i in range(7)
    ),
    # A noarch package that needs a GPL library, directly and through another package.
    (PackageSpec("gpllib", "1.0", subdir="linux-64", license="GPL-2.0-only"), ".conda"),
    (PackageSpec("wrapper", "1.0", subdir="linux-64", depends=["gpllib"]), ".conda"),
    (
        PackageSpec(
            "needsgpl", "1.0", build="pyh_0", noarch="python", depends=["python", "wrapper"]
        ),
        ".conda",
    ),
    (
        PackageSpec("tool", "1.0", build="pyh_0", noarch="python", depends=["python >=3.8"]),
        ".conda",
    ),
]

GPL_OUT = """filters:
              exclude: [{license: GPL}]"""


@pytest.fixture
def licence_upstream(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "upstream"
    for spec, fmt in LICENCE_UPSTREAM:
        build_package(root, spec, fmt)
    index_channel(root, subdirs=[*PLATFORMS, "noarch"])
    with serve_directory(root) as (url, _):
        yield root, url


def test_a_misspelt_licence_is_refused_before_anything_runs(
    project: Project, licence_upstream: tuple[Path, str]
) -> None:
    _, url = licence_upstream
    project.write(config(url, "{}", channel_filters=GPL_OUT.replace("GPL", "GLP")))
    code, _, err = project.run("apply")
    assert code == ExitCode.ERROR
    assert (
        f"{project.config}:7: channels[0].filters.exclude[0].license: license 'GLP' is neither "
        "a licence family nor a valid SPDX expression: unknown licence 'GLP' (did you mean 'GPL'?)"
    ) in err
    assert not project.channel.exists()
    # With the rule spelt right, none of the seven GPL packages gets in.
    project.write(config(url, "{}", channel_filters=GPL_OUT))
    assert project.run("apply")[0] == ExitCode.OK
    assert not [n for n in project.names("linux-64") if n.startswith("gpl")]


def test_licence_expressions_decide_and_explain_shows_the_reading(
    project: Project, licence_upstream: tuple[Path, str]
) -> None:
    root, url = licence_upstream
    project.write(
        config(
            url,
            "{include: [{name: dual}, {name: oldgpl}, {name: oldbsd}, {name: needsgpl}, "
            "{name: tool}], dependencies: true}",
            channel_filters=GPL_OUT,
        )
    )
    code, out, _ = project.run("plan")
    assert code == ExitCode.OK
    assert (
        "warning: mirror up: noarch/needsgpl-1.0-pyh_0.conda needs 'wrapper' on linux-64, "
        "but no candidate of it can be installed (linux-64/wrapper-1.0-0.conda needs 'gpllib', "
        "but gpllib-1.0-0.conda is excluded by channels[0].filters.exclude[0] (license: GPL))"
    ) in out
    code, out, err = project.run("apply")
    assert code == ExitCode.OK, out + err
    linux = project.names("linux-64")
    assert "dual-1.0-0.conda" in linux  # GPL-2.0-or-later OR MIT: MIT may be chosen
    assert "oldbsd-1.0-0.tar.bz2" in linux
    assert "oldgpl-1.0-0.conda" not in linux and "gpllib-1.0-0.conda" not in linux
    assert "wrapper-1.0-0.conda" not in linux  # it can never be installed here

    code, out, _ = project.run("explain", "oldgpl")
    assert out.strip() == (
        "mirror/linux-64/oldgpl-1.0-0.conda (mirror up): out — excluded by "
        "channels[0].filters.exclude[0] (license: GPL); licence 'GPL v3' read as GPL-3.0-only"
    )
    code, out, _ = project.run("explain", "oldbsd")
    assert out.strip() == (
        "mirror/linux-64/oldbsd-1.0-0.tar.bz2 (mirror up): in — selected; "
        "licence 'BSD 3-clause' read as BSD-3-Clause"
    )
    code, out, _ = project.run("explain", "dual")
    assert out.strip() == "mirror/linux-64/dual-1.0-0.conda (mirror up): in — selected"

    # Against the upstream less what the exclude rule removes, the same answers.
    restricted = project.root / "restricted"
    shutil.copytree(root, restricted)
    for name in (
        "oldgpl-1.0-0.conda",
        "gpllib-1.0-0.conda",
        *(f"gpl{i}-1.0-0.conda" for i in range(7)),
    ):
        (restricted / "linux-64" / name).unlink()
    index_channel(restricted, subdirs=[*PLATFORMS, "noarch"])
    for platform in PLATFORMS:
        for spec in ("dual", "oldbsd", "tool", "needsgpl"):
            if spec in ("dual", "oldbsd") and platform != "linux-64":
                continue
            expected = project.solve(restricted.as_uri(), [spec], platform)
            assert project.solve(project.channel.as_uri(), [spec], platform) == expected
    assert project.solve(restricted.as_uri(), ["needsgpl"], "linux-64") is None
    assert project.solve(restricted.as_uri(), ["needsgpl"], "osx-arm64") is None


def test_explain_json_agrees_with_what_was_published(
    project: Project, solver_upstream: tuple[Path, str]
) -> None:
    _, url = solver_upstream
    project.write(config(url, "{include: [{name: tqdm}, {name: app}], dependencies: true}"))
    assert project.run("apply")[0] == ExitCode.OK
    _, out, _ = project.run("explain", "*", "--json")
    explained = {(e["location"], e["name"]) for e in json.loads(out) if e["selected"]}
    published = {(s, n) for s in (*PLATFORMS, "noarch") for n in project.names(s)}
    assert explained == published
