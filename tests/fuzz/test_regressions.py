"""The smallest inputs on which the fuzz tests found a crash or a wrong answer.

Each failed before its fix with an unexpected exception (exit code 3 from the command
line) or a wrong result; each now gives a clear error naming the file, key or package.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reconciler import cli
from reconciler.conda import archive
from reconciler.conda.archive import read_package
from reconciler.conda.index_html import render_subdir_html
from reconciler.conda.names import filename_problem
from reconciler.conda.patches import (
    PatchError,
    apply_instructions,
    load_patch_source,
    validate_instructions,
)
from reconciler.conda.repodata import load_repodata
from reconciler.config.checks import shortest_interval
from reconciler.config.models import ConfigErrors, FilterBlock, load_config
from reconciler.config.yaml_source import YamlSyntaxError, load_yaml
from reconciler.errors import ConfigError, ExitCode, PackageError, ReconcileError
from reconciler.filters import Candidate, FilterEngine
from reconciler.kinds.conda.select import safe_records, select
from reconciler.kinds.pypi.names import is_safe_filename
from tests.packages import PackageSpec, write_conda, write_tar_bz2

WriteConfig = Callable[..., Path]


def config_errors(path: Path) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path)
    return [d.format() for d in info.value.errors]


# -- configuration -------------------------------------------------------------------

CHANNEL = """\
version: 1
channels:
  - name: c
    path: {path}
