"""Upstream repodata and repodata patches on hostile input.

Repodata: a realistic document, mutated (keys deleted, types changed, NaN, huge
integers, odd unicode, truncated bytes), goes through what a mirror does with it:
``load_repodata``, ``safe_records``, ``select`` with filters and dependencies, and
patching. It either loads or fails with an error naming its source; once loaded,
nothing downstream raises.

Patches: instructions are validated, then applied without raising and without
touching their input; patch files (JSON and patch packages) load or fail naming
the file, and what they load can be written as repodata.
"""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import assume, event, given
from hypothesis import strategies as st

from reconciler import cli
from reconciler.conda.channeldata import build_channeldata
from reconciler.conda.current_repodata import build_current_repodata
from reconciler.conda.index_html import render_subdir_html
from reconciler.conda.patches import (
    PatchError,
    apply_instructions,
    apply_patch_sources,
    load_patch_source,
    validate_instructions,
)
from reconciler.conda.repodata import build_repodata, load_repodata, serialize_json
from reconciler.conda.shards import build_shards
from reconciler.config.models import FilterBlock
from reconciler.errors import ExitCode, ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.indexer import metadata_from_record
from reconciler.kinds.conda.select import safe_records, select
from tests.fuzz.common import budget, byte_mutations, json_like, mutate_bytes, utc
from tests.packages import PackageSpec, build_package

SOURCE = "https://up.example/conda-forge/linux-64/repodata.json"


def _record(
    name: str, version: str, number: int, depends: list[str], **extra: Any
) -> dict[str, Any]:
    return {
        "build": f"py311h{number:07x}_{number}",
        "build_number": number,
        "constrains": ["pyarrow >=10"] if name == "pandas" else [],
        "depends": depends,
        "license": "BSD-3-Clause",
        "license_family": "BSD",
        "md5": f"{number:032x}",
        "name": name,
        "sha256": f"{number:064x}",
        "size": 1000 + number,
        "subdir": "linux-64",
        "timestamp": 1_700_000_000_000 + number * 86_400_000,
        "version": version,
        **extra,
    }


def realistic_repodata() -> dict[str, Any]:
    """A small linux-64 repodata shaped like conda-forge's."""
    specs = [
        ("python", "3.11.8", 1, ["libzlib >=1.2.13", "openssl >=3.2"]),
        ("python", "3.12.2", 2, ["libzlib >=1.2.13", "openssl >=3.2"]),
        ("numpy", "1.26.4", 3, ["python >=3.11,<3.12.0a0", "libblas >=3.9"]),
        ("numpy", "2.0.0rc1", 4, ["python >=3.12,<3.13.0a0", "libblas >=3.9"]),
        ("pandas", "2.2.1", 5, ["numpy >=1.26", "python-dateutil >=2.8.2", "tzdata"]),
        ("libblas", "3.9.0", 6, []),
        ("libzlib", "1.2.13", 7, []),
        ("openssl", "3.2.1", 8, ["ca-certificates"]),
    ]
    packages: dict[str, Any] = {}
    conda: dict[str, Any] = {}
    for name, version, number, depends in specs:
        record = _record(name, version, number, depends)
        stem = f"{name}-{version}-{record['build']}"
        conda[f"{stem}.conda"] = record
        if number % 2:
            packages[f"{stem}.tar.bz2"] = dict(record, size=record["size"] * 2)
    packages["gpl-thing-1.0-0.tar.bz2"] = _record(
        "gpl-thing", "1.0", 9, [], license="GPL-3.0-only", license_family="GPL3", build="0"
    )
    return {
        "info": {"subdir": "linux-64"},
        "packages": packages,
        "packages.conda": conda,
        "removed": ["old-0.1-0.tar.bz2"],
        "repodata_version": 1,
    }


REALISTIC = realistic_repodata()

