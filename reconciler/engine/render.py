"""Human text for a plan, in the spirit of Terraform's: ``+``, ``~``, ``-`` by channel/subdir."""

from __future__ import annotations

from collections.abc import Iterator

from reconciler.engine.plan import Action, ChannelPlan, Plan

# Beyond this many actions of one kind in one subdir, the rest is summarised.
COLLAPSE_AFTER = 20
SHOW_WHEN_COLLAPSED = 10

_COLOURS = {"+": "green", "~": "yellow", "-": "red"}
_NOUNS = {"add": "additions", "update": "changes", "remove": "removals"}


def _action_lines(action: Action) -> Iterator[str]:
    if action.kind == "reindex":
        yield f"~ reindex: {', '.join(action.files)}  ({action.reason})"
        return
    source = "" if action.source == "local" else f" [{action.source}]"
    yield f"{action.symbol} {action.filename}{source}  ({action.reason})"
    for line in action.diff:
        yield f"    {line}"


def _subdir_blocks(channel: ChannelPlan, full: bool) -> Iterator[tuple[str | None, list[str]]]:
    order: list[str | None] = []
    by_subdir: dict[str | None, list[Action]] = {}
    for action in channel.actions:
        if action.subdir not in by_subdir:
            order.append(action.subdir)
        by_subdir.setdefault(action.subdir, []).append(action)
    for subdir in order:
        lines: list[str] = []
        actions = by_subdir[subdir]
        for kind in ("add", "update", "remove", "reindex"):
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
        yield subdir, lines


def render_text(plan: Plan, *, full: bool = False) -> list[str]:
    """Plain lines; :func:`print_plan` adds colour on a terminal."""
    lines: list[str] = []
    for channel in plan.channels:
        if not channel.has_changes and not channel.warnings and not channel.mirrors:
            continue
        header = f"channel {channel.name} ({channel.path})"
        if channel.create:
            header += " — will be created"
        lines.append(header)
        for warning in channel.warnings:
            lines.append(f"  warning: {warning}")
        for mirror in channel.mirrors:
            state = "due" if mirror.due else "not due"
            last = f"; last run {mirror.last_run}" if mirror.last_run else "; never run"
            lines.append(f"  mirror {mirror.name}: {state} ({mirror.reason}{last})")
        for subdir, block in _subdir_blocks(channel, full):
            lines.append(f"  {subdir or '(channel)'}")
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
