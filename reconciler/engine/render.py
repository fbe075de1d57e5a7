"""Human text for a plan, in the spirit of Terraform's: ``+``, ``~``, ``-`` by channel and
location (subdir or project), each action with its reason code and detail."""

from __future__ import annotations

from collections.abc import Iterator

from reconciler.engine.plan import Action, ChannelPlan, Plan

# Beyond this many actions of one kind in one subdir, the rest is summarised.
COLLAPSE_AFTER = 20
SHOW_WHEN_COLLAPSED = 10

_COLOURS = {"+": "green", "~": "yellow", "-": "red"}
_NOUNS = {
    "add": "additions",
    "update": "changes",
    "remove": "removals",
    "restore": "restores",
    "reindex": "re-indexes",
}


def _size(amount: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if amount >= scale:
            return f"{amount / scale:.1f} {unit}"
    return f"{amount} B"


def _action_lines(action: Action) -> Iterator[str]:
    if action.kind == "reindex":
        files = f": {', '.join(action.files)}" if action.files else ""
        yield f"~ reindex{files}  ({action.text})"
        return
    source = "" if action.source == "local" else f" [{action.source}]"
    fetch = ""
    if action.download is not None:
        fetch = f", download {_size(action.download)}" if action.download else ", download"
    yield f"{action.symbol} {action.name}{source}  ({action.text}{fetch})"
    for line in action.diff:
        yield f"    {line}"


def _location_blocks(channel: ChannelPlan, full: bool) -> Iterator[tuple[str | None, list[str]]]:
    order: list[str | None] = []
    by_location: dict[str | None, list[Action]] = {}
    for action in channel.actions:
        if action.location not in by_location:
            order.append(action.location)
        by_location.setdefault(action.location, []).append(action)
    for location in order:
        lines: list[str] = []
        actions = by_location[location]
        for kind in ("add", "update", "remove", "restore", "reindex"):
            of_kind = [a for a in actions if a.kind == kind]
            shown = of_kind
            if not full and len(of_kind) > COLLAPSE_AFTER:
                shown = of_kind[:SHOW_WHEN_COLLAPSED]
            for action in shown:
                lines.extend(_action_lines(action))
            if len(shown) < len(of_kind):
                lines.append(
                    f"  ... and {len(of_kind) - len(shown)} more {_NOUNS[kind]} (--full shows all)"
                )
        yield location, lines


def render_text(plan: Plan, *, full: bool = False) -> list[str]:
    """Plain lines; :func:`print_plan` adds colour on a terminal.

    Warnings are shown when they are new (an apply has not seen them yet); the ones
    still outstanding are counted, and ``reconcile status`` lists them.
    """
    lines: list[str] = []
    for channel in plan.channels:
        new = channel.new_warnings
        if not channel.has_changes and not new and not channel.errors and not channel.mirrors:
            continue
        header = f"channel {channel.name} ({channel.path})"
        if channel.create:
            header += " — will be created"
        lines.append(header)
        for error in channel.errors:
            lines.append(f"  error: {error} (its packages stay as published)")
        for warning in new:
            lines.append(f"  warning: {warning.message}")
        old = len(channel.warnings) - len(new)
        if old:
            lines.append(f"  ({old} warning(s) still outstanding: `reconcile status` lists them)")
        for mirror in channel.mirrors:
            state = "refreshes" if mirror.refresh else "not refreshed"
            last = f"; last run {mirror.last_run}" if mirror.last_run else ""
            lines.append(f"  mirror {mirror.name}: {state} ({mirror.reason}{last})")
        for location, block in _location_blocks(channel, full):
            lines.append(f"  {location or '(channel)'}")
            lines.extend(f"    {line}" for line in block)
        lines.append("")
    lines.append(plan.summary())
    return lines


def print_plan(plan: Plan, *, full: bool = False, colour: bool = False) -> None:
    lines = render_text(plan, full=full)
    if not colour:
        print("\n".join(lines))
        return
    from rich.console import Console
    from rich.text import Text

    console = Console(highlight=False, soft_wrap=True)
    for line in lines:
        stripped = line.lstrip()
        style = _COLOURS.get(stripped[:1]) if stripped[:2] in ("+ ", "~ ", "- ") else None
        if line.startswith("channel "):
            style = "bold"
        console.print(Text(line, style=style or ""))
