"""Selecting from repodata read sparsely gives what selecting from it read in full gives."""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest

from reconciler.conda.sparse import SparseRepodata
from reconciler.config.models import FilterBlock
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.mirrors import unverifiable
from reconciler.kinds.conda.select import (
    _CHECKED,
    Selection,
    UpstreamRecords,
    name_gate,
    safe_records,
    select,
)

SOURCE = "https://example.invalid/forge"
NAMES = [f"pkg{i}" for i in range(12)] + ["Mixed", "mixed"]
LICENCES = ["MIT", "GPL-3.0-only", "LGPL-2.1-or-later", "BSD-3-Clause", "GPL-2.0-or-later"]


def repodata(subdir: str, seed: int) -> dict[str, Any]:
    """A subdir with realistic records and a few broken ones of every kind."""
    rng = random.Random(seed)
    sections: dict[str, dict[str, Any]] = {"packages": {}, "packages.conda": {}}
    for i in range(300):
        name = rng.choice(NAMES)
        version = f"{rng.randrange(4)}.{rng.randrange(3)}"
        build = f"h{i:04d}_0"
        suffix = rng.choice([".conda", ".conda", ".tar.bz2"])
        record: dict[str, Any] = {
            "name": name,
            "version": version,
            "build": build,
            "build_number": rng.randrange(3),
            "depends": [f"{rng.choice(NAMES).lower()} >={rng.randrange(3)}"],
            "license": rng.choice(LICENCES),
            "sha256": f"{rng.getrandbits(256):064x}",
            "size": rng.randrange(1, 10_000),
            "subdir": subdir,
            "timestamp": 1_600_000_000_000 + i,
        }
        section = "packages.conda" if suffix == ".conda" else "packages"
        sections[section][f"{name}-{version}-{build}{suffix}"] = record
    broken = sections["packages.conda"]
    broken["pkg1-9.9-bad_0.conda"] = {"name": ["pkg1"], "version": "9.9", "build": "bad_0"}
    broken["pkg1-9.8-bad_0.conda"] = {"name": "pkg1", "version": "9.8", "subdir": "win-64"}
    broken["pkg2-9.9-nosha_0.conda"] = {"name": "pkg2", "version": "9.9", "size": 1}
    broken["pkg2-9.7-wrong_0.tar.bz2"] = {"name": "pkg2", "version": "9.7", "size": 1}
    broken["pkg3-9.9-named_0.conda"] = {
        "name": "pkg4",
        "version": "9.9",
        "sha256": "0" * 64,
        "size": 1,
    }
    broken["../pkg5-1-0.conda"] = {"name": "pkg5", "version": "1"}
    return {
        "info": {"subdir": subdir},
        **sections,
        "removed": ["pkg0-0.0-gone_0.conda"],
        "repodata_version": 1,
    }


def engines(mirror: dict[str, Any], channel: dict[str, Any]) -> tuple[FilterEngine, FilterEngine]:
    return (
        FilterEngine(FilterBlock.model_validate(channel), "channels[0].filters"),
        FilterEngine(FilterBlock.model_validate(mirror), "channels[0].mirrors[0].filters"),
    )


