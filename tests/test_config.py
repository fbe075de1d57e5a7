from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from reconciler.config.checks import shortest_interval
from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.config.models import ConfigErrors, load_config
from reconciler.errors import ConfigError
from tests.conftest import REPO_ROOT

WriteConfig = Callable[[str], Path]

MINIMAL = """
version: 1
channels:
  - name: internal
    path: ./channels/internal
    subdirs: [linux-64, noarch]
"""


def errors_of(path: Path, **kwargs: bool) -> list[Diagnostic]:
    with pytest.raises(ConfigErrors) as info:
        load_config(path, **kwargs)
    return info.value.errors


def only_error(path: Path) -> Diagnostic:
    errors = errors_of(path)
    assert len(errors) == 1, [e.format() for e in errors]
    return errors[0]


def test_example_config_is_valid() -> None:
    loaded = load_config(REPO_ROOT / "examples" / "channels.yaml")
    names = [c.name for c in loaded.config.channels]
    assert names == ["internal", "scratch", "pypi"]
    assert not [w for w in loaded.warnings if "leaves out" in w.message]


def test_minimal_config_and_path_resolution(write_config: WriteConfig) -> None:
    path = write_config(MINIMAL)
    config = load_config(path).config
    channel = config.channels[0]
    assert channel.path == (path.parent / "channels" / "internal").resolve()
    assert channel.served_subdirs == ["linux-64", "noarch"]
    assert channel.index.zst is True and channel.index.bz2 is False


def test_noarch_is_always_served(write_config: WriteConfig) -> None:
    config = load_config(write_config(MINIMAL.replace("[linux-64, noarch]", "[linux-64]"))).config
    assert config.channels[0].served_subdirs == ["linux-64", "noarch"]


