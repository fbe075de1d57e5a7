"""The tar reader against Python's tarfile: the same members, names and data; bad input
refused with a reason."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.conda.tar import Member, TarError, TarReader


def _archive(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        directory = tarfile.TarInfo("info/test")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)
        link = tarfile.TarInfo("info/link")
        link.type = tarfile.SYMTYPE
        link.linkname = "index.json"
        tar.addfile(link)
    return buffer.getvalue()


def _read_all(data: bytes) -> list[tuple[Member, bytes | None]]:
    reader = TarReader(io.BytesIO(data))
    return [(m, reader.read() if m.isfile() else None) for m in reader]


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_match_tarfile(fmt: int) -> None:
    long_name = "info/" + "d" * 120 + "/index.json"  # beyond ustar's 100 characters
    members = [("info/index.json", b'{"name": "a"}'), ("info/about.json", b"{}" * 400)]
    if fmt != tarfile.USTAR_FORMAT:
        members.append((long_name, b"long"))
    else:
        members.append(("info/" + "p" * 90 + "/" + "n" * 60, b"prefixed"))  # ustar prefix
    data = _archive(members, fmt)
    read = [(m.name, d) for m, d in _read_all(data) if m.isfile()]
    assert read == members
    kinds = {m.name: m.kind for m, _ in _read_all(data)}
    assert kinds["info/test"] == "dir" and kinds["info/link"] == "link"


def test_skipping_members_without_reading_them() -> None:
    data = _archive([("a", b"x" * 5000), ("b", b"y" * 10), ("c", b"z")])
    reader = TarReader(io.BytesIO(data))
    names = []
    for member in reader:
        names.append(member.name)
        if member.name == "c":
            assert reader.read() == b"z"
    assert names[:3] == ["a", "b", "c"]


def test_a_corrupt_header_is_refused() -> None:
    data = bytearray(_archive([("info/index.json", b"{}")]))
    data[10] ^= 0xFF  # inside the first header's name: the checksum no longer matches
    with pytest.raises(TarError, match="checksum"):
        _read_all(bytes(data))


def test_a_truncated_member_is_refused() -> None:
    data = _archive([("info/index.json", b"x" * 3000)])
    with pytest.raises(TarError, match="ends in the middle"):
        _read_all(data[:1500])


@given(blob=st.binary(max_size=3000))
def test_any_bytes_give_members_or_a_tar_error(blob: bytes) -> None:
    try:
        for member, data in _read_all(blob):
            assert member.size >= 0
            assert data is None or len(data) == member.size
    except TarError:
        pass


@given(
    members=st.lists(
        st.tuples(
            st.text(min_size=1, max_size=180).filter(lambda s: "\x00" not in s),
            st.binary(max_size=600),
        ),
        max_size=5,
        unique_by=lambda item: item[0],
    )
)
def test_random_archives_read_like_tarfile(members: list[tuple[str, bytes]]) -> None:
    data = _archive(members)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        expected = [
            (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
            for m in tar.getmembers()
            if m.isfile()
        ]
    assert [(m.name, d) for m, d in _read_all(data) if m.isfile()] == expected