# Values that upset readers: NaN, infinities, integers beyond 64 bits, odd strings.
odd_values = st.one_of(
    json_like,
    st.sampled_from([2**64 - 1, 2**63 - 1, 10**15, -(10**15), 1e30, -1e30, 1e-30, 0.5]),
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            2**64,
            2**63,
            -(2**63) - 1,
            10**30,
            -1,
            0,
            1e300,
            "",
            "\x00",
            "\u202e",
            "../../etc/passwd",
            "a/b-1.0-0.conda",
            "x" * 1000,
            [],
            {},
            [None],
            [1, "a"],
            {"a": {"b": {}}},
        ]
    ).map(copy.deepcopy),
)
TREE_OPS = ("delete", "replace", "wrap", "stringify", "insert", "rename")
tree_mutations = st.lists(
    st.tuples(
        st.lists(st.integers(0, 50), min_size=0, max_size=4),
        st.sampled_from(TREE_OPS),
        odd_values,
        st.text(max_size=8),
    ),
    min_size=1,
    max_size=5,
)


RECORD_FIELDS = sorted(REALISTIC["packages.conda"]["numpy-1.26.4-py311h0000003_3.conda"])
# Field changes on records: where a reader meets a type it did not expect.
record_mutations = st.lists(
    st.tuples(
        st.sampled_from(["packages", "packages.conda"]),
        st.integers(0, 50),
        st.one_of(*[st.sampled_from(RECORD_FIELDS)] * 4, st.text(max_size=6)),
        st.one_of(odd_values, odd_values, st.none()),
    ),
    min_size=1,
    max_size=6,
)


def mutate_records(data: Any, mutations: list[tuple[str, int, str, Any]]) -> Any:
    """A deep copy of ``data`` with record fields set (None: deleted)."""
    data = copy.deepcopy(data)
    for section, index, field, value in mutations:
        records = data[section]
        record = records[sorted(records)[index % len(records)]]
        if value is None:
            record.pop(field, None)
        else:
            record[field] = copy.deepcopy(value)
    return data


def mutate_tree(data: Any, mutations: list[tuple[list[int], str, Any, str]]) -> Any:
    """A deep copy of ``data`` with each mutation applied at the path its indexes pick."""
    data = copy.deepcopy(data)
    for steps, op, drawn, new_key in mutations:
        value = copy.deepcopy(drawn)  # a value used twice must not make a cycle
        parent: Any = None
        key: Any = None
        node = data
        for step in steps:
            if isinstance(node, dict) and node:
                key = sorted(node, key=str)[step % len(node)]
            elif isinstance(node, list) and node:
                key = step % len(node)
            else:
                break
            parent, node = node, node[key]
        if parent is None:
            if op == "replace":
                data = value
            elif op == "insert" and isinstance(data, dict):
                data[new_key] = value
            continue
        if op == "delete":
            del parent[key]
        elif op == "replace":
            parent[key] = value
        elif op == "wrap":
            parent[key] = [node]
        elif op == "stringify":
            parent[key] = str(node)
        elif op == "insert" and isinstance(node, dict):
            node[new_key] = value
        elif op == "rename" and isinstance(parent, dict):
            parent[new_key] = parent.pop(key)
    return data


def encode(data: Any, ascii_only: bool) -> bytes:
    """JSON as a careless server writes it: NaN, Infinity and big integers included."""
    return json.dumps(data, allow_nan=True, ensure_ascii=ascii_only, default=str).encode(
        "utf-8", "surrogatepass"
    )


def _engine(block: dict[str, Any], where: str) -> FilterEngine:
    return FilterEngine(FilterBlock.model_validate(block), where)


CHANNEL_BLOCK = _engine({"exclude": [{"license": "GPL", "except": [{"name": "lib*"}]}]}, "c")
MIRROR_BLOCKS = [
    _engine({}, "m"),
    _engine({"include": [{"spec": "pandas >=2"}, {"name": "python"}], "latest": 1}, "m"),
    _engine({"date": {"after": utc(2023, 11, 20), "before": utc(2024, 1, 1)}, "latest": 2}, "m"),
    _engine(
        {"include": [{"version": ">=1.26"}, {"build": "py311*"}], "exclude": [{"name": "x"}]}, "m"
    ),
]


