"""Append-only run history per channel: ``.reconciler/history.jsonl``.

Each line is one state change of one run (``pending`` → ``running`` →
``completed`` | ``failed`` | ``skipped``); a run's current state is its last
line. Appending a line is the only write, so a crash can at worst leave a torn
last line, which readers ignore. A line that parses but does not hold a run
(hand-edited, or written by something else) is skipped with one warning.

The lines go through :meth:`Store.append_line`: on disk they are appended to the
file; in a bucket, which cannot append, each is an object of its own under keys
that sort by time. A run that held a lease records its generation (``lease``),
a fencing token: lines of a run whose lease was taken over carry an older one.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal, get_args

from reconciler.engine import layout
from reconciler.engine.clock import timestamp
from reconciler.engine.plan import Action
from reconciler.store.base import Store

log = logging.getLogger(__name__)

RunState = Literal["pending", "running", "completed", "failed", "skipped"]
RUN_STATES: frozenset[str] = frozenset(get_args(RunState))
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "skipped"})

# Field name → the types a line may hold for it (JSON: ints for counts, text for times).
_TEXT = (str,)
_OPTIONAL_TEXT = (str, type(None))
_COUNT = (int,)
_TYPES: dict[str, tuple[type, ...]] = {
    "run_id": _TEXT,
    "channel": _TEXT,
    "mirror": _OPTIONAL_TEXT,
    "state": _TEXT,
    "started": _TEXT,
    "finished": _OPTIONAL_TEXT,
    "added": _COUNT,
    "updated": _COUNT,
    "removed": _COUNT,
    "restored": _COUNT,
    "reindexed": _COUNT,
    "bytes": _COUNT,
    "duration_s": (int, float),
    "error": _OPTIONAL_TEXT,
    "config_digest": _OPTIONAL_TEXT,
    "revision": _OPTIONAL_TEXT,
    "lease": (int, type(None)),
    "details": (dict,),
}


class BadLine(ValueError):
    pass


# Histories already warned about in this process: one warning per file, not per read.
_WARNED: set[str] = set()


@dataclass(frozen=True)
class RunRecord:
    """One run of a channel's own work (``mirror`` None) or of one of its mirrors."""

    run_id: str
    channel: str
    mirror: str | None
    state: RunState
    started: str
    finished: str | None = None
    added: int = 0
    updated: int = 0
    removed: int = 0
    restored: int = 0
    reindexed: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    error: str | None = None
    config_digest: str | None = None
    revision: str | None = None  # git commit of the config, when known
    lease: int | None = None  # the generation of the lease the run held (a fencing token)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.channel}/{self.mirror}" if self.mirror else self.channel

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        """A record from one history line; :class:`BadLine` when a field has the wrong type."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("run_id", "channel", "state", "started"):
            if name not in values:
                raise BadLine(f"no {name!r}")
        for name, value in values.items():
            allowed = _TYPES[name]
            if isinstance(value, bool) or not isinstance(value, allowed):
                raise BadLine(f"{name!r} is {type(value).__name__}")
        if values["state"] not in RUN_STATES:
            raise BadLine(f"unknown state {values['state']!r}")
        return cls(**values)


def new_run(
    channel: str,
    mirror: str | None,
    *,
    config_digest: str | None = None,
    revision: str | None = None,
    lease: int | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex[:12],
        channel=channel,
        mirror=mirror,
        state="pending",
        started=timestamp(),
        config_digest=config_digest,
        revision=revision,
        lease=lease,
    )


class History:
    """The history of one channel, read and appended through its store."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.key = layout.HISTORY

    def append(self, record: RunRecord) -> RunRecord:
        """Record a state change; the line goes out in one write and is fsynced."""
        line = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        self.store.append_line(self.key, line.encode())
        return record

    def transition(self, record: RunRecord, state: RunState, **changes: Any) -> RunRecord:
        if state in FINAL_STATES and "finished" not in changes:
            changes["finished"] = timestamp()
        return self.append(replace(record, state=state, **changes))

    def lines(self) -> Iterator[RunRecord]:
        bad: list[str] = []
        for number, raw in enumerate(self.store.read_lines(self.key), 1):
            try:
                data = json.loads(raw)
            except ValueError:
                continue  # a torn line (a crash mid-append): expected, not worth a warning
            try:
                if not isinstance(data, dict):
                    raise BadLine("not an object")
                yield RunRecord.from_json(data)
            except BadLine as exc:
                bad.append(f"line {number} ({exc})")
        where = self.store.describe(self.key)
        if bad and where not in _WARNED:
            _WARNED.add(where)
            log.warning(
                "%s: skipped %d line(s) that are not runs: %s",
                where,
                len(bad),
                ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else ""),
            )

    def runs(self) -> list[RunRecord]:
        """Every run in its latest state, oldest first."""
        latest: dict[str, RunRecord] = {}
        for record in self.lines():
            latest.pop(record.run_id, None)  # keep insertion order = last update order
            latest[record.run_id] = record
        return sorted(latest.values(), key=lambda r: r.started)

    def unfinished(self) -> list[RunRecord]:
        """Runs that never reached a final state: their process died (or still runs)."""
        return [r for r in self.runs() if r.state not in FINAL_STATES]

    def last_run(self, mirror: str | None, *, started_only: bool = False) -> RunRecord | None:
        """The newest run of ``mirror`` (None: the channel itself)."""
        return last_of(self.runs(), mirror, started_only=started_only)


