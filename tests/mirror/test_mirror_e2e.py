"""Mirroring end to end: a real upstream channel served on 127.0.0.1, plan/apply, a real client.

The tests taking ``both`` run twice: with the channel in a folder, and in a bucket
of a real S3 server (moto's, on 127.0.0.1), where the client solves through
``reconcile serve``. Either way every published index must name only files that
are there with their sha256, and a second apply must write nothing.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.errors import ExitCode
from reconciler.kinds.conda.indexer import index_channel
from tests.client import solve
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.s3_server import S3Server
from tests.serve.helpers import running
from tests.stores import Channel, conda_problems

UPSTREAM: list[tuple[PackageSpec, str]] = [
    (PackageSpec("python", "3.12.0", subdir="linux-64", license="PSF-2.0"), ".conda"),
    (
        PackageSpec(
            "libgcc-ng",
            "13.2.0",
            subdir="linux-64",
            license="GPL-3.0-only WITH GCC-exception-3.1",
            license_family="GPL",
        ),
        ".conda",
    ),
    (
        PackageSpec(
            "readline", "8.2", subdir="linux-64", license="GPL-3.0-only", license_family="GPL3"
        ),
        ".conda",
    ),
    (PackageSpec("zlib", "1.2.13", subdir="linux-64", license="Zlib"), ".tar.bz2"),
    (PackageSpec("zlib", "1.3.1", subdir="linux-64", license="Zlib"), ".conda"),
    (
        PackageSpec("numpy", "1.25.0", subdir="linux-64", depends=["python >=3.12", "zlib >=1.2"]),
        ".conda",
    ),
    (
        PackageSpec(
            "numpy",
            "1.26.0",
            subdir="linux-64",
            depends=["python >=3.12", "zlib >=1.3", "libgcc-ng >=13"],
        ),
        ".conda",
    ),
    (
        PackageSpec(
            "numpy",
            "1.26.4",
            subdir="linux-64",
            depends=["python >=3.12", "zlib >=1.3", "libgcc-ng >=13"],
        ),
        ".conda",
    ),
    (PackageSpec("cli", "1.0", subdir="linux-64", depends=["readline >=8"]), ".conda"),
    (PackageSpec("tqdm", "4.66", noarch="python", depends=["python >=3.8"]), ".conda"),
]


@pytest.fixture
def upstream(tmp_path: Path) -> Path:
    root = tmp_path / "upstream"
    for spec, fmt in UPSTREAM:
        build_package(root, spec, fmt)
    index_channel(root)
    return root


@pytest.fixture
def served(upstream: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with faulty_server(upstream) as server:
        yield server


class Project:
    def __init__(
        self,
        root: Path,
        capsys: pytest.CaptureFixture[str],
        bucket: str | None = None,
        s3: S3Server | None = None,
    ) -> None:
        self.root = root
        self.capsys = capsys
        self.config = root / "channels.yaml"
        self.channel = root / "mirror"  # on disk (a bucket channel: never created)
        self.bucket, self.s3 = bucket, s3
        where = f"s3://{bucket}/mirror" if bucket else "./mirror"
        self.where = Channel(where, None if bucket else self.channel)

    def write(self, text: str) -> None:
        text = textwrap.dedent(text)
        if self.bucket:
            text = text.replace("path: ./mirror", f"path: {self.where.where}")
        self.config.write_text(text)

    def run(self, *args: str) -> tuple[int, str, str]:
        code = cli.main([*args, "-c", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err

    def names(self, subdir: str) -> list[str]:
        data = self.where.json(f"{subdir}/repodata.json")
        return sorted({**data["packages"], **data["packages.conda"]})

    def files(self, subdir: str) -> list[str]:
        return sorted(
            name
            for name in self.where.names(subdir)
            if name.endswith((".conda", ".bz2")) and not name.startswith("repodata")
        )

    def add_local(self, spec: PackageSpec, fmt: str = ".conda") -> None:
        """A package dropped into the channel by hand."""
        built = build_package(self.root / "built", spec, fmt)
        self.where.put(f"{spec.subdir}/{built.name}", built.read_bytes())

    def consistent(self, passive: bool = False) -> None:
        """Every index names only files that are there with their sha256."""
        missing = set()
        if passive:  # listed, fetched on the first request
            missing = {f"{s}/{n}" for s in ("linux-64", "noarch") for n in self.names(s)}
        problems = conda_problems(self.where.store, ["linux-64", "noarch"], missing)
        assert problems == []


@pytest.fixture
def project(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Project:
    """The channel in a folder (tests of what only a folder has: disk space, mtimes)."""
    return Project(tmp_path, capsys)


@pytest.fixture(params=["disk", "s3"])
def both(
    request: pytest.FixtureRequest, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> Project:
    """The channel in a folder, then in a bucket."""
    if request.param == "disk":
        return Project(tmp_path, capsys)
    s3: S3Server = request.getfixturevalue("s3")
    return Project(tmp_path, capsys, request.getfixturevalue("bucket"), s3)


def config(
    source: str, mode: str = "active", filters: str = "", channel_filters: str = "", extra: str = ""
) -> str:
    return f"""\
        version: 1
        channels:
          - name: mirror
            path: ./mirror
            subdirs: [linux-64, noarch]
            deletion_grace: 0
            {channel_filters}
            mirrors:
              - name: up
                source: {source}
                mode: {mode}
                {filters}
        {extra}"""


GPL_EXCEPT_GCC = """filters:
              exclude:
                - license: GPL
                  except: [{name: "libgcc*"}]"""


def test_active_mirror_with_filters_then_solve(
    both: Project, served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    project = both
    url, _ = served
    project.write(config(url, channel_filters=GPL_EXCEPT_GCC))
    code, out, _ = project.run("plan", "--detailed-exitcode")
    assert code == ExitCode.CHANGES
    assert "+ numpy-1.26.4-0.conda [up]  (new-upstream: from mirror up, download 1." in out
    assert "readline" not in out and "cli-1.0" in out  # cli itself is not GPL
    code, out, _ = project.run("apply")
    assert code == ExitCode.OK, out
    names = project.names("linux-64")
    assert "libgcc-ng-13.2.0-0.conda" in names and "readline-8.2-0.conda" not in names
    assert project.files("linux-64") == names  # active: every listed file is here
    # Records are upstream's, byte for byte (same sha256 as upstream lists).
    upstream_repodata = json.loads(
        (project.root / "upstream" / "linux-64" / "repodata.json").read_text()
    )
    ours = project.where.json("linux-64/repodata.json")
    assert (
        ours["packages.conda"]["numpy-1.26.4-0.conda"]
        == upstream_repodata["packages.conda"]["numpy-1.26.4-0.conda"]
    )
    code, out, _ = project.run("plan", "--detailed-exitcode")
    assert code == ExitCode.OK, out
    project.consistent()
    if project.bucket:  # a client reads a bucket channel through `reconcile serve`
        with running(project.config) as server:
            solved = solve(f"{server.url}/mirror", ["numpy"], "linux-64", tmp_path / "cache")
    else:
        solved = solve(project.channel.as_uri(), ["numpy"], "linux-64", tmp_path / "cache")
    assert solved["numpy"] == "numpy-1.26.4-0.conda"
    assert solved["zlib"] == "zlib-1.3.1-0.conda"


def test_passive_mirror_lists_without_files(
    both: Project, served: tuple[str, dict[str, Any]]
) -> None:
    project = both
    url, state = served
    project.write(config(url, mode="passive"))
    assert project.run("apply")[0] == ExitCode.OK
    assert "numpy-1.26.4-0.conda" in project.names("linux-64")
    assert project.files("linux-64") == []
    assert not any(r.endswith(".conda") and "repodata" not in r for r in state["requests"])
    inventory = project.where.json(".reconciler/state.json")
    entry = inventory["files"]["linux-64/numpy-1.26.4-0.conda"]
    assert entry["source"] == "up" and entry["passive"] is True
    project.consistent(passive=True)
    # Passive to active downloads what is listed.
    project.write(config(url, mode="active"))
    assert project.run("apply")[0] == ExitCode.OK
    assert project.files("linux-64") == project.names("linux-64")
    project.consistent()


def test_include_latest_and_dependencies(both: Project, served: tuple[str, dict[str, Any]]) -> None:
    project = both
    url, _ = served
    filters = """filters:
                  include:
                    - {name: numpy}
                    - {name: cli}
                  latest: 1
                  dependencies: true"""
    project.write(config(url, filters=filters, channel_filters=GPL_EXCEPT_GCC))
    code, out, _ = project.run("plan")
    assert code == ExitCode.OK
    # readline is needed by cli but excluded by the channel's GPL rule: a warning says so.
    assert (
        "warning: mirror up: linux-64/cli-1.0-0.conda needs 'readline >=8', but "
        "readline-8.2-0.conda is excluded by channels[0].filters.exclude[0] (license: GPL)"
    ) in out
    project.run("apply")
    assert project.names("linux-64") == [
        "cli-1.0-0.conda",
        "libgcc-ng-13.2.0-0.conda",
        "numpy-1.26.4-0.conda",
        "python-3.12.0-0.conda",
        "zlib-1.3.1-0.conda",
    ]
    assert project.names("noarch") == []


def test_upstream_adds_removes_and_hotfixes(
    both: Project, served: tuple[str, dict[str, Any]], upstream: Path
) -> None:
    project = both
    url, _ = served
    project.write(config(url, filters="filters: {include: [{name: 'zlib'}, {name: 'tqdm'}]}"))
    project.run("apply")
    assert "zlib-1.2.13-0.tar.bz2" in project.files("linux-64")

    build_package(upstream, PackageSpec("zlib", "1.3.2", subdir="linux-64", license="Zlib"))
    (upstream / "linux-64" / "zlib-1.2.13-0.tar.bz2").unlink()
    hotfix = upstream.parent / "hotfix.json"
    hotfix.write_text(
        json.dumps(
            {"noarch": {"packages.conda": {"tqdm-4.66-0.conda": {"depends": ["python >=3.9"]}}}}
        )
    )
    index_channel(upstream, patches=[hotfix])

    code, out, _ = project.run("plan", "--detailed-exitcode")
    assert code == ExitCode.CHANGES
    assert "+ zlib-1.3.2-0.conda [up]" in out
    assert (
        "- zlib-1.2.13-0.tar.bz2 [up]  (removed-upstream: no longer upstream in mirror up "
        "(file deleted))"
    ) in out
    assert (
        "~ tqdm-4.66-0.conda [up]  (changed-upstream: record changed upstream in mirror up)"
    ) in out
    assert 'depends: + "python >=3.9"' in out and 'depends: - "python >=3.8"' in out
    assert project.run("apply")[0] == ExitCode.OK
    assert "zlib-1.2.13-0.tar.bz2" not in project.files("linux-64")  # pruned (grace 0)
    assert "zlib-1.3.2-0.conda" in project.files("linux-64")
    project.consistent()


def test_local_packages_are_never_pruned(both: Project, served: tuple[str, dict[str, Any]]) -> None:
    project = both
    url, _ = served
    project.write(config(url, filters="filters: {include: [{name: zlib}]}"))
    project.run("apply")
    project.add_local(PackageSpec("mine", "1.0", subdir="linux-64"))
    project.write(config(url, filters="filters: {include: [{name: python}]}"))
    assert project.run("apply")[0] == ExitCode.OK
    assert project.files("linux-64") == ["mine-1.0-0.conda", "python-3.12.0-0.conda"]
    # Pruned files leave the index before the disk, and are never taken for local ones.
    repodata = project.where.json("linux-64/repodata.json")
    listed = sorted([*repodata["packages"], *repodata["packages.conda"]])
    assert listed == ["mine-1.0-0.conda", "python-3.12.0-0.conda"]
    project.consistent()


def test_two_mirrors_same_file_and_conflict(
    project: Project, served: tuple[str, dict[str, Any]], tmp_path: Path
) -> None:
    url, _ = served
    other = tmp_path / "other"
    build_package(
        other, PackageSpec("zlib", "1.3.1", subdir="linux-64", license="Zlib", build_number=7)
    )
    index_channel(other)
    text = f"""\
        version: 1
        channels:
          - name: mirror
            path: ./mirror
            subdirs: [linux-64, noarch]
            {{conflict}}
            mirrors:
              - {{name: a, source: "{url}", filters: {{include: [{{name: zlib}}]}}}}
              - {{name: b, source: "{other}", filters: {{include: [{{name: zlib}}]}}}}
        """
    project.write(text.replace("{conflict}", ""))
    code, _, err = project.run("plan")
    assert code == ExitCode.ERROR
    assert "linux-64/zlib-1.3.1-0.conda: mirrors a and b offer different files" in err
    project.write(text.replace("{conflict}", "on_conflict: first"))
    code, out, _ = project.run("apply")
    assert code == ExitCode.OK
    assert "keeping a's" in out
    # Same file from the same upstream twice is simply one package.
    project.write(text.replace("{conflict}", "").replace(str(other), url))
    assert project.run("plan")[0] == ExitCode.OK


def test_unsafe_upstream_names_are_refused(project: Project, upstream: Path) -> None:
    repodata_path = upstream / "linux-64" / "repodata.json"
    data = json.loads(repodata_path.read_text())
    record = data["packages.conda"]["python-3.12.0-0.conda"]
    data["packages.conda"]["../../escape-1-0.conda"] = dict(record, name="escape")
    data["packages"]["wrongsub-1-0.tar.bz2"] = dict(record, name="wrongsub", subdir="win-64")
    repodata_path.write_text(json.dumps(data))
    (upstream / "linux-64" / "repodata.json.zst").unlink()
    project.write(config(str(upstream)))
    code, out, _ = project.run("apply")
    assert code == ExitCode.OK
    assert "refusing '../../escape-1-0.conda': filename contains a path separator" in out
    assert "refusing 'wrongsub-1-0.tar.bz2': record says subdir 'win-64'" in out
    assert not (project.root / "escape-1-0.conda").exists()
    assert "python-3.12.0-0.conda" in project.names("linux-64")


def test_wrong_sha256_fails_that_package_only(project: Project, upstream: Path) -> None:
    repodata_path = upstream / "linux-64" / "repodata.json"
    data = json.loads(repodata_path.read_text())
    data["packages.conda"]["zlib-1.3.1-0.conda"]["sha256"] = "0" * 64
    repodata_path.write_text(json.dumps(data))
    (upstream / "linux-64" / "repodata.json.zst").unlink()
    project.write(config(str(upstream)))
    code, _, err = project.run("apply")
    assert code == ExitCode.ERROR
    assert "zlib-1.3.1-0.conda: sha256 mismatch" in err
    assert "zlib-1.3.1-0.conda" not in project.names("linux-64")
    assert "numpy-1.26.4-0.conda" in project.names("linux-64")
    assert list(project.channel.rglob(".reconcile-tmp-*")) == []


def test_truncated_repodata_leaves_the_channel_as_it_was(
    both: Project, served: tuple[str, dict[str, Any]], upstream: Path
) -> None:
    project = both
    url, _ = served
    project.write(config(url))
    project.run("apply")
    before = project.where.read("linux-64/repodata.json")
    zst = upstream / "linux-64" / "repodata.json.zst"
    zst.write_bytes(zst.read_bytes()[:40])
    build_package(upstream, PackageSpec("zlib", "9.9", subdir="linux-64"))  # changes the ETag
    code, _, err = project.run("apply")
    assert code == ExitCode.ERROR
    assert "linux-64/repodata.json.zst" in err
    assert project.where.read("linux-64/repodata.json") == before


def _published_tags(project: Project) -> dict[str, str]:
    """Every file clients see, with its tag (mtime on disk, ETag in a bucket)."""
    store = project.where.store
    found = {}
    folders = [""]
    while folders:
        folder = folders.pop()
        found.update({i.key: i.tag for i in store.list_files(folder)})
        folders += [f"{folder}/{d}".strip("/") for d in store.list_dirs(folder) if d[0] != "."]
    return found


def test_second_run_gets_304_and_rewrites_nothing(
    both: Project, served: tuple[str, dict[str, Any]]
) -> None:
    project = both
    url, state = served
    project.write(config(url))
    project.run("apply")
    before = _published_tags(project)
    downloads = [r for r in state["requests"] if not r.split("/")[-1].startswith("repodata")]
    if project.s3 is not None and project.bucket is not None:
        project.s3.reset(project.bucket)
    code, out, _ = project.run("apply")
    assert (code, out) == (ExitCode.OK, "Apply complete: no changes.\n")
    assert "/linux-64/repodata.json.zst" in state["not_modified"]
    assert [
        r for r in state["requests"] if not r.split("/")[-1].startswith("repodata")
    ] == downloads
    assert _published_tags(project) == before
    if project.s3 is not None and project.bucket is not None:
        # A no-op apply writes nothing at all, and lists rather than reads packages.
        counts = project.s3.counts(project.bucket)
        assert counts["PUT"] == counts["DELETE"] == counts["POST"] == 0, counts
        assert counts["GET_PACKAGE"] == 0 and counts["LIST"], counts


def test_not_enough_disk_space(
    project: Project, served: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from reconciler.store import local

    url, _ = served
    monkeypatch.setattr(local, "DISK_MARGIN", 1 << 60)
    project.write(config(url))
    code, _, err = project.run("apply")
    assert code == ExitCode.ERROR
    assert "not enough free disk space" in err
    assert not any(project.channel.rglob("*.conda"))


def test_missing_noarch_upstream_is_an_error(project: Project, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    (empty / "linux-64").mkdir(parents=True)
    project.write(config(str(empty)))
    code, _, err = project.run("plan")
    assert code == ExitCode.ERROR and "noarch/repodata.json: not found" in err


def test_explain_agrees_with_the_plan(both: Project, served: tuple[str, dict[str, Any]]) -> None:
    project = both
    url, _ = served
    filters = """filters:
                  include: [{name: numpy}, {name: cli}, {name: tqdm}]
                  latest: 2
                  dependencies: true"""
    project.write(config(url, filters=filters, channel_filters=GPL_EXCEPT_GCC))
    project.run("apply")
    project.add_local(PackageSpec("mine", "1.0", subdir="linux-64", license="GPL-2.0-only"))
    code, out, _ = project.run("explain", "numpy")
    assert code == ExitCode.OK
    assert "mirror/linux-64/numpy-1.26.4-0.conda (mirror up): in — selected" in out
    assert (
        "mirror/linux-64/numpy-1.25.0-0.conda (mirror up): out — older than the newest 2 in "
        "linux-64 by channels[0].mirrors[0].filters.latest"
    ) in out
    code, out, _ = project.run("explain", "zlib >=1.3")
    assert "zlib-1.3.1-0.conda (mirror up): in — dependency of linux-64/numpy-1.26" in out
    assert "zlib-1.2.13" not in out  # the spec leaves it out of the question
    code, out, _ = project.run("explain", "mine-1.0-0.conda")
    assert out.strip() == (
        "mirror/linux-64/mine-1.0-0.conda (local package): out — excluded by "
        "channels[0].filters.exclude[0] (license: GPL)"
    )
    # Everything explain calls "in" is what apply published, and nothing else.
    code, out, _ = project.run("explain", "*", "--json")
    explained = {(e["location"], e["name"]) for e in json.loads(out) if e["selected"]}
    published = {("linux-64", n) for n in project.names("linux-64")} | {
        ("noarch", n) for n in project.names("noarch")
    }
    assert explained == published
    code, _, err = project.run("explain", ">>>")
    assert code == ExitCode.ERROR and "neither a package filename nor a match spec" in err


ALL_LINUX = sorted(f"{spec.stem}{fmt}" for spec, fmt in UPSTREAM if spec.subdir == "linux-64")
FILTER_CASES = {
    "name": ("{include: [{name: 'zlib'}]}", ["zlib-1.2.13-0.tar.bz2", "zlib-1.3.1-0.conda"]),
    "version": (
        "{include: [{name: numpy, version: '>=1.26'}]}",
        ["numpy-1.26.0-0.conda", "numpy-1.26.4-0.conda"],
    ),
    "build": (
        "{include: [{name: 'num*', build: '0'}], exclude: [{build: 'x*'}]}",
        [
            "numpy-1.25.0-0.conda",
            "numpy-1.26.0-0.conda",
            "numpy-1.26.4-0.conda",
        ],
    ),
    "spec": ("{include: [{spec: 'numpy >=1.26.1'}]}", ["numpy-1.26.4-0.conda"]),
    "license": (
        "{exclude: [{license: GPL}]}",
        [n for n in ALL_LINUX if not n.startswith(("readline", "libgcc"))],
    ),
    "license_family": ("{include: [{license_family: GPL3}]}", ["readline-8.2-0.conda"]),
    "subdir": ("{exclude: [{subdir: 'linux-*'}]}", []),
    "date": ("{date: {after: 2024-01-01}}", []),
    "latest": (
        "{latest: 1}",
        [
            n
            for n in ALL_LINUX
            if n not in ("zlib-1.2.13-0.tar.bz2", "numpy-1.25.0-0.conda", "numpy-1.26.0-0.conda")
        ],
    ),
    "combined": (
        "{include: [{name: 'numpy'}, {name: 'zlib', version: '<1.3'}], "
        "exclude: [{spec: 'numpy <1.26'}], latest: 2}",
        ["numpy-1.26.0-0.conda", "numpy-1.26.4-0.conda", "zlib-1.2.13-0.tar.bz2"],
    ),
}


@pytest.mark.parametrize("level", ["channel", "mirror"])
@pytest.mark.parametrize("key", sorted(FILTER_CASES))
def test_each_filter_key_at_each_level(
    project: Project, upstream: Path, level: str, key: str
) -> None:
    block, expected = FILTER_CASES[key]
    if level == "mirror":
        project.write(config(str(upstream), mode="passive", filters=f"filters: {block}"))
    else:
        project.write(config(str(upstream), mode="passive", channel_filters=f"filters: {block}"))
    code, out, err = project.run("apply")
    assert code == ExitCode.OK, out + err
    assert project.names("linux-64") == sorted(expected)
    if key == "subdir":
        assert project.names("noarch") == ["tqdm-4.66-0.conda"]