"""


def test_a_key_holding_a_newline_stays_on_one_line(write_config: WriteConfig) -> None:
    path = write_config('version: 1\nchannels: [{name: c, path: c}]\n"x\\ny": 1\n')
    (line,) = config_errors(path)
    assert line.startswith(f"{path}:3: x\\ny: unknown key 'x\\ny'")
    assert "\n" not in line


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"a\\0b"', "contains a NUL character"),
        ('"\\ud800"', "is not valid text"),
        ("~nosuchuser-for-tests/c", "cannot expand '~nosuchuser-for-tests'"),
        ("a" * 300, "has a name longer than 255 bytes"),
    ],
    ids=["nul", "surrogate", "unknown-user", "long-name"],
)
def test_unusable_channel_paths_are_errors(
    write_config: WriteConfig, value: str, message: str
) -> None:
    path = write_config(CHANNEL.format(path=value))
    (line,) = config_errors(path)
    assert line.startswith(f"{path}:4: channels[0].path: ") and message in line, line


def test_unusable_patch_and_source_paths_are_errors(write_config: WriteConfig) -> None:
    path = write_config(
        CHANNEL.format(path="c")
        + '    patches: ["p\\0.json"]\n'
        + "    mirrors:\n"
        + '      - {name: m, source: "./'
        + "s" * 300
        + '"}\n'
    )
    lines = config_errors(path)
    assert any(x.startswith(f"{path}:5: channels[0].patches[0]: ") and "NUL" in x for x in lines)
    assert any(x.startswith(f"{path}:7: channels[0].mirrors[0].source: ") for x in lines)


def test_a_list_in_subdirs_beside_a_mirror(write_config: WriteConfig) -> None:
    path = write_config(
        CHANNEL.format(path="c") + "    subdirs: [[1]]\n    mirrors: [{name: m, source: ./u}]\n"
    )
    lines = config_errors(path)
    assert any(x.startswith(f"{path}:5: channels[0].subdirs[0]: ") for x in lines), lines


def test_a_schedule_that_never_fires(write_config: WriteConfig) -> None:
    path = write_config(
        CHANNEL.format(path="c") + "    mirrors: [{name: m, source: ./u, schedule: '0 0 31 2 *'}]\n"
    )
    (line,) = config_errors(path)
    assert "channels[0].mirrors[0].schedule: cron expression '0 0 31 2 *' never fires" in line
    assert shortest_interval("0 0 31 2 *") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a: &a [*a]\n", "an alias refers to its own anchor"),
        ("a: &a {x: *a}\n", "an alias refers to its own anchor"),
        ("a: &a {<<: *a}\n", "a merge (<<) refers to the mapping holding it"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("a: " + "[" * 100 + "]" * 100 + "\n", "nested more than 64 levels deep"),
        ("a: 2023-02-30\n", "'2023-02-30' is not a valid timestamp (day is out of range"),
        ("a: 2001-12-14 21:59:43.10 +99:99\n", "is not a valid timestamp"),
        ("a: !!int x\n", "'x' is not a valid int"),
        ("a: !!bool maybe\n", "'maybe' is not a valid bool"),
        ("a: !!timestamp x\n", "'x' is not a valid timestamp"),
    ],
)
def test_yaml_that_crashed_the_loader(text: str, message: str) -> None:
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml(text)
    assert message in info.value.message and info.value.line >= 1


@pytest.mark.parametrize("merge", [False, True], ids=["aliases", "merges"])
def test_alias_bombs_are_refused_quickly(merge: bool) -> None:
    # Small bombs (a few hundred thousand values; each level more multiplies them), so
    # that a loader without the cap fails this test instead of exhausting the machine.
    if merge:
        lines = ["a0: &a0 {x: 1, y: 2}"]
        lines += [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}]}}" for i in range(1, 18)]
    else:
        lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 6)]
    started = time.monotonic()
    with pytest.raises(YamlSyntaxError) as info:
        load_yaml("\n".join(lines) + "\n")
    assert time.monotonic() - started < 2
    assert "more than 100000" in info.value.message


def test_not_utf8_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "channels.yaml"
    path.write_bytes(b"version: 1\nchannels:\n  - name: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.message == f"{path}:3: not UTF-8 text (byte 0xff cannot be decoded)"


def test_validate_exits_1_not_3(
    write_config: WriteConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(CHANNEL.format(path='"a\\0b"'))
    assert cli.main(["validate", "-c", str(path)]) == ExitCode.ERROR
    assert "contains a NUL character" in capsys.readouterr().err


# -- upstream repodata and patches ---------------------------------------------------

SOURCE = "https://up.example/c/linux-64/repodata.json"


def record(**fields: Any) -> dict[str, Any]:
    return {"name": "a", "version": "1.0", "build": "0", "build_number": 0, **fields}


def test_removed_holding_a_list_is_refused() -> None:
    with pytest.raises(ReconcileError) as info:
        load_repodata(b'{"removed": [[]]}', SOURCE)
    assert info.value.message == f"{SOURCE}: repodata 'removed' is not a list of filenames"


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("build_number", "x", "'build_number' is str, not an integer"),
        ("depends", 5, "'depends' is int, not a list of strings"),
        ("depends", [1], "'depends' is list, not a list of strings"),
        ("license", ["GPL"], "'license' is list, not a string"),
        ("timestamp", "soon", "'timestamp' is 'soon', not a number"),
    ],
)
def test_mistyped_upstream_records_are_refused(field: str, value: Any, problem: str) -> None:
    repodata = {"packages.conda": {"a-1.0-0.conda": record(**{field: value})}}
    records, refused = safe_records("linux-64", repodata, SOURCE)
    assert records == {}
    assert refused == [f"{SOURCE}/linux-64: refusing 'a-1.0-0.conda': {problem}"]


def engine(block: dict[str, Any]) -> FilterEngine:
    return FilterEngine(FilterBlock.model_validate(block))


def test_a_timestamp_beyond_year_9999_is_later_than_any_window() -> None:
    candidate = Candidate("linux-64", "a-1.0-0.conda", record(timestamp=2**64 - 1))
    decision = engine({"date": {"before": "2030-01-01"}}).evaluate([candidate])[candidate.key]
    assert not decision.selected and "date.before" in decision.reason
    assert engine({"date": {"after": "2030-01-01"}}).evaluate([candidate])[candidate.key].selected
    page = render_subdir_html(
        "c", "linux-64", {"packages.conda": {"a-1.0-0.conda": record(timestamp=2**64 - 1)}}
    )
    assert "a-1.0-0.conda" in page


def test_a_licence_that_is_not_text_matches_no_licence_rule() -> None:
    candidate = Candidate("linux-64", "a-1.0-0.conda", record(license=["GPL"], license_family=3))
    block = {"exclude": [{"license": "GPL"}, {"license_family": "GPL"}]}
    assert engine(block).evaluate([candidate])[candidate.key].selected


def test_dependencies_of_a_record_whose_depends_is_not_a_list() -> None:
    upstream = {"linux-64": {"a-1.0-0.conda": record(depends=5)}}
    selection = select(upstream, engine({}), engine({"dependencies": True}), dependencies=True)
    assert set(selection.selected) == {("linux-64", "a-1.0-0.conda")}


def test_revoking_a_record_whose_depends_is_not_a_list() -> None:
    repodata = {"packages.conda": {"a-1.0-0.conda": record(depends=5)}, "removed": []}
    result = apply_instructions(repodata, {"revoke": ["a-1.0-0.conda"]})
    assert result["packages.conda"]["a-1.0-0.conda"]["depends"] == ["package_has_been_revoked"]
    assert repodata["packages.conda"]["a-1.0-0.conda"]["depends"] == 5


@pytest.mark.parametrize(
    ("instructions", "message"),
    [
        (
            {"packages": {1: {}}},
            "'packages' must map filenames to field changes (1 is not a filename)",
        ),
        ({"packages": {"a-1.0-0.conda": {"depends": 5}}}, "'depends' is int, not a list"),
        ({"packages": {"a-1.0-0.conda": {"x": 2**64}}}, "cannot be written as JSON"),
        ({"packages": {"a-1.0-0.conda": {"x": {1, 2}}}}, "cannot be written as JSON"),
    ],
)
def test_instructions_the_index_cannot_use(instructions: dict[str, Any], message: str) -> None:
    with pytest.raises(PatchError) as info:
        validate_instructions(instructions, "hotfix.py")
    assert info.value.message.startswith("hotfix.py: ") and message in info.value.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{\n"packages": {"a-1.0-0.conda": {"x": 18446744073709551616}}}', "cannot be written"),
        ('{\n"packages": {"a-1.0-0.conda": {"x": NaN}}}', ":2: not valid JSON (NaN is not"),
        ('{"packages": {"a-1.0-0.conda": {"x": -Infinity}}}', ":1: not valid JSON (-Infinity"),
    ],
)
def test_json_patch_values_repodata_cannot_hold(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "patch_instructions.json"
    path.write_text(text)
    with pytest.raises(PatchError) as info:
        load_patch_source(path)
    assert info.value.message.startswith(str(path)) and message in info.value.message


# -- package files -------------------------------------------------------------------


@pytest.mark.parametrize("fmt", [".conda", ".tar.bz2"])
@pytest.mark.parametrize(
    ("index_json", "reason"),
    [
        (b'{"name": "a", "version": "1", "build": "0", "depends": 5}', "'depends' is int"),
        (
            b'{"name": "a", "version": "1", "build": "0", "build_number": 99999999999999999999}',
            "'build_number' is float, not an integer",
        ),
        (b'{"name": "a", "version": "1", "build": "0", "x": NaN}', "is not valid JSON"),
    ],
)
def test_index_json_the_index_cannot_write(
    tmp_path: Path, fmt: str, index_json: bytes, reason: str
) -> None:
    info = {**PackageSpec("a", "1").info_files(), "info/index.json": index_json}
    path = tmp_path / f"a-1-0{fmt}"
    if fmt == ".conda":
        write_conda(path, info, {})
    else:
        write_tar_bz2(path, info)
    with pytest.raises(PackageError) as error:
        read_package(path)
    assert error.value.path == path.name and reason in error.value.reason


def test_caps_exist_with_sane_values() -> None:
    # Finding info/ in an archive of empty members or of zeros stops, at these caps.
    assert 10_000 <= archive.MAX_MEMBERS <= 1_000_000
    assert archive.STREAM_RATIO >= 50 and archive.STREAM_FLOOR >= archive.INFO_TOTAL_LIMIT


# -- names ---------------------------------------------------------------------------


def test_a_filename_longer_than_a_file_system_takes() -> None:
    name = "n" * 243 + "-1.0-0.tar.bz2"  # 257 bytes, valid in every other way
    assert filename_problem(name) == "filename is longer than 255 bytes"
    assert filename_problem("n" * 241 + "-1.0-0.tar.bz2") is None


@pytest.mark.parametrize("name", ["é" * 130 + "-1.0.whl", "\ud800-1.0.whl", "a" * 250 + ".zip"])
def test_pypi_filenames_that_cannot_be_written(name: str) -> None:
    assert not is_safe_filename(name)


# -- filters -------------------------------------------------------------------------


def test_latest_keeps_versions_equal_in_conda_order_together() -> None:
    # 1.0 and 1.0.0 are one version: which one survived followed the hash seed.
    candidates = [
        Candidate("noarch", f"a-{v}-0.conda", {"name": "a", "version": v})
        for v in ("1.0", "1.0.0", "0.9")
    ]
    decisions = engine({"latest": 1}).evaluate(candidates)
    assert [c.filename for c in candidates if decisions[c.key].selected] == [
        "a-1.0-0.conda",
        "a-1.0.0-0.conda",
    ]


def test_dependency_choice_does_not_follow_upstream_order() -> None:
    records = {
        "x-1-0.conda": record(name="x", depends=["alpha >=1.0"]),
        "y-1-0.conda": record(name="y", depends=["alpha <2"]),
        "alpha-10-0.conda": record(name="alpha", version="10"),
        "alpha-1.1-0.conda": record(name="alpha", version="1.1"),
    }
    mirror = engine({"include": [{"name": "x"}, {"name": "y"}], "dependencies": True})
    results = [
        set(select({"linux-64": dict(items)}, engine({}), mirror, dependencies=True).selected)
        for items in (list(records.items()), list(reversed(records.items())))
    ]
    assert results[0] == results[1]
