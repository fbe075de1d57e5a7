"""Append-only run history per channel: ``<channel>/.reconciler/history.jsonl``.

Each line is one state change of one run (``pending`` → ``running`` →
``completed`` | ``failed`` | ``skipped``); a run's current state is its last
line. Appending a line is the only write, so a crash can at worst leave a torn
last line, which readers ignore.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from reconciler.faults import checkpoint, checkpoint_armed
from reconciler.store.local import DISK_FULL, StorageError

log = logging.getLogger(__name__)

HISTORY_NAME = ".reconciler/history.jsonl"

RunState = Literal["pending", "running", "completed", "failed", "skipped"]
FINAL_STATES: frozenset[str] = frozenset({"completed", "failed", "skipped"})


def utc_now() -> str:
    # The schedule's clock, so RECONCILE_NOW rehearsals keep a consistent history.
    from reconciler.engine.schedule import now

    return now().isoformat(timespec="milliseconds").replace("+00:00", "Z")


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
    bytes: int = 0
    error: str | None = None
    config_digest: str | None = None
    revision: str | None = None  # git commit of the config, when known
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return f"{self.channel}/{self.mirror}" if self.mirror else self.channel

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def new_run(
    channel: str,
    mirror: str | None,
    *,
    config_digest: str | None = None,
    revision: str | None = None,
) -> RunRecord:
    return RunRecord(
        run_id=uuid.uuid4().hex[:12],
        channel=channel,
        mirror=mirror,
        state="pending",
        started=utc_now(),
        config_digest=config_digest,
        revision=revision,
    )


def _write_all(fd: int, data: bytes) -> None:
    """Write all of ``data``: on a filling disk ``os.write`` writes less, then raises."""
    while data:
        data = data[os.write(fd, data) :]


class History:
    """The history file of one channel folder."""

    def __init__(self, channel_dir: Path) -> None:
        self.path = channel_dir / HISTORY_NAME

    def append(self, record: RunRecord) -> RunRecord:
        """Record a state change; the line goes out in one ``write`` and is fsynced."""
        line = json.dumps(record.to_json(), sort_keys=True, separators=(",", ":")) + "\n"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # A torn line left by an earlier crash must not swallow this one.
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    line = "\n" + line
                data = line.encode()
                if checkpoint_armed():
                    # Two writes only under the crash harness, to leave a torn line behind.
                    _write_all(fd, data[: len(data) // 2])
                    checkpoint("history.mid_append")
                    data = data[len(data) // 2 :]
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk: at worst a torn line, which readers skip
            hint = "free some disk space and run again" if exc.errno in DISK_FULL else None
            raise StorageError(
                f"cannot write {self.path}: {exc.strerror or exc}", hint=hint
            ) from exc
        return record

    def transition(self, record: RunRecord, state: RunState, **changes: Any) -> RunRecord:
        if state in FINAL_STATES and "finished" not in changes:
            changes["finished"] = utc_now()
        return self.append(replace(record, state=state, **changes))

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) == b"\n"

    def lines(self) -> Iterator[RunRecord]:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return
        with handle:
            for number, raw in enumerate(handle, 1):
                try:
                    data = json.loads(raw)
                    if not isinstance(data, dict):
                        raise ValueError("not an object")
                    yield RunRecord.from_json(data)
                except (ValueError, TypeError) as exc:
                    log.debug(
                        "%s:%d: ignoring unreadable history line (%s)", self.path, number, exc
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
        for record in reversed(self.runs()):
            if record.mirror != mirror:
                continue
            if started_only and record.state in ("pending", "skipped"):
                continue
            return record
        return None
