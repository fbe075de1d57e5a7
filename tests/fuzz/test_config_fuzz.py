"""The configuration loader on hostile input: never a traceback, always ``FILE:LINE:``.

Three kinds of input: random text, random data (shaped like a configuration or not)
dumped as YAML, and byte and line mutations of ``examples/channels.yaml``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from reconciler import cli
from reconciler.config.checks import check_config_text
from reconciler.config.diagnostics import Severity
from reconciler.config.models import ConfigErrors, LoadedConfig, load_config
from reconciler.errors import ConfigError, ExitCode
from tests.conftest import REPO_ROOT
from tests.fuzz.common import (
    TRICKY_TEXT,
    budget,
    byte_mutations,
    line_mutations,
    mutate_bytes,
    mutate_lines,
    scalars,
    yaml_like,
)

EXAMPLES = REPO_ROOT / "examples"
EXAMPLE_TEXT = (EXAMPLES / "channels.yaml").read_text(encoding="utf-8")


def check_loaded(path: Path, data: bytes) -> LoadedConfig | None:
    """Load ``path``: success, or a ConfigError whose every line points into the file."""
    # Every character YAML or an editor may take for a line break counts (\r, U+2028...).
    last_line = len(data.decode("utf-8", "replace").splitlines()) + 1
    try:
        loaded = load_config(path)
    except ConfigErrors as exc:
        header, *lines = exc.message.split("\n")
        assert header == f"{path}: {len(exc.errors)} error(s) in configuration", header
        assert exc.errors, "an error report without errors"
        assert len(lines) == len(exc.errors) + len(exc.warnings), exc.message
        location = re.compile(rf"{re.escape(str(path))}:(\d+): ")
        for line in lines:
            match = location.match(line)
            assert match, f"no FILE:LINE: in {line!r}"
            assert 1 <= int(match.group(1)) <= last_line, line
        return None
    except ConfigError as exc:
        # Not even text: still names the file, and the line when there is one.
        assert exc.message.startswith(f"{path}:"), exc.message
        assert "\n" not in exc.message, exc.message
        return None
    for warning in loaded.warnings:
        assert warning.severity is Severity.WARNING
        assert warning.format().startswith(f"{path}:{warning.line}: warning: ")
    assert loaded.config.channels
    assert all(Path(channel.path).is_absolute() for channel in loaded.config.channels)
    return loaded


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- random text ---------------------------------------------------------------------

# Mostly YAML's own punctuation, so the parser gets past the first character.
yaml_text = st.text(
    alphabet=st.one_of(
        st.sampled_from(list("-:[]{},&*!|>'\"%@`#?. \n\t01xyz")),
        st.characters(codec="utf-8"),
    ),
    max_size=200,
)


@budget(200)
@given(text=st.one_of(yaml_text, st.text(max_size=200)))
def test_random_text(tmp_path: Path, text: str) -> None:
    data = text.encode("utf-8", "surrogatepass")
    check_loaded(write(tmp_path / "channels.yaml", data), data)


@budget(150)
@given(text=st.one_of(yaml_text, st.text(max_size=300)))
def test_check_config_text_diagnostics(text: str) -> None:
    path = Path("/nowhere/channels.yaml")
    result = check_config_text(text, path, environ={})
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    if result.config is None:
        assert errors, "no configuration and no error saying why"
    else:
        assert not errors, errors
    for diagnostic in result.diagnostics:
        assert diagnostic.file == str(path)
        assert diagnostic.line >= 1
        assert "\n" not in diagnostic.format()


# -- random data as YAML -------------------------------------------------------------


def junk_or(good: st.SearchStrategy[Any], odds: int = 4) -> st.SearchStrategy[Any]:
    """A value of the right shape ``odds`` times in ``odds + 1``, else anything at all."""
    return st.one_of(*[good] * odds, st.one_of(scalars, yaml_like))


def structure(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # The skeleton is mostly right, so that the checks below it run.
    return junk_or(good, odds=12)


text_values = st.one_of(
    st.sampled_from(TRICKY_TEXT), st.sampled_from(TRICKY_TEXT), st.text(max_size=12)
)
rule = st.dictionaries(
    st.sampled_from(
        ["name", "version", "build", "spec", "license", "license_family", "subdir", "except", "x"]
    ),
    junk_or(text_values),
    max_size=3,
)
filter_block = st.fixed_dictionaries(
    {},
    optional={
        "include": structure(st.lists(rule, max_size=3)),
        "exclude": structure(st.lists(rule, max_size=3)),
        "date": junk_or(
            st.dictionaries(
                st.sampled_from(["after", "before", "at"]),
                st.one_of(st.dates(), st.datetimes(), text_values),
                max_size=2,
            )
        ),
        "latest": junk_or(st.integers(-2, 5)),
        "dependencies": junk_or(st.booleans()),
        # PyPI filters
        "prerelease": junk_or(st.booleans()),
        "kinds": junk_or(st.lists(st.sampled_from(["sdist", "wheel", "egg"]), max_size=3)),
        "wheel_tags": junk_or(
            st.fixed_dictionaries(
                {}, optional={"include": st.lists(rule), "exclude": st.lists(rule)}
            )
        ),
    },
)
subdir_lists = junk_or(
    st.lists(
        st.one_of(st.sampled_from(["noarch", "linux-64", "osx-arm64", "Linux"]), scalars),
        max_size=4,
    )
)
mirror = st.fixed_dictionaries(
    {
        "name": junk_or(st.sampled_from(["m", "m2", "-bad", "m"])),
        "source": junk_or(text_values),
    },
    optional={
        "kind": junk_or(st.sampled_from(["conda", "pypi"])),
        "mode": junk_or(st.sampled_from(["active", "passive", "lazy"])),
        "subdirs": subdir_lists,
        "schedule": junk_or(text_values),
        "token_env": junk_or(st.sampled_from(["TOKEN", "1BAD", "PATH", ""])),
        "prune": junk_or(st.booleans()),
        "timeout": junk_or(st.floats(allow_nan=True)),
        "retries": junk_or(st.integers(-1, 30)),
        "parallel_downloads": junk_or(st.integers(-1, 100)),
        "projects": junk_or(st.lists(text_values, max_size=3)),
        "allowed_hosts": junk_or(st.lists(text_values, max_size=2)),
        "filters": structure(filter_block),
    },
)
index_options = st.dictionaries(
    st.sampled_from(["zst", "bz2", "shards", "html", "current_index_versions", "bogus"]),
    junk_or(st.one_of(st.booleans(), st.dictionaries(text_values, text_values, max_size=2))),
    max_size=3,
)
channel = st.fixed_dictionaries(
    {
        "name": junk_or(st.sampled_from(["c", "c2", "c", "bad name"])),
        "path": junk_or(st.one_of(st.sampled_from(["./c", "./c/sub", "c", "/abs/c"]), text_values)),
    },
    optional={
        "kind": junk_or(st.sampled_from(["conda", "pypi", "npm"])),
        "subdirs": subdir_lists,
        "index": junk_or(index_options),
        "patches": junk_or(st.lists(text_values, max_size=2)),
        "filters": structure(filter_block),
        "mirrors": structure(st.lists(mirror, max_size=3)),
        "on_conflict": junk_or(st.sampled_from(["error", "first", "last"])),
    },
)
config_like = st.fixed_dictionaries(
    {"version": junk_or(st.just(1), odds=12)},
    optional={
        "defaults": junk_or(
            st.fixed_dictionaries({}, optional={"index": index_options, "mirror": mirror})
        ),
        "channels": structure(st.lists(channel, min_size=1, max_size=3)),
    },
)


@budget(250)
@given(document=st.one_of(config_like, config_like, yaml_like), flow=st.booleans())
def test_random_documents(tmp_path: Path, document: Any, flow: bool) -> None:
    text = yaml.safe_dump(document, default_flow_style=flow, allow_unicode=True)
    check_loaded(write(tmp_path / "channels.yaml", text.encode()), text.encode())


# -- mutations of the example --------------------------------------------------------


@pytest.fixture(scope="module")
def example_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the example's relative patch and upstream paths resolve."""
    folder = tmp_path_factory.mktemp("example")
    for name in ("patches", "upstream"):
        (folder / name).symlink_to(EXAMPLES / name, target_is_directory=True)
    return folder


