"""``reconcile explain``: why packages are in or out of each channel.

Each channel's kind plans the channel exactly as ``apply`` would (read-only, the
same schedules) and says, for every record matching the query — a filename, a
name glob, a conda MatchSpec or a Python requirement — whether it is in and
which rule, mirror or dependency decided. A kind that cannot read the query is
skipped; it is an error only when no kind present can.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from reconciler.config.models import LoadedConfig
from reconciler.engine.kind import Explanation, KindRegistry
from reconciler.engine.planner import PlanOptions, channel_positions, prepare_request
from reconciler.errors import ReconcileError


def explain(
    loaded: LoadedConfig,
    kinds: KindRegistry,
    query: str,
    channels: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> Iterator[Explanation]:
    problems: list[str] = []
    readable = False
    options = PlanOptions(cache_dir=cache_dir)
    for position in channel_positions(loaded, channels):
        kind, request, _, _ = prepare_request(loaded, kinds, position, options)
        try:
            found = list(kind.explain(request, query))
        except ValueError as exc:
            problems.append(str(exc))
            continue
        readable = True
        yield from found
    if not readable and problems:
        raise ReconcileError(
            problems[-1],
            hint="e.g. `reconcile explain numpy`, `'numpy >=1.26'`, "
            "`numpy-1.26.4-py311_0.conda` or `'urllib3>=2'`",
        )
