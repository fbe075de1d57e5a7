from __future__ import annotations

import pytest

from reconciler.conda.names import filename_problem, is_valid_subdir, package_suffix, strip_suffix


@pytest.mark.parametrize("subdir", ["noarch", "linux-64", "osx-arm64", "win-64", "linux-aarch64"])
def test_valid_subdirs(subdir: str) -> None:
    assert is_valid_subdir(subdir)


@pytest.mark.parametrize(
    "subdir", ["", "Linux-64", "linux_64", "linux", "linux-64-x", "../x", "a-"]
)
def test_invalid_subdirs(subdir: str) -> None:
    assert not is_valid_subdir(subdir)


@pytest.mark.parametrize(
    "filename",
    ["numpy-1.26.0-py311h_0.conda", "zlib-1.2.13-h0_1.tar.bz2", "foo-1!2.0-0.conda"],
)
def test_safe_filenames(filename: str) -> None:
    assert filename_problem(filename) is None


@pytest.mark.parametrize(
    ("filename", "reason"),
    [
        ("../evil-1-0.conda", "separator"),
        ("a\\b-1-0.conda", "separator"),
        ("evil-1-0.conda\x00.txt", "NUL"),
        ("..-1-0.conda", "dot"),
        ("x-1..2-0.conda", ".."),
        ("x-1-0.zip", "end in"),
        ("justaname.conda", "<name>-<version>-<build>"),
        ("", "empty"),
    ],
)
def test_unsafe_filenames(filename: str, reason: str) -> None:
    problem = filename_problem(filename)
    assert problem is not None
    assert reason in problem


def test_suffix_helpers() -> None:
    assert package_suffix("a-1-0.tar.bz2") == ".tar.bz2"
    assert package_suffix("a-1-0.conda") == ".conda"
    assert package_suffix("a-1-0.zip") is None
    assert strip_suffix("a-1-0.tar.bz2") == "a-1-0"