@pytest.fixture
def problem_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The filenames whose problems the selection works out, in order."""
    import reconciler.kinds.conda.select as select_module

    calls: list[str] = []
    real = select_module._problem

    def counted(subdir: str, section: str, suffix: str, filename: str, record: Any) -> Any:
        calls.append(filename)
        return real(subdir, section, suffix, filename, record)

    monkeypatch.setattr(select_module, "_problem", counted)
    return calls


def full_way(
    docs: dict[str, dict[str, Any]], mirror: dict[str, Any], channel: dict[str, Any]
) -> tuple[Selection, list[str]]:
    upstream: dict[str, dict[str, dict[str, Any]]] = {}
    warnings: list[str] = []
    for subdir, doc in docs.items():
        safe, refused = safe_records(subdir, doc, SOURCE)
        warnings += refused
        for filename, record in list(safe.items()):
            problem = unverifiable(record, 1 << 40)
            if problem is not None:
                del safe[filename]
                warnings.append(f"{SOURCE}/{subdir}: refusing {filename!r}: {problem}")
        upstream[subdir] = safe
    selection = select(
        upstream, *engines(mirror, channel), dependencies=bool(mirror.get("dependencies"))
    )
    return selection, warnings


def sparse_way(
    docs: dict[str, dict[str, Any]],
    mirror: dict[str, Any],
    channel: dict[str, Any],
    prefetch: bool = False,
) -> tuple[Selection, list[UpstreamRecords]]:
    """As a mirror selects; ``prefetch``: each document let go (but what the name gate
    lets in) before the selection, as when subdirs are read one after the other."""
    upstream = {}
    for subdir, doc in docs.items():
        body = orjson.dumps(doc)
        sparse = SparseRepodata(body, subdir, lambda body=body: body)  # type: ignore[misc]
        upstream[subdir] = UpstreamRecords(
            subdir, sparse, SOURCE, lambda record: unverifiable(record, 1 << 40)
        )
        if prefetch:
            upstream[subdir].prefetch(name_gate(*engines(mirror, channel)))
    selection = select(
        upstream,  # type: ignore[arg-type]
        *engines(mirror, channel),
        dependencies=bool(mirror.get("dependencies")),
    )
    for records in upstream.values():
        records.sparse.release()  # what is asked for later is read again
    return selection, list(upstream.values())


CASES = [
    (
        {"include": [{"name": "pkg1"}, {"name": "pkg2"}, {"name": "pkg3"}], "latest": 2},
        {"exclude": [{"license": "GPL"}]},
    ),
    (
        {"include": [{"name": "pkg1*"}, {"name": "Mixed"}]},
        {"exclude": [{"license": "GPL"}], "latest": 1},
    ),
    ({"include": [{"name": "pkg4"}], "dependencies": True}, {"exclude": [{"license": "GPL"}]}),
    ({"include": [{"spec": "pkg6 >=1"}]}, {}),
    ({}, {"include": [{"name": "pkg7"}], "latest": 3}),
    ({"exclude": [{"name": "pkg8"}]}, {}),
]


@pytest.mark.parametrize("prefetch", [False, True])
@pytest.mark.parametrize(("mirror", "channel"), CASES)
def test_sparse_selection_is_the_full_one(
    mirror: dict[str, Any], channel: dict[str, Any], prefetch: bool
) -> None:
    docs = {subdir: repodata(subdir, seed) for seed, subdir in enumerate(["linux-64", "noarch"])}
    expected, expected_warnings = full_way(docs, mirror, channel)
    got, upstream = sparse_way(docs, mirror, channel, prefetch)
    assert got.selected == expected.selected
    assert got.warnings == expected.warnings
    # Every decision and record, including those of names nobody read at first.
    for key, decision in expected.decisions.items():
        assert got.decisions.get(key) == decision, key
    assert got.records.get(("linux-64", "../pkg5-1-0.conda")) is None
    assert dict(got.decisions) == dict(expected.decisions)
    assert dict(got.records) == dict(expected.records)
    # Refusals of everything read (now: everything), in the order the full read gives.
    lines = [line for records in upstream for line in records.warnings()]
    assert lines == expected_warnings


def test_refusals_of_selectable_names_are_warned_about_up_front() -> None:
    docs = {"linux-64": repodata("linux-64", 3)}
    mirror = {"include": [{"name": "pkg2"}]}
    _, expected_warnings = full_way(docs, mirror, {})
    _, upstream = sparse_way(docs, mirror, {})
    lines = upstream[0].warnings()
    assert lines and set(lines) <= set(expected_warnings)
    assert all("pkg2" in line or "['pkg1']" in line or "pkg1-9.9" in line for line in lines)


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"packages": []}',
        b'{"info": null}',
        b'{"removed": [1]}',
        b'{"packages": {"a-1-0.tar.bz2": {}}',
        b"\xff",
    ],
)
def test_what_is_not_repodata_fails_as_before(body: bytes) -> None:
    from reconciler.conda.repodata import load_repodata

    with pytest.raises(ReconcileError) as before:
        load_repodata(body, "x")
    with pytest.raises(ReconcileError) as now:
        SparseRepodata(body, "x", lambda: body)
    assert now.value.message == before.value.message


@pytest.mark.parametrize("depth", [1010, 1100])
def test_deep_nesting_reads_as_a_whole_read_does(depth: int) -> None:
    """msgspec gives up (RecursionError) from about 1000 levels, orjson past 1023."""
    from reconciler.conda.repodata import load_repodata

    deep = b"[" * depth + b"]" * depth
    body = b'{"info": {"x": %s}, "packages.conda": {"a-1-0.conda": {"name": "a"}}}' % deep
    try:
        expected: Any = load_repodata(body, "x")["info"]
    except ReconcileError as exc:
        expected = exc.message
    try:
        found: Any = SparseRepodata(body, "x", lambda: body).info
    except ReconcileError as exc:
        found = exc.message
    if isinstance(expected, str):
        assert found == expected
        return

    def levels(value: Any) -> int:  # (== on them would recurse too deep)
        count = 0
        while isinstance(value, list):
            value, count = (value[0] if value else None), count + 1
        return count

    assert list(found) == ["x"] and levels(found["x"]) == levels(expected["x"]) == depth


@pytest.mark.parametrize("value", [b"3", b"null", b'"a"', b"[1]"])
def test_a_record_that_is_not_an_object_is_refused_when_read(value: bytes) -> None:
    body = b'{"packages.conda": {"a-1-0.conda": %s, "b-1-0.conda": {"name": "b"}}}' % value
    sparse = SparseRepodata(body, "x", lambda: body)
    records = UpstreamRecords("linux-64", sparse, SOURCE)
    assert records.named(lambda name: True) == {"a": ["a-1-0.conda"], "b": ["b-1-0.conda"]}
    assert records.get("a-1-0.conda") is None
    (line,) = records.warnings()
    assert line.startswith(f"{SOURCE}/linux-64: refusing 'a-1-0.conda': the record is ")
    assert line.endswith(", not a JSON object")


@pytest.mark.parametrize("inside", [b'"\xff"', b"1e999"])
def test_a_record_that_is_not_valid_json_inside_is_refused_when_read(inside: bytes) -> None:
    """msgspec's scan does not look inside records: one that is not JSON is refused alone."""
    body = b'{"packages.conda": {"a-1-0.conda": {"name": "a", "x": %s}, "b-1-0.conda": {}}}'
    body %= inside
    sparse = SparseRepodata(body, "x", lambda: body)
    records = UpstreamRecords("linux-64", sparse, SOURCE)
    assert records.get("a-1-0.conda") is None
    assert records.get("b-1-0.conda") is None  # not valid repodata, but readable
    lines = records.warnings()
    assert lines[0].startswith(
        f"{SOURCE}/linux-64: refusing 'a-1-0.conda': the record is not valid JSON ("
    )
    assert not lines[1].startswith(f"{SOURCE}/linux-64: refusing 'b-1-0.conda': the record is not")


