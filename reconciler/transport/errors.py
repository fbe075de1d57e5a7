"""What talking to an upstream can fail with."""

from __future__ import annotations

from reconciler.errors import ReconcileError


class UpstreamError(ReconcileError):
    """An upstream that cannot be reached, or sent something unusable."""


class NotFound(UpstreamError):
    pass