def mirror_pipeline(repodata: dict[str, Any]) -> None:
    """What a mirror does with an upstream subdir once it has loaded: must not raise."""
    snapshot = pickle.dumps(repodata)
    records, refused = safe_records("linux-64", repodata, SOURCE)
    assert all("/" not in name and name.endswith((".conda", ".tar.bz2")) for name in records)
    assert all(reason.startswith(SOURCE) for reason in refused)
    upstream = {"linux-64": records, "noarch": {}}
    for mirror in MIRROR_BLOCKS:
        for dependencies in (False, True):
            selection = select(upstream, CHANNEL_BLOCK, mirror, dependencies=dependencies)
            assert set(selection.selected) <= {("linux-64", name) for name in records}
    assert pickle.dumps(repodata) == snapshot, "the upstream repodata was changed in place"
    write_index(records)


def write_index(records: dict[str, dict[str, Any]]) -> None:
    """Every index file the channel writes from mirrored records (as index_channel does)."""
    repodata = build_repodata("linux-64", records)
    patched = apply_instructions(repodata, INSTRUCTIONS)
    validate_shape(patched)
    serialize_json(patched)
    serialize_json(build_current_repodata("linux-64", patched, {"python": ["3.11"]}))
    build_shards(patched)
    render_subdir_html("mirror", "linux-64", patched, None)
    metadata = {name: metadata_from_record(name, record) for name, record in records.items()}
    serialize_json(build_channeldata({"linux-64": metadata}))


INSTRUCTIONS: dict[str, Any] = {
    "patch_instructions_version": 1,
    "packages": {
        "python-3.11.8-py311h0000001_1.tar.bz2": {"depends": ["libzlib >=1.3"], "license": None},
        "numpy-1.26.4-py311h0000003_3.tar.bz2": {"constrains": ["numpy-base <0a0"]},
    },
    "packages.conda": {"pandas-2.2.1-py311h0000005_5.conda": {"extra": {"nested": True}}},
    "revoke": ["openssl-3.2.1-py311h0000008_8.conda", "numpy-1.26.4-py311h0000003_3.tar.bz2"],
    "remove": ["libblas-3.9.0-py311h0000006_6.conda", "gpl-thing-1.0-0.tar.bz2"],
}


def validate_shape(repodata: dict[str, Any]) -> None:
    assert isinstance(repodata["packages"], dict) and isinstance(repodata["packages.conda"], dict)
    assert isinstance(repodata["removed"], list)


def test_realistic_repodata_goes_through() -> None:
    # The baseline: the unmutated document loads, and every record survives safe_records.
    loaded = load_repodata(encode(REALISTIC, True), SOURCE)
    records, refused = safe_records("linux-64", loaded, SOURCE)
    assert not refused and len(records) == 13
    mirror_pipeline(loaded)


def check_repodata_bytes(data: bytes) -> None:
    try:
        repodata = load_repodata(data, SOURCE)
    except ReconcileError as exc:
        assert exc.message.startswith(f"{SOURCE}: "), exc.message
        return
    validate_shape(repodata)
    mirror_pipeline(repodata)


@budget(300)
@given(mutations=tree_mutations, ascii_only=st.booleans())
def test_mutated_repodata(
    mutations: list[tuple[list[int], str, Any, str]], ascii_only: bool
) -> None:
    check_repodata_bytes(encode(mutate_tree(REALISTIC, mutations), ascii_only))


@budget(300)
@given(mutations=record_mutations, ascii_only=st.booleans())
def test_mutated_records(mutations: list[tuple[str, int, str, Any]], ascii_only: bool) -> None:
    check_repodata_bytes(encode(mutate_records(REALISTIC, mutations), ascii_only))


@budget(200)
@given(mutations=byte_mutations)
def test_repodata_byte_mutations(mutations: list[tuple[str, int, int]]) -> None:
    check_repodata_bytes(mutate_bytes(encode(REALISTIC, False), mutations))


@budget(100)
@given(cut=st.integers(0, len(encode(REALISTIC, True))))
def test_truncated_repodata(cut: int) -> None:
    check_repodata_bytes(encode(REALISTIC, True)[:cut])


