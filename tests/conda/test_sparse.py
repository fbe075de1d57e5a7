"""Repodata read sparsely: a section's filenames and the names they give."""

from __future__ import annotations

import random

import orjson
import pytest

from reconciler.conda.names import filename_name
from reconciler.conda.sparse import Listing, SparseRepodata

# Names that share prefixes with each other ("foo" and "foo-bar"), odd but legal shapes.
NAMES = ["foo", "foo-bar", "foo-bar-baz", "foo_x", "foo.x", "fo", "a", "zz-top", "x-1"]


def filenames(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    versions, builds = ["1.0", "a1", "2!3", "0"], ["h1_0", "py_0"]
    found = {
        f"{rng.choice(NAMES)}-{rng.choice(versions)}-{rng.choice(builds)}{rng.randrange(99)}.conda"
        for _ in range(count)
    }
    found.add("nodash.conda")  # no version or build: the whole filename is its name
    found.update(["x-1", "foo-bar"])  # equal to a name, but giving another ("x", "foo")
    return list(found)


def slow_way(files: list[str], wanted: set[str]) -> list[tuple[str, str]]:
    return [(f, filename_name(f)) for f in files if filename_name(f) in wanted]


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
@pytest.mark.parametrize("seed", range(20))
def test_of_names_is_every_filename_of_those_names_in_document_order(order: str, seed: int) -> None:
    files = filenames(seed, 400)
    if order == "sorted":
        files.sort()
    else:
        random.Random(seed).shuffle(files)
    listing = Listing(files)
    rng = random.Random(seed + 100)
    for size in (1, 2, 3, len(NAMES)):
        wanted = set(rng.sample([*NAMES, "nodash.conda", "absent"], size))
        assert list(listing.of_names(wanted)) == slow_way(files, wanted), wanted


def test_membership_bisects_a_few_lookups_then_makes_a_set_for_many() -> None:
    files = sorted(f"pkg{i:05d}-1.0-h0_0.conda" for i in range(400))
    listing = Listing(files)
    asked = [*files[::7], "pkg00001-9-x.conda", "absent", 12]
    for filename in asked[:50]:
        assert (filename in listing) == (filename in files)
    assert listing._member is None  # a few: bisection, no set of every filename
    for _ in range(3):
        for filename in asked:
            assert (filename in listing) == (filename in files)
    assert isinstance(listing._member, set)  # many: one set, then lookups in it


def test_a_few_names_of_a_big_sorted_section_are_found_by_bisection() -> None:
    files = sorted(f"pkg{i:05d}-1.0-h{j}_0.conda" for i in range(2000) for j in range(3))
    listing = Listing(files)
    wanted = {"pkg00007", "pkg01999", "pkg"}

    class Counting(list[str]):
        looked = 0

        def __iter__(self):  # type: ignore[no-untyped-def]
            Counting.looked += 1
            return super().__iter__()

    listing.names = Counting(listing.names)
    found = list(listing.of_names(wanted))
    assert [f for f, _ in found] == [
        "pkg00007-1.0-h0_0.conda",
        "pkg00007-1.0-h1_0.conda",
        "pkg00007-1.0-h2_0.conda",
        "pkg01999-1.0-h0_0.conda",
        "pkg01999-1.0-h1_0.conda",
        "pkg01999-1.0-h2_0.conda",
    ]
    assert Counting.looked == 0  # no pass over every name


@pytest.mark.parametrize("in_order", [True, False])
def test_a_listing_answers_lookups_after_its_document_is_let_go(in_order: bool) -> None:
    conda_records = {
        "zlib-1.3-h0_0.conda": {"name": "zlib", "version": "1.3", "build": "h0_0"},
        "python-dateutil-2.9.0-py_0.conda": {
            "name": "python-dateutil",
            "version": "2.9.0",
            "build": "py_0",
        },
        "a-1-0.conda": {"name": "a", "version": "1", "build": "0"},
    }
    order = sorted(conda_records, reverse=not in_order)
    document = {
        "packages": {"old-1-0.tar.bz2": {"name": "old", "version": "1", "build": "0"}},
        "packages.conda": {f: conda_records[f] for f in order},
    }
    body = orjson.dumps(document)
    sparse = SparseRepodata(body, "test", lambda: body)
    sparse.release()
    conda = sparse.names(1)
    assert conda.is_sorted is in_order
    assert "zlib-1.3-h0_0.conda" in conda and "a-1-0.conda" in conda
    assert "old-1-0.tar.bz2" not in conda and "b-1-0.conda" not in conda
    assert "zzz-1-0.conda" not in conda and "" not in conda
    assert conda["python-dateutil-2.9.0-py_0.conda"] == "python-dateutil"
    with pytest.raises(KeyError):
        conda["absent-1-0.conda"]
    assert list(conda) == order
    assert sparse.listed("old-1-0.tar.bz2") and not sparse.listed("zlib-1.3-h0_0.tar.bz2")
    assert sparse.record(1, "zlib-1.3-h0_0.conda")["name"] == "zlib"  # read again


def test_a_release_that_keeps_names_keeps_their_records_bytes_and_forget_drops_parsed() -> None:
    document = {
        "packages": {"foo-1-0.tar.bz2": {"name": "foo", "version": "1"}},
        "packages.conda": {
            "foo-2-0.conda": {"name": "foo", "version": "2"},
            "foo-bar-1-0.conda": {"name": "foo-bar", "version": "1"},
            "zz-top-1-0.conda": {"name": "zz-top", "version": "1"},
        },
    }
    body = orjson.dumps(document)
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return body

    sparse = SparseRepodata(body, "test", load)
    sparse.release(keep=lambda name: name == "foo")
    assert sparse.record(0, "foo-1-0.tar.bz2") == document["packages"]["foo-1-0.tar.bz2"]
    first = sparse.record(1, "foo-2-0.conda")
    assert first == {"name": "foo", "version": "2"}
    assert loads == []  # kept as bytes: "foo-bar" is another name, not kept
    assert sparse.record(1, "foo-2-0.conda") is first  # parsed once...
    sparse.forget("foo-2-0.conda")
    again = sparse.record(1, "foo-2-0.conda")
    assert again == first and again is not first  # ...and again after it was let go
    assert loads == []
    kept = sparse._kept
    assert kept is not None and all(type(b) is bytes for each in kept for b in each.values())
    assert sparse.record(1, "foo-bar-1-0.conda")["name"] == "foo-bar"
    assert loads == [1]  # the document read again
    sparse.release(keep=lambda name: name == "foo-bar")  # from the document read again
    sparse.forget("foo-bar-1-0.conda")
    assert sparse.record(1, "foo-bar-1-0.conda")["name"] == "foo-bar"
    assert loads == [1]
    sparse.release()
    sparse.forget("foo-2-0.conda")
    assert sparse.record(1, "foo-2-0.conda") == first
    assert loads == [1, 1]  # kept nothing: read once more
