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


def test_suspect_filenames_include_every_refused_one() -> None:
    import random

    from reconciler.conda.names import filename_problem, suspect_filenames

    rng = random.Random(0)
    alphabet = "ab1-._+!-/\\\x00\nZ\u00e9"
    for suffix in (".conda", ".tar.bz2"):
        for _ in range(2000):
            names = {"pkg-1.0-h0_0" + suffix, "x" * 250 + "-1-0" + suffix}
            for _ in range(rng.randrange(1, 8)):
                base = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
                names.add(base + rng.choice([suffix, ".conda", ".tar.bz2", ""]))
            suspects = set(suspect_filenames(sorted(names), suffix))
            for name in names:
                if filename_problem(name) is not None or not name.endswith(suffix):
                    assert name in suspects, (name, names)
    assert suspect_filenames(["numpy-1.26.0-py311_0.conda", "a-1-0.conda"], ".conda") == []