# -- patch instructions --------------------------------------------------------------

FILENAMES = sorted({*REALISTIC["packages"], *REALISTIC["packages.conda"], "zz-1-0.conda", "x"})
changes = st.dictionaries(
    st.one_of(
        st.sampled_from(["depends", "license", "build_number", "timestamp"]), st.text(max_size=6)
    ),
    odd_values,
    max_size=3,
)
instructions = st.fixed_dictionaries(
    {},
    optional={
        "patch_instructions_version": st.one_of(st.just(1), odd_values),
        "packages": st.one_of(
            st.dictionaries(st.sampled_from(FILENAMES), changes, max_size=3), odd_values
        ),
        "packages.conda": st.one_of(
            st.dictionaries(st.sampled_from(FILENAMES), changes, max_size=3), odd_values
        ),
        "revoke": st.one_of(st.lists(st.sampled_from(FILENAMES), max_size=3), odd_values),
        "remove": st.one_of(st.lists(st.sampled_from(FILENAMES), max_size=3), odd_values),
        "unknown": odd_values,
    },
)
# What a Python patch may hand back: keys JSON cannot hold.
python_instructions = st.one_of(
    instructions,
    st.dictionaries(
        st.sampled_from(["packages", "packages.conda", "revoke", "remove"]),
        st.one_of(
            st.dictionaries(
                st.one_of(st.integers(), st.none(), st.sampled_from(FILENAMES)), changes
            ),
            st.lists(st.one_of(st.integers(), st.sampled_from(FILENAMES))),
        ),
        max_size=2,
    ),
)


@budget(300)
@given(
    data=python_instructions,
    mutations=st.one_of(st.just([]), tree_mutations),
    strict=st.booleans(),
)
def test_validated_instructions_apply_cleanly(
    data: dict[str, Any], mutations: list[tuple[list[int], str, Any, str]], strict: bool
) -> None:
    try:
        validate_instructions(data, "patches/fix.json", strict=strict)
    except PatchError as exc:
        assert exc.message.startswith("patches/fix.json: "), exc.message
        return
    # Applied to upstream repodata as loaded (records are mappings, nothing else promised).
    try:
        repodata = load_repodata(encode(mutate_tree(REALISTIC, mutations), True), SOURCE)
    except ReconcileError:
        repodata = copy.deepcopy(REALISTIC)
    before_repodata, before_instructions = pickle.dumps(repodata), pickle.dumps(data)
    result = apply_instructions(repodata, data)
    assert pickle.dumps(repodata) == before_repodata, "apply_instructions changed its input"
    assert pickle.dumps(data) == before_instructions, "apply_instructions changed the instructions"
    validate_shape(result)
    assert set(result["packages"]) <= set(repodata["packages"])
    assert set(result["packages.conda"]) <= set(repodata["packages.conda"])
    for name in data.get("remove") or ():
        assert name not in result["packages"] and name not in result["packages.conda"]


def write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def check_patch_file(path: Path) -> None:
    """Loads or fails naming the file; what loads, the index can apply and write."""
    try:
        source = load_patch_source(path)
    except PatchError as exc:
        assert str(path) in exc.message, exc.message
        return
    patched = apply_patch_sources(copy.deepcopy(REALISTIC), "linux-64", [source])
    serialize_json(patched)


@budget(200)
@given(data=instructions, per_subdir=st.booleans(), ascii_only=st.booleans())
def test_json_patch_files(
    tmp_path: Path, data: dict[str, Any], per_subdir: bool, ascii_only: bool
) -> None:
    document = {"linux-64": data, "noarch": {}} if per_subdir else data
    check_patch_file(
        write_bytes(tmp_path / "patch_instructions.json", encode(document, ascii_only))
    )


@budget(150)
@given(mutations=byte_mutations)
def test_json_patch_byte_mutations(tmp_path: Path, mutations: list[tuple[str, int, int]]) -> None:
    data = mutate_bytes(encode({"linux-64": INSTRUCTIONS}, True), mutations)
    check_patch_file(write_bytes(tmp_path / "patch_instructions.json", data))


