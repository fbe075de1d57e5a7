"""Package filenames and subdir names from untrusted metadata, on arbitrary text.

A name the validators accept is joined to a folder and written there, so it must
never hold a separator, NUL or ``..``, must end in a package suffix, must stay inside
the folder it is joined to, and must be a name the file system can create.
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from reconciler.conda.names import (
    PACKAGE_SUFFIXES,
    filename_problem,
    is_safe_package_filename,
    is_valid_subdir,
    package_suffix,
    strip_suffix,
)
from reconciler.kinds.pypi.names import METADATA_SUFFIX, is_safe_filename
from tests.fuzz.common import budget

# Every code point, surrogates included: names come from JSON, which can escape them.
any_text = st.text(st.characters(exclude_categories=()), max_size=300)
# Near misses: built from the pieces a valid name is made of, and the dangerous ones.
pieces = st.sampled_from(
    [
        "numpy",
        "1.26",
        "py311_0",
        "-",
        "_",
        ".",
        "..",
        "/",
        "\\",
        "\x00",
        "!",
        "+",
        " ",
        "é",
        ".conda",
        ".tar.bz2",
        ".tar",
        ".bz2",
        "\u2215",
        "\uff0f",
        "%2f",
        "~",
        "a" * 120,
    ]
)
near_misses = st.lists(pieces, min_size=1, max_size=8).map("".join)
valid_looking = st.from_regex(
    r"\A[A-Za-z0-9_.+\-]{1,150}-[A-Za-z0-9_.+!]{1,80}-[A-Za-z0-9_.+]{1,80}(\.conda|\.tar\.bz2)\Z"
)
# Around the longest name a file system takes (255 bytes).
long_names = st.tuples(st.integers(200, 300), st.sampled_from(PACKAGE_SUFFIXES)).map(
    lambda t: "n" * t[0] + "-1.0-0" + t[1]
)
names = st.one_of(any_text, near_misses, valid_looking, long_names)

FOLDER = Path("/srv/channel/linux-64")


def check_accepted(name: str, tmp_path: Path, suffix: str = "") -> None:
    """``name`` (and ``name + suffix``, a twin file written next to it) is a plain file."""
    assert not any(c in name for c in "/\\\x00"), name
    assert not name.startswith(".") and name not in (".", "..")
    joined = FOLDER / name
    assert joined.parent == FOLDER and joined.name == name
    assert Path(os.path.normpath(joined)).parent == FOLDER
    # The file system can hold it (a name of 256 bytes cannot be created anywhere).
    target = tmp_path / (name + suffix)
    target.write_bytes(b"")
    target.unlink()


@budget(600)
@given(name=names)
def test_accepted_package_filenames_are_safe(tmp_path: Path, name: str) -> None:
    problem = filename_problem(name)
    assert is_safe_package_filename(name) == (problem is None)
    if problem is not None:
        assert problem and "\n" not in problem
        return
    check_accepted(name, tmp_path)
    assert ".." not in name, name  # conda names never hold it, even inside
    suffix = package_suffix(name)
    assert suffix in PACKAGE_SUFFIXES and name.endswith(suffix)
    stem = strip_suffix(name)
    assert stem + suffix == name and stem.count("-") >= 2


pypi_names = st.one_of(
    names,
    st.tuples(
        st.integers(100, 260),
        st.sampled_from(["a", "é", "\ud800", "\udcff"]),
        st.sampled_from([".whl", ".tar.gz", ".zip"]),
    ).map(lambda t: t[1] * t[0] + "-1.0" + t[2]),
)


@budget(300)
@given(name=pypi_names)
def test_accepted_pypi_filenames_are_safe(tmp_path: Path, name: str) -> None:
    if is_safe_filename(name):
        check_accepted(name, tmp_path, METADATA_SUFFIX)


@budget(300)
@given(subdir=st.one_of(any_text, near_misses, st.from_regex(r"\A[a-z0-9]{1,20}-[a-z0-9]{1,20}\Z")))
def test_accepted_subdirs_are_plain_folder_names(tmp_path: Path, subdir: str) -> None:
    if not is_valid_subdir(subdir):
        return
    assert subdir == "noarch" or (subdir.count("-") == 1 and subdir.isascii())
    assert subdir == subdir.lower() and "." not in subdir
    assert not any(c in subdir for c in "/\\\x00 \n")
    (tmp_path / subdir).mkdir()
    (tmp_path / subdir).rmdir()