def test_defaults_flow_into_channels_and_mirrors(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    path = write_config(
        """
        version: 1
        defaults:
          index: {bz2: true, shards: true}
          mirror: {timeout: 5, retries: 1, mode: passive}
        channels:
          - name: a
            path: a
            index: {shards: false}
            mirrors:
              - {name: m, source: ./up, retries: 7}
        """
    )
    channel = load_config(path).config.channels[0]
    assert channel.index.bz2 is True  # from defaults
    assert channel.index.shards is False  # channel overrides
    mirror = channel.mirrors[0]
    assert (mirror.timeout, mirror.retries, mirror.mode) == (5, 7, "passive")
    assert mirror.source == str((tmp_path / "up").resolve())


def test_filters_parse(write_config: WriteConfig) -> None:
    path = write_config(
        MINIMAL
        + """
    filters:
      exclude:
        - license: GPL
          except: [{name: "libgcc*"}]
      date: {after: 2023-01-01}
      latest: 2
"""
    )
    filters = load_config(path).config.channels[0].filters
    assert filters.exclude[0].license == "GPL"
    assert filters.exclude[0].except_[0].name == "libgcc*"
    assert filters.date is not None
    assert filters.date.after == dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
    assert filters.latest == 2


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_syntax_error_names_line(write_config: WriteConfig) -> None:
    error = only_error(write_config("version: 1\nchannels: [\n  {name: a\n"))
    assert error.line >= 2
    assert "invalid YAML" in error.message


def test_empty_file(write_config: WriteConfig) -> None:
    assert "empty" in only_error(write_config("")).message


def test_top_level_must_be_mapping(write_config: WriteConfig) -> None:
    assert "mapping" in only_error(write_config("- a\n- b\n")).message


def test_unknown_key_with_suggestion(write_config: WriteConfig) -> None:
    error = only_error(write_config(MINIMAL + "    subdris: [noarch]\n"))
    assert error.path == ("channels", 0, "subdris")
    assert error.line == 6
    assert "did you mean 'subdirs'" in error.message


def test_unknown_key_deep_in_filters(write_config: WriteConfig) -> None:
    error = only_error(
        write_config(MINIMAL + "    filters:\n      exclude:\n        - {nmae: x}\n")
    )
    assert error.path == ("channels", 0, "filters", "exclude", 0, "nmae")
    assert "did you mean 'name'" in error.message


def test_missing_required_key(write_config: WriteConfig) -> None:
    error = only_error(write_config("version: 1\nchannels:\n  - name: a\n"))
    assert error.path == ("channels", 0, "path")
    assert error.line == 3
    assert "missing required key 'path'" in error.message


def test_wrong_version(write_config: WriteConfig) -> None:
    error = only_error(write_config(MINIMAL.replace("version: 1", "version: 2")))
    assert error.path == ("version",)
    assert "got 2" in error.message


def test_duplicate_yaml_key(write_config: WriteConfig) -> None:
    error = only_error(write_config(MINIMAL + "    subdirs: [noarch]\n"))
    assert error.line == 6
    assert "duplicate key 'subdirs'" in error.message
    assert "line 5" in error.message


def test_duplicate_channel_names(write_config: WriteConfig) -> None:
    text = MINIMAL + "  - name: internal\n    path: ./other\n"
    error = only_error(write_config(text))
    assert error.path == ("channels", 1, "name")
    assert error.line == 6


def test_duplicate_mirror_names_across_channels(write_config: WriteConfig, tmp_path: Path) -> None:
    text = """
    version: 1
    channels:
      - name: a
        path: a
        mirrors: [{name: m, source: "https://example.invalid/a"}]
      - name: b
        path: b
        mirrors: [{name: m, source: "https://example.invalid/b"}]
    """
    error = only_error(write_config(text))
    assert error.path == ("channels", 1, "mirrors", 0, "name")
    assert "duplicate mirror name 'm'" in error.message


@pytest.mark.parametrize("subdir", ["Linux-64", "linux_64", "win"])
def test_invalid_subdir_name(write_config: WriteConfig, subdir: str) -> None:
    error = only_error(write_config(MINIMAL.replace("linux-64", subdir)))
    assert error.path == ("channels", 0, "subdirs")
    assert repr(subdir) in error.message


def test_invalid_cron(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "    mirrors:\n      - name: m\n        source: https://example.invalid/c\n"
        "        schedule: '61 * * * *'\n"
    )
    error = only_error(write_config(text))
    assert error.path == ("channels", 0, "mirrors", 0, "schedule")
    assert error.line == 9
    assert "invalid cron" in error.message


def test_invalid_match_spec_and_version_spec(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "    filters:\n      include:\n        - spec: 'numpy >='\n"
        "        - {name: scipy, version: '>>1'}\n"
    )
    errors = errors_of(write_config(text))
    assert [(e.line, e.path[-1]) for e in errors] == [(8, "spec"), (9, "version")]
    assert "invalid match spec" in errors[0].message
    assert "invalid version spec" in errors[1].message


def test_mirror_subdir_not_served(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "    mirrors:\n      - name: m\n        source: https://example.invalid/c\n"
        "        subdirs: [noarch, osx-arm64]\n"
    )
    error = only_error(write_config(text))
    assert error.path == ("channels", 0, "mirrors", 0, "subdirs", 1)
    assert "'osx-arm64' is not served" in error.message


@pytest.mark.parametrize(
    ("source", "needle"),
    [
        ("ftp://example.invalid/x", "unsupported source scheme"),
        ("s3://bucket/x", "unsupported source scheme"),
        ("https://user:pw@example.invalid/x", "credentials"),
        ("https:///nohost", "no host"),
    ],
)
def test_bad_sources(write_config: WriteConfig, source: str, needle: str) -> None:
    text = MINIMAL + f"    mirrors:\n      - name: m\n        source: '{source}'\n"
    error = only_error(write_config(text))
    assert error.path == ("channels", 0, "mirrors", 0, "source")
    assert needle in error.message


def test_same_and_nested_channel_paths(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "  - name: b\n    path: ./channels/internal/\n"
        "  - name: c\n    path: ./channels/internal/sub\n"
    )
    errors = errors_of(write_config(text))
    assert [e.path for e in errors] == [("channels", 1, "path"), ("channels", 2, "path")]
    assert "same path" in errors[0].message
    assert "nested" in errors[1].message


def test_token_env_unset_warns_for_validate_and_fails_for_apply(
    write_config: WriteConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RECONCILE_TEST_TOKEN", raising=False)
    text = MINIMAL + (
        "    mirrors:\n      - name: m\n        source: https://example.invalid/c\n"
        "        token_env: RECONCILE_TEST_TOKEN\n"
    )
    path = write_config(text)
    loaded = load_config(path)
    assert [w.path[-1] for w in loaded.warnings] == ["token_env"]
    assert loaded.warnings[0].severity is Severity.WARNING
    error = errors_of(path, require_env=True)
    assert [e.path[-1] for e in error] == ["token_env"]
    monkeypatch.setenv("RECONCILE_TEST_TOKEN", "secret")
    assert load_config(path, require_env=True).warnings == []


def test_warnings_for_missing_noarch_and_frequent_schedule(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "    mirrors:\n      - name: m\n        source: https://example.invalid/c\n"
        "        subdirs: [linux-64]\n        schedule: '*/15 * * * *'\n"
    )
    loaded = load_config(write_config(text))
    messages = sorted(w.message for w in loaded.warnings)
    assert len(messages) == 2
    assert "every 15 min" in messages[0]
    assert "leaves out 'noarch'" in messages[1]


def test_patch_files_must_exist(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "ok.json").write_text("{}")
    text = MINIMAL + "    patches: [ok.json, missing.py, bad.txt]\n"
    errors = errors_of(write_config(text))
    assert [e.path for e in errors] == [
        ("channels", 0, "patches", 1),
        ("channels", 0, "patches", 2),
    ]
    assert "not found" in errors[0].message
    assert "must end in" in errors[1].message


def test_every_mistake_is_reported_in_one_run(write_config: WriteConfig) -> None:
    text = """
    version: 1
    channels:
      - name: internal
        path: ./ch
        subdirs: [linux-64, Linux_64, noarch]
        pathces: []
        mirrors:
          - name: m1
            source: ftp://example.invalid/x
            subdirs: [osx-arm64]
            schedule: "61 * * * *"
            filters:
              include:
                - spec: "numpy >="
                - {name: scipy, version: ">>1"}
          - name: m1
            source: https://example.invalid/c
      - name: internal
        path: ./ch/
        subdirs: [noarch]
        subdirs: [linux-64]
    """
    errors = errors_of(write_config(text))
    found = {(e.line, e.path[-1] if isinstance(e.path[-1], str) else e.path[-2]) for e in errors}
    assert found == {
        (5, "subdirs"),
        (6, "pathces"),
        (9, "source"),
        (10, "subdirs"),
        (11, "schedule"),
        (14, "spec"),
        (15, "version"),
        (16, "name"),
        (18, "name"),
        (19, "path"),
        (21, "subdirs"),
    }
    for error in errors:
        assert error.format().startswith(f"{error.file}:{error.line}: ")


def test_date_window_order(write_config: WriteConfig) -> None:
    text = MINIMAL + "    filters:\n      date: {after: 2024-01-01, before: 2023-01-01}\n"
    error = only_error(write_config(text))
    assert error.path == ("channels", 0, "filters", "date")
    assert "earlier" in error.message


def test_empty_rule_and_unknown_license_family(write_config: WriteConfig) -> None:
    text = MINIMAL + "    filters:\n      include:\n        - {}\n        - {license_family: GLP}\n"
    errors = errors_of(write_config(text))
    assert "empty rule" in errors[0].message
    assert "unknown license_family 'GLP'" in errors[1].message


def test_licence_values_are_checked_with_a_suggestion(write_config: WriteConfig) -> None:
    text = MINIMAL + (
        "    filters:\n"
        "      exclude:\n"
        "        - license: GLP\n"
        "        - {license: 'MIT OR'}\n"
        "        - license: Apache 2\n"
        "          except:\n"
        "            - {license: GPL-3.0-only WITH GCC-exception-3.1}\n"
        "            - {license: BSD 3-clause}\n"
        "        - {license: 'GPL OR LGPL'}\n"
    )
    path = write_config(text)
    assert [e.format() for e in errors_of(path)] == [
        f"{path}:8: channels[0].filters.exclude[0].license: license 'GLP' is neither a licence "
        "family nor a valid SPDX expression: unknown licence 'GLP' (did you mean 'GPL'?)",
        f"{path}:9: channels[0].filters.exclude[1].license: license 'MIT OR' is neither a "
        "licence family nor a valid SPDX expression (OR requires two or more licenses as in: "
        "MIT OR BSD); did you mean 'MIT'?",
        f"{path}:10: channels[0].filters.exclude[2].license: license 'Apache 2' is neither a "
        "licence family nor a valid SPDX expression: unknown licence 'Apache 2' (did you mean "
        "'Apache-2.0'?)",
        f"{path}:13: channels[0].filters.exclude[2].except[1].license: license 'BSD 3-clause' is "
        "neither a licence family nor a valid SPDX expression: unknown licence 'BSD 3-clause' "
        "(did you mean 'BSD-3-Clause'?)",
    ]


def test_licence_values_in_mirror_filters_too(write_config: WriteConfig, tmp_path: Path) -> None:
    (tmp_path / "up").mkdir()
    text = MINIMAL + (
        "    mirrors:\n"
        "      - name: up\n"
        "        source: ./up\n"
        "        filters: {include: [{name: x, license: 'Apache 2.0'}]}\n"
    )
    error = only_error(write_config(text))
    assert error.path == ("channels", 0, "mirrors", 0, "filters", "include", 0, "license")
    assert error.line == 9
    assert "did you mean 'Apache-2.0'?" in error.message


@pytest.mark.parametrize(
    ("expression", "minutes"),
    [("17 3 * * *", 24 * 60), ("*/10 * * * *", 10), ("0,30 3 * * *", 30), ("0 * * * *", 60)],
)
def test_shortest_interval(expression: str, minutes: int) -> None:
    interval = shortest_interval(expression)
    assert interval is not None
    assert interval.total_seconds() == minutes * 60


def test_shortest_interval_invalid() -> None:
    assert shortest_interval("not cron") is None


PYPI = """
version: 1
channels:
  - name: py
    kind: pypi
    path: ./channels/py
    mirrors:
      - name: pypi-core
        projects: [requests, "urllib3>=2,<3"]
"""


def test_pypi_channel_defaults(write_config: WriteConfig, tmp_path: Path) -> None:
    from reconciler.config.models import PypiChannel

    channel = load_config(write_config(PYPI)).config.channels[0]
    assert isinstance(channel, PypiChannel)
    mirror = channel.mirrors[0]
    assert mirror.source == "https://pypi.org/simple/"
    assert mirror.file_hosts == ["files.pythonhosted.org"]
    assert mirror.mode == "active" and mirror.prune
    assert channel.path == (tmp_path / "channels" / "py").resolve()


def test_pypi_licence_filters_are_refused_with_the_reason(write_config: WriteConfig) -> None:
    error = only_error(write_config(PYPI + "        filters: {license: MIT}\n"))
    assert error.path == ("channels", 0, "mirrors", 0, "filters")
    assert error.line == 9
    assert "not offered for PyPI channels" in error.message
    assert "not standardised" in error.message


def test_pypi_errors_point_at_their_keys(write_config: WriteConfig) -> None:
    text = PYPI.replace('"urllib3>=2,<3"', '"urllib3>=>2"') + "        subdirs: [noarch]\n"
    errors = errors_of(write_config(text))
    found = {e.path: e for e in errors}
    assert (
        "invalid requirement 'urllib3>=>2'"
        in found[("channels", 0, "mirrors", 0, "projects", 1)].message
    )
    unknown = found[("channels", 0, "mirrors", 0, "subdirs")]
    assert unknown.message.startswith("unknown key 'subdirs'")
    assert "projects" in unknown.message  # the keys a PyPI mirror takes


def test_unknown_channel_kind(write_config: WriteConfig) -> None:
    error = only_error(write_config(PYPI.replace("kind: pypi", "kind: pipy")))
    assert error.path == ("channels", 0, "kind")
    assert error.line == 4
    assert "kind must be 'conda' or 'pypi'" in error.message and "'pipy'" in error.message


# -- folders a channel may not take ---------------------------------------------------

CHANNEL_AT = """\
version: 1
channels:
  - name: c
    path: {path}
{extra}"""


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/", "is the root folder"),
        (".", "is this configuration's own folder"),
        ("..", "holds this configuration"),
        ('"~"', "is your home folder"),
        ("/etc/conda", "is a system folder (/etc)"),
        ("/proc", "is a system folder (/proc)"),
        ("/sys/kernel", "is a system folder (/sys)"),
        ("/dev/shm/chan", "is a system folder (/dev)"),
    ],
)
def test_system_and_parent_folders_are_refused(
    write_config: Callable[..., Path], path: str, message: str
) -> None:
    config = write_config(CHANNEL_AT.format(path=path, extra=""))
    with pytest.raises(ConfigErrors) as info:
        load_config(config)
    (line,) = [d.format() for d in info.value.errors]
    assert line.startswith(f"{config}:4: channels[0].path: ") and message in line, line


def test_a_folder_of_other_files_needs_adopt(write_config: Callable[..., Path]) -> None:
    config = write_config(CHANNEL_AT.format(path="./work", extra=""))
    work = config.parent / "work"
    (work / "linux-64").mkdir(parents=True)
    (work / "noarch").mkdir()
    (work / ".reconciler").mkdir()
    load_config(config)  # subdirs and the tool's own folder: a channel
    (work / "thesis.tex").write_text("mine")
    with pytest.raises(ConfigErrors) as info:
        load_config(config)
    (line,) = [d.format() for d in info.value.errors]
    assert "holds files that are not a channel's (thesis.tex)" in line
    assert "set adopt: true" in line
    adopted = write_config(CHANNEL_AT.format(path="./work", extra="    adopt: true\n"))
    assert load_config(adopted).config.channels[0].adopt is True
    assert (work / "thesis.tex").read_text() == "mine"