def test_a_record_whose_name_is_not_its_filenames_is_refused() -> None:
    """Records are found by their filename's name, as rattler's sparse reader finds them:
    one that says it is another package is refused, whichever way it is read."""
    doc = {
        "packages.conda": {
            "numpy-1.0-0.conda": {"name": "evil", "version": "1.0", "build": "0"},
            "Mixed-1.0-0.conda": {"name": "mixed", "version": "1.0", "build": "0"},
            "ok-1.0-0.conda": {"name": "ok", "version": "1.0", "build": "0"},
        }
    }
    _, refused = safe_records("linux-64", doc, SOURCE)
    body = orjson.dumps(doc)
    records = UpstreamRecords("linux-64", SparseRepodata(body, "x", lambda: body), SOURCE)
    assert [f for f in records] == ["ok-1.0-0.conda"]
    assert records.warnings() == refused
    assert refused == [
        f"{SOURCE}/linux-64: refusing 'numpy-1.0-0.conda': the record's name 'evil' is not "
        "its filename's",
        f"{SOURCE}/linux-64: refusing 'Mixed-1.0-0.conda': the record's name 'mixed' is not "
        "its filename's",
    ]


def test_names_are_the_filenames_names() -> None:
    from reconciler.conda.names import filename_name

    filenames = ["python-dateutil-2.9.0-pyhd8ed1ab_0.conda", "a-1-0.tar.bz2", "_x-1.0-h1_0.conda"]
    body = orjson.dumps({"packages.conda": {f: {} for f in filenames}})
    sparse = SparseRepodata(body, "x", lambda: body)
    assert sparse.names(1) == {f: filename_name(f) for f in filenames}
    assert list(sparse.names(1).values()) == ["python-dateutil", "a", "_x"]


