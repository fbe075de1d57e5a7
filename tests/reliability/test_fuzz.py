"""Fuzzing every reader of untrusted input: never a traceback, always a clear error.

Bounded in CI (the ``ci`` hypothesis profile); ``HYPOTHESIS_PROFILE=long`` searches longer.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from reconciler.conda.archive import PackageError, read_package
from reconciler.conda.names import filename_problem, is_safe_package_filename
from reconciler.conda.patches import (
    PatchError,
    apply_instructions,
    load_patch_source,
    validate_instructions,
)
from reconciler.conda.repodata import load_repodata
from reconciler.config.models import FilterBlock, load_config
from reconciler.errors import ReconcileError
from reconciler.filters import Candidate, FilterEngine
from reconciler.kinds.pypi.names import is_safe_filename, parse_filename
from reconciler.kinds.pypi.pages import PageError, parse_html_page, parse_json_page
from tests.conftest import REPO_ROOT
from tests.packages import PackageSpec, build_package

pytestmark = pytest.mark.slow

EXAMPLE = (REPO_ROOT / "examples" / "channels.yaml").read_text()
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
json_like = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _mutate(text: str, rng: random.Random) -> str:
    lines = text.splitlines()
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        choice = rng.randrange(5)
        if choice == 0:
            del lines[i]
        elif choice == 1:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif choice == 2:
            cut = rng.randrange(len(lines[i]) + 1)
            lines[i] = lines[i][:cut]
        elif choice == 3:
            lines[i] = " " * rng.randrange(6) + lines[i].lstrip()
        else:
            lines[i] = lines[i] + rng.choice([": x", " [", "{", " - 1", ": *a", " !!binary"])
    return "\n".join(lines) + "\n"


def _check_config(path: Path) -> None:
    try:
        load_config(path)
    except ReconcileError as exc:
        # Every message line points at the file, with a line number when there is one.
        assert str(path) in exc.message, exc.message


@given(seed=st.integers(0, 2**32))
def test_fuzz_config_mutations(tmp_path_factory: pytest.TempPathFactory, seed: int) -> None:
    folder = tmp_path_factory.mktemp("cfg")
    path = folder / "channels.yaml"
    path.write_text(_mutate(EXAMPLE, random.Random(seed)))
    _check_config(path)


@given(document=json_like)
def test_fuzz_config_random_documents(
    tmp_path_factory: pytest.TempPathFactory, document: Any
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "channels.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "channels": document}))
    _check_config(path)


@given(text=st.text(max_size=300))
def test_fuzz_config_random_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("cfg") / "channels.yaml"
    path.write_text(text)
    _check_config(path)


REPODATA = {
    "info": {"subdir": "linux-64"},
    "packages": {"a-1.0-0.tar.bz2": {"name": "a", "version": "1.0", "build": "0", "depends": []}},
    "packages.conda": {"a-1.0-0.conda": {"name": "a", "version": "1.0", "build": "0"}},
    "removed": [],
    "repodata_version": 1,
}


@given(key=st.sampled_from(["info", "packages", "packages.conda", "removed"]), value=json_like)
def test_fuzz_repodata_reader(key: str, value: Any) -> None:
    data = dict(REPODATA, **{key: value})
    try:
        load_repodata(orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS), "up/repodata.json")
    except ReconcileError as exc:
        assert "up/repodata.json" in exc.message
    except TypeError:
        assume(False)  # orjson cannot even write this value (e.g. > 64-bit ints)


@given(blob=st.binary(max_size=200))
def test_fuzz_repodata_bytes(blob: bytes) -> None:
    try:
        load_repodata(blob, "up/repodata.json")
    except ReconcileError as exc:
        assert "up/repodata.json" in exc.message


instructions = st.fixed_dictionaries(
    {},
    optional={
        "patch_instructions_version": json_like,
        "packages": st.dictionaries(
            st.sampled_from(["a-1.0-0.tar.bz2", "zz"]), json_like, max_size=3
        ),
        "packages.conda": json_like,
        "revoke": json_like,
        "remove": st.lists(st.sampled_from(["a-1.0-0.conda", "a-1.0-0.tar.bz2", "x"]), max_size=3),
    },
)


@given(data=instructions)
def test_fuzz_patch_instructions(data: dict[str, Any]) -> None:
    before = json.dumps(REPODATA, sort_keys=True)
    try:
        validate_instructions(data, "patch.json")
    except PatchError as exc:
        assert "patch.json" in exc.message
        return
    result = apply_instructions(REPODATA, data)  # validated: must not raise
    assert json.dumps(REPODATA, sort_keys=True) == before  # the input is never mutated
    assert set(result["packages"]) <= set(REPODATA["packages"])


@given(text=st.text(max_size=200))
def test_fuzz_patch_json_files(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("patch") / "patch_instructions.json"
    path.write_text(text)
    try:
        load_patch_source(path)
    except ReconcileError as exc:
        assert str(path) in exc.message


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("pkgs")
    built = {}
    for fmt in (".conda", ".tar.bz2"):
        path = build_package(root, PackageSpec("fuzz", "1.0", subdir="linux-64"), fmt)
        built[fmt] = path.read_bytes()
    return built


@given(
    fmt=st.sampled_from([".conda", ".tar.bz2"]),
    cut=st.integers(0, 4000),
    flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 7)), max_size=4),
)
def test_fuzz_archive_reader(
    tmp_path_factory: pytest.TempPathFactory,
    packages: dict[str, bytes],
    fmt: str,
    cut: int,
    flips: list[tuple[int, int]],
) -> None:
    data = bytearray(
        packages[fmt][: max(1, min(cut, len(packages[fmt])))] if cut else packages[fmt]
    )
    for offset, bit in flips:
        if offset < len(data):
            data[offset] ^= 1 << bit
    path = tmp_path_factory.mktemp("pkg") / f"fuzz-1.0-0{fmt}"
    path.write_bytes(bytes(data))
    try:
        read_package(path)
    except PackageError as exc:
        assert "fuzz-1.0-0" in str(exc)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.mark.parametrize(
    "members",
    [
        [("../evil", b"x"), ("info/index.json", b"{}")],
        [("/etc/passwd", b"x"), ("info/index.json", b"{}")],
        [("info/index.json", b"{" + b" " * (300 * 1024 * 1024) + b"}")],  # a bzip2 bomb
    ],
    ids=["dotdot", "absolute", "bomb"],
)
def test_hostile_archives_are_refused(tmp_path: Path, members: list[tuple[str, bytes]]) -> None:
    path = tmp_path / "evil-1.0-0.tar.bz2"
    path.write_bytes(_tar(members))
    with pytest.raises(PackageError) as info:
        read_package(path)
    assert "evil-1.0-0.tar.bz2" in str(info.value)


def test_conda_zip_bomb_is_refused(tmp_path: Path) -> None:
    import zstandard

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w") as archive:
        info = tarfile.TarInfo("info/index.json")
        payload = b"{" + b" " * (300 * 1024 * 1024) + b"}"
        info.size = len(payload)
        archive.addfile(info, io.BytesIO(payload))
    path = tmp_path / "evil-1.0-0.conda"
    with zipfile.ZipFile(path, "w") as outer:
        outer.writestr("metadata.json", b'{"conda_pkg_format_version": 2}')
        outer.writestr(
            "info-evil-1.0-0.tar.zst", zstandard.ZstdCompressor().compress(inner.getvalue())
        )
        outer.writestr("pkg-evil-1.0-0.tar.zst", zstandard.ZstdCompressor().compress(b""))
    with pytest.raises(PackageError) as info:
        read_package(path)
    assert "evil-1.0-0.conda" in str(info.value)


@given(name=st.text(max_size=60))
def test_fuzz_filenames(tmp_path_factory: pytest.TempPathFactory, name: str) -> None:
    for accepted in (is_safe_package_filename(name), is_safe_filename(name)):
        if not accepted:
            continue
        assert not any(c in name for c in "/\\\x00") and not name.startswith(".")
        folder = Path("/srv/channel/linux-64")
        assert (folder / name).resolve().parent == folder.resolve()
    if is_safe_package_filename(name):
        assert filename_problem(name) is None
    if is_safe_filename(name):
        with contextlib.suppress(ValueError):  # refused with a reason: fine
            parse_filename(name)


@given(body=st.binary(max_size=300))
def test_fuzz_pypi_pages(body: bytes) -> None:
    try:
        page = parse_json_page(body, "https://i.example/simple/x/", "x")
    except PageError as exc:
        assert "https://i.example/simple/x/" in exc.message
    else:
        assert all(is_safe_filename(f.filename) for f in page.files)
    html = body.decode("utf-8", "replace")
    page = parse_html_page(html, "https://i.example/simple/x/", "x")
    assert all(is_safe_filename(f.filename) and len(f.sha256) == 64 for f in page.files)


records = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c"]),
        st.sampled_from(["1.0", "1.1", "2.0", "2.0a1", "x!y"]),
        st.sampled_from(["MIT", "GPL-3.0-only", "BSD-3-Clause OR GPL-2.0", None]),
        st.sampled_from(["linux-64", "noarch"]),
    ),
    max_size=12,
    unique_by=lambda item: (item[0], item[1], item[3]),  # one record per filename
)
blocks = st.fixed_dictionaries(
    {},
    optional={
        "include": st.lists(
            st.sampled_from([{"name": "a"}, {"version": ">=1.1"}, {"subdir": "noarch"}]), max_size=2
        ),
        "exclude": st.lists(
            st.sampled_from([{"license": "GPL"}, {"name": "b*"}, {"spec": "c <2"}]), max_size=2
        ),
        "latest": st.integers(1, 3),
    },
)


@given(items=records, block=blocks, seed=st.integers(0, 1000))
def test_fuzz_filter_decisions_do_not_depend_on_order(
    items: list[tuple[str, str, str | None, str]], block: dict[str, Any], seed: int
) -> None:
    engine = FilterEngine(FilterBlock.model_validate(block))
    candidates = [
        Candidate(
            subdir, f"{name}-{version}-0.conda", {"name": name, "version": version, "license": lic}
        )
        for name, version, lic, subdir in items
    ]
    expected = {k: (d.selected, d.reason) for k, d in engine.evaluate(candidates).items()}
    shuffled = candidates[:]
    random.Random(seed).shuffle(shuffled)
    got = {k: (d.selected, d.reason) for k, d in engine.evaluate(shuffled).items()}
    assert got == expected
    # Records of other names never change a decision (latest counts per name).
    extra = [Candidate("linux-64", "zzz-9.9-0.conda", {"name": "zzz", "version": "9.9"})]
    more = {k: (d.selected, d.reason) for k, d in engine.evaluate(shuffled + extra).items()}
    assert {k: v for k, v in more.items() if k[1] != "zzz-9.9-0.conda"} == expected
