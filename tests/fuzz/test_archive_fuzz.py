"""The package reader on hostile archives: metadata, or a PackageError naming the file.

Real packages (built by ``tests/packages.py``) are truncated and bit-flipped; archives
are crafted with escaping member names, bombs (members declaring or holding far more
than the file could reasonably expand to) and floods of members.
"""

from __future__ import annotations

import bz2
import io
import tarfile
import time
import tracemalloc
import zipfile
from collections.abc import Sequence
from pathlib import Path

import pytest
import zstandard
from hypothesis import assume, currently_in_test_context, event, given
from hypothesis import strategies as st

from reconciler.conda import archive
from reconciler.conda.archive import read_package
from reconciler.conda.metadata import PackageMetadata
from reconciler.errors import PackageError
from tests.fuzz.common import budget, byte_mutations, mutate_bytes
from tests.packages import PackageSpec, build_package, tar_bytes

STEM = "fuzz-1.0-0"
SPEC = PackageSpec(
    "fuzz",
    "1.0",
    subdir="linux-64",
    depends=["python >=3.11"],
    run_exports={"weak": ["fuzz >=1.0"]},
    about={"description": "d" * 200},
    files={"bin/fuzz": b"\x00/opt/anaconda1anaconda2anaconda3\x00", "lib/x.txt": b"x" * 300},
    prefix_files={"bin/fuzz": "binary"},
    scripts=("post-link",),
)


@pytest.fixture(scope="module")
def packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    root = tmp_path_factory.mktemp("pkgs")
    return {fmt: build_package(root, SPEC, fmt).read_bytes() for fmt in (".conda", ".tar.bz2")}


def outcome(text: str) -> None:
    """Count what happened, in ``--hypothesis-show-statistics`` (inside a fuzz test only)."""
    if currently_in_test_context():
        event(text)


def read(
    path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool = False
) -> PackageMetadata | PackageError:
    """Read ``path`` in memory or streamed; any error but PackageError propagates."""
    monkeypatch.setattr(archive, "IN_MEMORY_LIMIT", 0 if streamed else 64 * 1024 * 1024)
    try:
        meta = read_package(path)
    except PackageError as exc:
        assert exc.path == path.name and str(exc).startswith(f"{path.name}: "), str(exc)
        outcome(f"refused: {exc.reason.split(' (')[0][:40]}")
        return exc
    outcome("read")
    for key in ("name", "version", "build"):
        assert isinstance(meta.index[key], str)
    assert meta.size == path.stat().st_size and len(meta.sha256) == 64
    return meta