def test_unmutated_example_loads(example_dir: Path) -> None:
    # The baseline the mutations start from is valid, so they test more than one error.
    data = EXAMPLE_TEXT.encode()
    assert check_loaded(write(example_dir / "channels.yaml", data), data) is not None


@budget(150)
@given(mutations=line_mutations)
def test_line_mutations_of_the_example(
    example_dir: Path, mutations: list[tuple[str, int, int, str]]
) -> None:
    data = mutate_lines(EXAMPLE_TEXT, mutations).encode("utf-8", "surrogatepass")
    check_loaded(write(example_dir / "channels.yaml", data), data)


@budget(150)
@given(mutations=byte_mutations)
def test_byte_mutations_of_the_example(
    example_dir: Path, mutations: list[tuple[str, int, int]]
) -> None:
    data = mutate_bytes(EXAMPLE_TEXT.encode(), mutations)
    check_loaded(write(example_dir / "channels.yaml", data), data)


@budget(25)
@given(
    mutated=st.one_of(
        line_mutations.map(lambda m: mutate_lines(EXAMPLE_TEXT, m).encode()),
        byte_mutations.map(lambda m: mutate_bytes(EXAMPLE_TEXT.encode(), m)),
    )
)
def test_validate_command_on_mutations(
    example_dir: Path, capsys: pytest.CaptureFixture[str], mutated: bytes
) -> None:
    path = write(example_dir / "channels.yaml", mutated)
    code = cli.main(["validate", "-c", str(path)])
    out, err = capsys.readouterr()
    assert code in (ExitCode.OK, ExitCode.ERROR), err
    if code == ExitCode.OK:
        assert out.startswith(f"{path}: valid"), out
    else:
        assert err.startswith(f"error: {path}:"), err
