"""What ``reconcile explain`` accepts for PyPI channels: a filename, a glob, a requirement."""

from __future__ import annotations

import fnmatch

from packaging.requirements import InvalidRequirement, Requirement

from reconciler.errors import ReconcileError
from reconciler.kinds.pypi.names import Distribution, is_safe_filename, normalize


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
