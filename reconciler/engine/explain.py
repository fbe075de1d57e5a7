"""``reconcile explain``: why a package is in or out of each channel.

For every upstream record (of every mirror) and every local package matching the
query — a filename, or a conda MatchSpec — say whether it is in the channel and
which block and rule decided: the channel's or the mirror's ``include`` /
``exclude`` (by position and text), the ``date`` window, the ``latest`` cut-off,
or that it was pulled in as a dependency of another package.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rattler

from reconciler.conda.names import package_suffix
from reconciler.config.models import Channel, LoadedConfig, PypiChannel
from reconciler.engine.planner import resolve_channel_mirrors
from reconciler.errors import ReconcileError
from reconciler.filters import FilterEngine
from reconciler.kinds.conda.indexer import index_channel
from reconciler.kinds.pypi.explain import PypiQuery, explain_pypi


@dataclass(frozen=True)
class Explanation:
    channel: str
    subdir: str
    filename: str
    source: str  # "local" or the mirror's name
    selected: bool
    reason: str

    def format(self) -> str:
        verdict = "in" if self.selected else "out"
        origin = "local package" if self.source == "local" else f"mirror {self.source}"
        return f"{self.channel}/{self.subdir}/{self.filename} ({origin}): {verdict} — {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Query:
    def __init__(self, text: str) -> None:
        self.text = text
        self.filename = text if package_suffix(text) else None
        self.spec: rattler.MatchSpec | None = None
        self.name_glob: str | None = None
        if self.filename is None and any(c in text.split()[0] for c in "*?["):
            # A name glob ("lib*", "*"): every record whose name matches.
            self.name_glob = text.split()[0]
        elif self.filename is None:
            try:
                self.spec = rattler.MatchSpec(text)
            except Exception as exc:
                raise ReconcileError(
                    f"{text!r} is neither a package filename nor a match spec ({exc})",
                    hint="e.g. `reconcile explain numpy`, `'numpy >=1.26'` or "
                    "`numpy-1.26.4-py311_0.conda`",
                ) from None

    def matches(self, filename: str, record: dict[str, Any], subdir: str) -> bool:
        if self.filename is not None:
            return filename == self.filename
        if self.name_glob is not None:
            return fnmatch.fnmatchcase(str(record.get("name", "")), self.name_glob)
        assert self.spec is not None
        if record.get("name") != (self.spec.name.normalized if self.spec.name else None):
            return False
        try:
            package = rattler.PackageRecord(
                name=str(record["name"]),
                version=str(record.get("version", "0")),
                build=rattler.package.BuildString(str(record.get("build", ""))),
                build_number=int(record.get("build_number") or 0),
                subdir=str(record.get("subdir") or subdir),
            )
            return bool(self.spec.matches(package))
        except Exception:
            return False


def explain(
    loaded: LoadedConfig, query_text: str, channels: Sequence[str] | None = None
) -> Iterator[Explanation]:
    wanted = set(channels or [])
    chosen = [
        (i, c) for i, c in enumerate(loaded.config.channels) if not wanted or c.name in wanted
    ]
    # Each kind reads the query its own way; channels of a kind that cannot read it
    # are skipped, and it is an error only when no kind present can.
    pypi_query: PypiQuery | None = None
    query: _Query | None = None
    problems: list[ReconcileError] = []
    if any(isinstance(c, PypiChannel) for _, c in chosen):
        try:
            pypi_query = PypiQuery(query_text)
        except ReconcileError as exc:
            problems.append(exc)
    if any(isinstance(c, Channel) for _, c in chosen):
        try:
            query = _Query(query_text)
        except ReconcileError as exc:
            problems.append(exc)
    if problems and pypi_query is None and query is None:
        raise problems[-1]
    for i, channel in chosen:
        if isinstance(channel, PypiChannel):
            if pypi_query is None:
                continue
            for project, filename, mirror, selected, reason in explain_pypi(
                channel, pypi_query, loaded.base_dir
            ):
                yield Explanation(channel.name, project, filename, mirror, selected, reason)
            continue
        if query is None:
            continue
        resolved = resolve_channel_mirrors(channel, i, loaded.base_dir)
        if resolved is not None:
            for state in resolved.mirrors:
                for (subdir, filename), decision in sorted(state.selection.decisions.items()):
                    record = _upstream_record(state, subdir, filename)
                    if record is None or not query.matches(filename, record, subdir):
                        continue
                    selected, reason = decision.selected, decision.reason
                    owner = resolved.owner(subdir, filename)
                    if selected and owner not in (None, state.mirror.name):
                        selected, reason = False, f"the same filename comes from mirror {owner}"
                    yield Explanation(
                        channel.name, subdir, filename, state.mirror.name, selected, reason
                    )
        # Local packages: the channel filter decides, through the indexer's dry run.
        result = index_channel(
            Path(channel.path),
            options=channel.index,
            patches=channel.patches,
            subdirs=channel.served_subdirs,
            channel_name=channel.name,
            filters=FilterEngine(channel.filters, f"channels[{i}].filters"),
            dry_run=True,
            mirrored=resolved.records if resolved else None,
            upstream_removed=resolved.removed if resolved else None,
            pruned=resolved.pruned if resolved else None,
        )
        for subdir_result in result.subdirs:
            folder = Path(channel.path) / subdir_result.subdir
            owned = resolved.records.get(subdir_result.subdir, {}) if resolved else {}
            for path in sorted(folder.glob("*")):
                name = path.name
                if package_suffix(name) is None or name in owned:
                    continue
                record = _local_record(name)
                if not query.matches(name, record, subdir_result.subdir):
                    continue
                excluded = subdir_result.excluded.get(name)
                skipped = next(
                    (s.reason for s in subdir_result.skipped if s.filename == name), None
                )
                if skipped:
                    yield Explanation(
                        channel.name,
                        subdir_result.subdir,
                        name,
                        "local",
                        False,
                        f"unreadable: {skipped}",
                    )
                elif excluded:
                    yield Explanation(
                        channel.name, subdir_result.subdir, name, "local", False, excluded
                    )
                else:
                    yield Explanation(
                        channel.name, subdir_result.subdir, name, "local", True, "selected"
                    )


def _upstream_record(state: Any, subdir: str, filename: str) -> dict[str, Any] | None:
    selected = state.selection.selected.get((subdir, filename))
    if selected is not None:
        return dict(selected)
    record = state.selection.records.get((subdir, filename))
    return dict(record) if record is not None else None


def _local_record(filename: str) -> dict[str, Any]:
    """name/version/build from a ``name-version-build`` filename, enough to match specs."""
    stem = filename[: -len(package_suffix(filename) or "")]
    name, _, rest = stem.rpartition("-")
    name, _, version = name.rpartition("-")
    return {"name": name, "version": version, "build": rest}