def test_a_prefetch_of_every_name_keeps_the_bytes_and_parses_nothing(
    problem_calls: list[str],
) -> None:
    # The document goes; every record stays as its bytes, read when the selection asks.
    body = orjson.dumps(repodata("linux-64", 5))
    loads: list[int] = []

    def load() -> bytes:
        loads.append(1)
        return body

    def check(record: dict[str, Any]) -> str | None:
        return unverifiable(record, 1 << 40)

    whole = dict(UpstreamRecords("linux-64", SparseRepodata(body, "x", load), SOURCE, check))
    problem_calls.clear()  # (reading it whole checked every record)
    sparse = SparseRepodata(body, "linux-64", load)
    every = name_gate(*engines({}, {}))
    assert not every.selective
    UpstreamRecords("linux-64", sparse, SOURCE).prefetch(every)
    assert problem_calls == []  # nothing parsed
    second = UpstreamRecords("linux-64", sparse, SOURCE, check)
    assert dict(second) == whole
    assert _CHECKED not in {key[0] for key in sparse.memo if isinstance(key, tuple)}  # no memo
    assert second.get("pkg2-9.9-nosha_0.conda") is None
    assert loads == []  # all from the kept bytes


def test_a_selection_lets_go_of_the_records_it_leaves_out() -> None:
    # A mirror of every name keeps most records out: their decisions stay, their parsed
    # records go, and each is read again (the same) when asked for.
    docs = {"linux-64": repodata("linux-64", 6)}
    mirror, channel = {"latest": 1}, {"exclude": [{"license": "GPL"}]}
    expected, _ = full_way(docs, mirror, channel)
    got, (upstream,) = sparse_way(docs, mirror, channel, prefetch=True)
    assert got.selected == expected.selected
    held = {f for f, record in upstream._found.items() if record is not None}
    assert held == {f for _, f in got.selected}
    refused = {f for f, record in upstream._found.items() if record is None}
    assert 3 < len(refused) < 10
    assert {f for _, f in upstream.sparse._parsed} == held  # the refused ones too: only why
    left_out = [k for k, d in expected.decisions.items() if not d.selected]
    assert len(left_out) > 100
    assert all(got.decisions[k] == expected.decisions[k] for k in left_out)
    assert {k: got.records[k] for k in left_out} == {k: expected.records[k] for k in left_out}


def test_a_second_reader_of_a_document_checks_nothing_again(problem_calls: list[str]) -> None:
    # A prefetch reads what the selection will read; the selection's own reader then
    # takes each record's problem from the document instead of working it out again,
    # and warns about exactly what the first reader would.
    docs = {"linux-64": repodata("linux-64", 5)}
    body = orjson.dumps(docs["linux-64"])
    sparse = SparseRepodata(body, "linux-64", lambda: body)
    first = UpstreamRecords("linux-64", sparse, SOURCE)
    first.prefetch(lambda name: True)  # a gate that names what it lets in
    firsts = {filename: first.get(filename) for filename in sparse.names(1)}
    checked = len(problem_calls)
    assert checked >= len(firsts) > 300 // 2
    second = UpstreamRecords("linux-64", sparse, SOURCE)
    seconds = {filename: second.get(filename) for filename in sparse.names(1)}
    assert len(problem_calls) == checked  # nothing checked twice
    assert seconds == firsts
    assert second.warnings() == first.warnings()
    assert any("refusing '../pkg5-1-0.conda'" in line for line in second.warnings())
    # Another subdir's reader of the same bytes checks for itself (where it is listed counts).
    UpstreamRecords("noarch", sparse, SOURCE).get("pkg1-9.8-bad_0.conda")
    assert len(problem_calls) == checked + 1


def test_a_selection_with_an_include_list_keeps_what_it_read() -> None:
    # It read few records: one left out is not parsed again (nor the document read again).
    docs = {"linux-64": repodata("linux-64", 6)}
    mirror = {"include": [{"name": "pkg1"}], "latest": 1}
    got, (upstream,) = sparse_way(docs, mirror, {}, prefetch=True)
    decisions = got.decisions.items()
    left_out = {f for (_, f), d in decisions if not d.selected and f.startswith("pkg1-")}
    read = {f for f, record in upstream._found.items() if record is not None}
    assert len(left_out & read) > 5