def test_unmutated_packages_read(
    tmp_path: Path, packages: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    for fmt, data in packages.items():
        for streamed in (False, True):
            path = tmp_path / f"{STEM}{fmt}"
            path.write_bytes(data)
            meta = read(path, monkeypatch, streamed)
            assert isinstance(meta, PackageMetadata)
            assert meta.index == SPEC.index_json() and meta.run_exports == SPEC.run_exports


@budget(150)
@given(
    fmt=st.sampled_from([".conda", ".tar.bz2"]),
    cut=st.floats(0, 1, exclude_max=True),
    streamed=st.booleans(),
)
def test_truncated_packages(
    tmp_path: Path,
    packages: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    cut: float,
    streamed: bool,
) -> None:
    data = packages[fmt][: int(len(packages[fmt]) * cut)]
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(data)
    result = read(path, monkeypatch, streamed)
    if fmt == ".conda":
        # The zip directory is at the end: a cut .conda never reads.
        assert isinstance(result, PackageError)


@budget(250)
@given(
    fmt=st.sampled_from([".conda", ".tar.bz2"]),
    mutations=byte_mutations,
    streamed=st.booleans(),
)
def test_mutated_packages(
    tmp_path: Path,
    packages: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    fmt: str,
    mutations: list[tuple[str, int, int]],
    streamed: bool,
) -> None:
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(mutate_bytes(packages[fmt], mutations))
    read(path, monkeypatch, streamed)


# -- crafted archives ----------------------------------------------------------------

INFO = SPEC.info_files()
ESCAPING = ("../evil", "/etc/passwd", "info/../../evil", "\\evil", "info/../..", "..")
# A member: (name, kind, content); kind "file" holds content, "declared" only claims a
# size (its header says so, its data is not there), "dir" and "symlink" hold nothing.
member = st.tuples(
    st.one_of(
        st.sampled_from(sorted(INFO)),
        st.sampled_from(ESCAPING),
        st.sampled_from(["info/recipe/meta.yaml", "info/test/x", "lib/y", "./info/index.json"]),
        st.text(alphabet="abcdefinfo/._-", min_size=1, max_size=12),
    ),
    st.sampled_from(["file", "file", "file", "declared", "dir", "symlink"]),
    st.one_of(
        st.sampled_from([INFO["info/index.json"], b"{}", b"[]", b"{", b"\xff\xfe", b""]),
        st.binary(max_size=40),
    ),
)


def crafted_tar(members: Sequence[tuple[str, str, bytes]], declared: int) -> bytes:
    """An uncompressed tar of ``members``; "declared" members claim ``declared`` bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, content in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = "/etc/passwd"
                tar.addfile(info)
            elif kind == "declared":
                # Header only: the next header follows where the data should have been.
                info.size = declared
                buffer.write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def as_package(tar: bytes, fmt: str) -> bytes:
    if fmt == ".tar.bz2":
        return bz2.compress(tar, 1)
    out = io.BytesIO()
    zstd = zstandard.ZstdCompressor(level=1)
    with zipfile.ZipFile(out, "w") as outer:
        outer.writestr("metadata.json", b'{"conda_pkg_format_version": 2}')
        outer.writestr(f"pkg-{STEM}.tar.zst", zstd.compress(tar_bytes({"lib/y": b"y"})))
        outer.writestr(f"info-{STEM}.tar.zst", zstd.compress(tar))
    return out.getvalue()


def escapes(name: str) -> bool:
    return name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/")


@budget(250)
@given(
    members=st.lists(member, min_size=1, max_size=8),
    fmt=st.sampled_from([".conda", ".tar.bz2"]),
    declared=st.sampled_from([0, 1, 10**6, archive.MEMBER_LIMIT + 1, 2**40]),
    streamed=st.booleans(),
)
def test_crafted_archives(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    members: list[tuple[str, str, bytes]],
    fmt: str,
    declared: int,
    streamed: bool,
) -> None:
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(as_package(crafted_tar(members, declared), fmt))
    result = read(path, monkeypatch, streamed)
    # The reader stops after info/; up to there, an archive with an escaping name never
    # reads (refused as escaping, or for something found before it).
    first_info = next((i for i, m in enumerate(members) if m[0].startswith("info/")), None)
    if first_info is not None and any(escapes(name) for name, _, _ in members[: first_info + 1]):
        assert isinstance(result, PackageError), "an archive with an escaping member was read"


@pytest.mark.parametrize("fmt", [".conda", ".tar.bz2"])
@pytest.mark.parametrize("name", ESCAPING)
def test_escaping_members_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str, name: str
) -> None:
    members = [(name, "file", b"x"), *((n, "file", d) for n, d in sorted(INFO.items()))]
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(as_package(crafted_tar(members, 0), fmt))
    result = read(path, monkeypatch)
    assert isinstance(result, PackageError) and "tries to escape its folder" in result.reason


# -- bombs ---------------------------------------------------------------------------

ZEROS_MIB = bz2.compress(bytes(1024 * 1024), 9)  # one stream; streams concatenate


def zero_bomb(mebibytes: int) -> bytes:
    """A .tar.bz2 whose first member holds ``mebibytes`` MiB of zeros, then a real info/.

    Built from concatenated bzip2 streams, so a gigabyte costs kilobytes and no time.
    """
    header = tarfile.TarInfo("payload/zeros")
    header.size = mebibytes * 1024 * 1024
    info = tar_bytes(INFO)
    return b"".join(
        [
            bz2.compress(header.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")),
            ZEROS_MIB * mebibytes,
            bz2.compress(info),
        ]
    )


def test_zero_bomb_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    path = tmp_path / f"{STEM}.tar.bz2"
    path.write_bytes(zero_bomb(100 * 1024))  # 100 GiB of zeros in about 4 MB
    assert path.stat().st_size < 8 * 1024 * 1024
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(PackageError) as info:
            read_package(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused at the member's header: nothing of it was decompressed.
    assert time.monotonic() - started < 5
    assert peak < 64 * 1024 * 1024  # the file itself (read whole) and little else
    assert "decompression bomb" in info.value.reason and info.value.path == path.name


def test_skipped_members_count_towards_the_bomb_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Many members, each small, that together expand past the limit before info/.
    monkeypatch.setattr(archive, "STREAM_FLOOR", 4 * 1024 * 1024)
    members = [(f"payload/{i}", "file", bytes(512 * 1024)) for i in range(12)]
    members += [(n, "file", d) for n, d in sorted(INFO.items())]
    path = tmp_path / f"{STEM}.tar.bz2"
    path.write_bytes(as_package(crafted_tar(members, 0), ".tar.bz2"))
    result = read(path, monkeypatch)
    assert isinstance(result, PackageError) and "decompression bomb" in result.reason
    # The same members under the limit read fine: the limit is what refused them.
    monkeypatch.setattr(archive, "STREAM_FLOOR", 64 * 1024 * 1024)
    assert isinstance(read(path, monkeypatch), PackageMetadata)


@pytest.mark.parametrize("fmt", [".conda", ".tar.bz2"])
def test_member_flood_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str) -> None:
    monkeypatch.setattr(archive, "MAX_MEMBERS", 500)
    members = [(f"info/recipe/{i}", "file", b"") for i in range(600)]
    members += [(n, "file", d) for n, d in sorted(INFO.items())]
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(as_package(crafted_tar(members, 0), fmt))
    result = read(path, monkeypatch)
    assert isinstance(result, PackageError) and "more than 500 archive members" in result.reason


def test_huge_declared_info_member_in_conda_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    members = [("info/index.json", "declared", b"")]
    path = tmp_path / f"{STEM}.conda"
    path.write_bytes(as_package(crafted_tar(members, 2**40), ".conda"))
    result = read(path, monkeypatch)
    assert isinstance(result, PackageError) and "decompression bomb" in result.reason


@budget(40)
@given(
    sizes=st.lists(
        st.one_of(st.integers(0, 600 * 1024), st.sampled_from([256 * 1024, 512 * 1024])),
        min_size=1,
        max_size=8,
    ),
    fmt=st.sampled_from([".conda", ".tar.bz2"]),
)
def test_expansion_limit_holds_for_any_layout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int], fmt: str
) -> None:
    # Zeros before info/: refused exactly when they reach past the (lowered) limit.
    monkeypatch.setattr(archive, "STREAM_FLOOR", 1024 * 1024)
    members = [(f"info/recipe/{i}", "file", bytes(size)) for i, size in enumerate(sizes)]
    members += [(n, "file", d) for n, d in sorted(INFO.items())]
    tar = crafted_tar(members, 0)
    path = tmp_path / f"{STEM}{fmt}"
    path.write_bytes(as_package(tar, fmt))
    assume(archive.STREAM_RATIO * path.stat().st_size < archive.STREAM_FLOOR)
    result = read(path, monkeypatch)
    if len(tar) > archive.STREAM_FLOOR + 10 * 1024:  # past the limit, with headers to spare
        assert isinstance(result, PackageError) and "decompression bomb" in result.reason
    elif len(tar) < archive.STREAM_FLOOR - 10 * 1024:
        assert isinstance(result, PackageMetadata), result