def last_of(
    runs: list[RunRecord],
    mirror: str | None,
    *,
    started_only: bool = False,
    state: str | None = None,
) -> RunRecord | None:
    """The newest of ``runs`` (oldest first) for ``mirror``, optionally in ``state``."""
    for record in reversed(runs):
        if record.mirror != mirror:
            continue
        if started_only and record.state in ("pending", "skipped"):
            continue
        if state is not None and record.state != state:
            continue
        return record
    return None


# -- what a finished run records in ``details`` ---------------------------------------------

EXAMPLES = 20  # examples kept per category: details hold counts, not file lists
FAILURES = 20  # failure messages kept
TEXT_LIMIT = 300  # characters kept of one detail or failure text

# Action kinds → the categories runs count them in (RunRecord's fields).
CATEGORIES: dict[str, str] = {
    "add": "added",
    "update": "updated",
    "remove": "removed",
    "restore": "restored",
    "reindex": "reindexed",
}
# Categories whose examples are kept: what left the channel (and why: which rule, removed
# upstream, ...) and what had to be fetched again. Additions and updates are counted by
# reason; their names are in the apply report.
EXAMPLE_CATEGORIES = frozenset({"removed", "restored"})
TOP = "."  # the location of an action on the channel's top (no subdir or project)


def _clip(text: str) -> str:
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 1] + "…"


def run_details(
    actions: Iterable[Action],
    failures: Iterable[str] = (),
    *,
    links: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``RunRecord.details`` of a finished run, from the actions it executed.

    Compact, as it is one history line: per location (subdir or project) the non-zero
    counts of packages added, updated, removed and restored, and ``reindexed: 1`` when
    its index was rewritten; per category, how many actions each reason code accounts
    for (``removed: {filtered: 3, removed-upstream: 1}``); up to :data:`EXAMPLES`
    removals and restores (where, source, reason, detail); up to :data:`FAILURES`
    failures and how many there were. ``links`` names related runs (``mirror_runs`` of a
    channel's run, ``channel_run`` of a mirror's). Empty parts but ``locations`` are left
    out.
    """
    locations: dict[str, dict[str, int]] = {}
    reasons: dict[str, dict[str, int]] = {}
    examples: dict[str, list[dict[str, str]]] = {}
    for action in actions:
        category = CATEGORIES[action.kind]
        where = action.location or TOP
        counts = locations.setdefault(where, {})
        if category == "reindexed":
            counts[category] = 1  # a location is re-indexed once, however many reasons
        else:
            counts[category] = counts.get(category, 0) + 1
        by_reason = reasons.setdefault(category, {})
        by_reason[action.reason.value] = by_reason.get(action.reason.value, 0) + 1
        if category not in EXAMPLE_CATEGORIES:
            continue
        shown = examples.setdefault(category, [])
        if len(shown) < EXAMPLES:
            example = {
                "where": _clip(action.where or where),
                "source": action.source,
                "reason": action.reason.value,
            }
            if action.detail:
                example["detail"] = _clip(action.detail)
            shown.append(example)
    failed = list(failures)
    details: dict[str, Any] = {  # "locations", even empty, says the run recorded details
        "locations": {k: dict(sorted(v.items())) for k, v in sorted(locations.items())}
    }
    if reasons:
        details["reasons"] = {k: dict(sorted(v.items())) for k, v in sorted(reasons.items())}
    if examples:
        details["examples"] = dict(sorted(examples.items()))
    if failed:
        details["failures"] = [_clip(f) for f in failed[:FAILURES]]
        details["failures_total"] = len(failed)
    details.update({k: v for k, v in (links or {}).items() if v})
    return details