@pytest.fixture(scope="module")
def patch_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Real patch packages, as conda-forge's repodata-patches package is built."""
    root = tmp_path_factory.mktemp("patch-packages")
    files = {
        "linux-64/patch_instructions.json": json.dumps(INSTRUCTIONS).encode(),
        "noarch/patch_instructions.json": b'{"patch_instructions_version": 1}',
    }
    built = {}
    for fmt in (".conda", ".tar.bz2"):
        spec = PackageSpec("repodata-patches", "20240101", subdir="noarch", files=files)
        built[fmt] = build_package(root, spec, fmt).read_bytes()
    return built


@budget(60)
@given(fmt=st.sampled_from([".conda", ".tar.bz2"]), mutations=byte_mutations)
def test_patch_package_mutations(
    tmp_path: Path,
    patch_packages: dict[str, bytes],
    fmt: str,
    mutations: list[tuple[str, int, int]],
) -> None:
    data = mutate_bytes(patch_packages[fmt], mutations)
    assume(data != patch_packages[fmt])
    check_patch_file(write_bytes(tmp_path / f"repodata-patches-20240101-0{fmt}", data))


def test_unmutated_patch_packages_load(tmp_path: Path, patch_packages: dict[str, bytes]) -> None:
    for fmt, data in patch_packages.items():
        source = load_patch_source(
            write_bytes(tmp_path / f"repodata-patches-20240101-0{fmt}", data)
        )
        assert source.instructions({}, "linux-64") == INSTRUCTIONS


def test_loaded_json_round_trips() -> None:
    # orjson writes what load_repodata read: the shape survives serialisation.
    loaded = load_repodata(encode(REALISTIC, True), SOURCE)
    assert orjson.loads(serialize_json(loaded)) == loaded


# -- a passive mirror of a mutated upstream, end to end ------------------------------

MIRROR_CONFIG = """\
version: 1
channels:
  - name: mirror
    path: ./chan
    subdirs: [linux-64, noarch]
    index: {shards: true, bz2: true, current_index_versions: {python: ["3.11"]}}
    patches: [fix.json]
    filters:
      exclude: [{license: GPL, except: [{name: "lib*"}]}]
    mirrors:
      - name: up
        source: ./upstream
        mode: passive
        filters:
          date: {after: 2023-11-01}
          latest: 2
          dependencies: true
"""


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    _, err = capsys.readouterr()
    return code, err


@budget(25)
@given(
    mutated=st.one_of(
        record_mutations.map(lambda m: encode(mutate_records(REALISTIC, m), True)),
        tree_mutations.map(lambda m: encode(mutate_tree(REALISTIC, m), True)),
    )
)
def test_passive_mirror_of_mutated_upstream(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], mutated: bytes
) -> None:
    root = tmp_path_factory.mktemp("mirror")
    for subdir, data in (("linux-64", mutated), ("noarch", b'{"packages": {}}')):
        (root / "upstream" / subdir).mkdir(parents=True)
        (root / "upstream" / subdir / "repodata.json").write_bytes(data)
    (root / "fix.json").write_text(json.dumps({"linux-64": INSTRUCTIONS}))
    config = root / "channels.yaml"
    config.write_text(MIRROR_CONFIG)
    code, err = run_cli(capsys, "apply", "-c", str(config), "--run-now")
    event(f"apply exit code {code}")
    assert code in (ExitCode.OK, ExitCode.ERROR), err
    if code == ExitCode.ERROR:
        assert "repodata.json" in err, err  # the error names the upstream file
        return
    published = json.loads((root / "chan" / "linux-64" / "repodata.json").read_bytes())
    names = {*published["packages"], *published["packages.conda"]}
    assert all("/" not in name and name.endswith((".conda", ".tar.bz2")) for name in names)
    code, err = run_cli(capsys, "plan", "-c", str(config), "--run-now", "--detailed-exitcode")
    assert code == ExitCode.OK, err  # apply converged
