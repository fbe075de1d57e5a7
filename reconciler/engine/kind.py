"""What the engine asks of a channel kind (conda, PyPI, ...), and what it gets back.

The engine knows no kind: the command layer hands it a :class:`KindRegistry`
(``reconciler.kinds.REGISTRY``) and the engine calls the :class:`Kind` registered
for each channel. A kind plans one channel into a :class:`ChannelWork` (its
:class:`~reconciler.engine.plan.ChannelPlan` plus whatever it needs to carry it
out), executes that work, and reports what it published. Everything between —
schedules, locks, staleness checks, history, state, reports — is the engine's.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from reconciler.config.models import AnyChannelModel, LoadedConfig
from reconciler.engine.plan import Action, ChannelPlan, MirrorPlan
from reconciler.engine.progress import Reporter
from reconciler.engine.state import InventoryEntry, LoadedState
from reconciler.store.base import Store


@dataclass
class PlanRequest:
    """Everything a kind needs to plan one channel."""

    loaded: LoadedConfig
    channel: AnyChannelModel
    position: int  # the channel's index in the configuration (for key paths)
    store: Store
    state: LoadedState
    mirrors: list[MirrorPlan]  # schedules: which mirrors refresh now
    scope: set[str] | None  # --mirror: only these mirrors' records may change (None: all)
    cache_dir: Path | None  # the HTTP cache, outside every channel
    created_ms: int  # the plan's time: CEP-47 stamps of packages first indexed now
    expected: Mapping[tuple[str, str], str] | None = None  # a saved plan's upstream digests
    reporter: Reporter | None = None
    grace: float = 0.0  # seconds an unpublished file stays before it is deleted

    @property
    def refresh(self) -> set[str]:
        return {m.name for m in self.mirrors if m.refresh}

    @property
    def config_dir(self) -> Path:
        return self.loaded.base_dir


class ChannelWork(Protocol):
    """A kind's plan of one channel, ready to be carried out."""

    plan: ChannelPlan

    def close(self) -> None: ...


@dataclass
class MirrorOutcome:
    bytes: int = 0
    seconds: float = 0.0
    error: str | None = None


@dataclass(frozen=True)
class Unpublished:
    """A file the published index stopped naming: deleted after the grace period."""

    key: str
    source: str = "local"  # the mirror that placed it
    sha256: str | None = None
    tag: str | None = None  # the store's tag of the bytes to delete (None: stat it)


@dataclass
class Outcome:
    """What executing a channel's work did (reports and history are built from it)."""

    executed: list[Action] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    mirrors: dict[str, MirrorOutcome] = field(default_factory=dict)
    inventory: dict[str, InventoryEntry] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    # Files no longer named by the published index: the engine records them as pending
    # deletions and deletes them once the grace period is over (never the kind itself).
    unpublished: list[Unpublished] = field(default_factory=list)

    @property
    def bytes(self) -> int:
        return sum(m.bytes for m in self.mirrors.values())


@dataclass(frozen=True)
class Explanation:
    channel: str
    location: str
    name: str
    source: str  # "local" or the mirror's name
    selected: bool
    reason: str

    def format(self) -> str:
        verdict = "in" if self.selected else "out"
        origin = "local package" if self.source == "local" else f"mirror {self.source}"
        return f"{self.channel}/{self.location}/{self.name} ({origin}): {verdict} — {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Kind(Protocol):
    """One kind of channel. Implementations live in ``reconciler.kinds``."""

    name: str

    def published(self, channel: AnyChannelModel, store: Store) -> dict[str, str]:
        """A digest of what each location publishes now (cheap: names, sizes, tags)."""
        ...

    def plan(self, request: PlanRequest) -> ChannelWork:
        """Work out the channel's plan; writes nothing anywhere in the channel."""
        ...

    def execute(self, work: ChannelWork, store: Store, reporter: Reporter) -> Outcome:
        """Carry out ``work`` (made by :meth:`plan`) under the channel's lock."""
        ...

    def counts(self, channel: AnyChannelModel, store: Store) -> dict[str, int | None]:
        """Packages published per location (None: not indexed)."""
        ...

    def named(self, channel: AnyChannelModel, store: Store, keys: Collection[str]) -> set[str]:
        """Which of ``keys`` the published index names now (those are never deleted)."""
        ...

    def explain(self, request: PlanRequest, query: str) -> Iterator[Explanation]:
        """Why packages matching ``query`` are in or out; ValueError if it cannot read it."""
        ...


class KindRegistry(Protocol):
    def kind_of(self, channel: AnyChannelModel) -> Kind: ...
