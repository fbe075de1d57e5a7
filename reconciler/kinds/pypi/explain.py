"""``reconcile explain`` for PyPI channels: why each file of a project is in or out."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from reconciler.config.models import PypiChannel
from reconciler.engine.state import ChannelState
from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import Distribution, is_safe_filename, normalize
from reconciler.kinds.pypi.resolve import resolve


class PypiQuery:
    """A filename, a project name glob, or a requirement such as ``urllib3>=2``."""

    def __init__(self, text: str) -> None:
        self.filename = text if is_safe_filename(text) else None
        self.glob: str | None = None
        self.requirement: Requirement | None = None
        if self.filename is None and any(c in text for c in "*?["):
            self.glob = text.lower()
        elif self.filename is None:
            try:
                self.requirement = Requirement(text)
            except InvalidRequirement as exc:
                raise ReconcileError(
                    f"{text!r} is neither a wheel/sdist filename nor a requirement ({exc})"
                ) from None

    def matches(self, filename: str, dist: Distribution | None, project: str) -> bool:
        if self.filename is not None:
            return filename == self.filename
        if self.glob is not None:
            return fnmatch.fnmatchcase(project, self.glob)
        assert self.requirement is not None
        if normalize(self.requirement.name) != project:
            return False
        spec = self.requirement.specifier
        return not spec or (dist is not None and spec.contains(dist.version, prereleases=True))


def explain_pypi(
    channel: PypiChannel, query: PypiQuery, config_dir: Path | None
) -> Iterator[tuple[str, str, str, bool, str]]:
    """(project, filename, mirror, selected, reason) for every matching upstream file."""
    inventory = ChannelState.load(Path(channel.path), channel.name).files
    resolution = resolve(channel, inventory, config_dir)
    try:
        for mirror, project, verdict in resolution.verdicts:
            filename = verdict.file.filename
            if not query.matches(filename, verdict.dist, project):
                continue
            selected, reason = verdict.selected, verdict.reason
            owner = resolution.owner(f"{project}/{filename}")
            if selected and owner not in (None, mirror):
                selected, reason = False, f"the same filename comes from mirror {owner}"
            yield project, filename, mirror, selected, reason
    finally:
        resolution.close()
