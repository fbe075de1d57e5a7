"""The status page (``/``) and its data (``/api/status``): channels, mirrors, runs.

Plain HTML and inline SVG: no script, no build step, nothing fetched from
elsewhere, so it works on an air-gapped network. Times are shown in UTC and
relative to now. Every link is relative, so the pages work under ``/t/<token>/``
and behind a path prefix; everything shown is escaped (names, errors and filter
values come from configurations and upstreams). The helpers here (layout, the
timeline, progress) are shared with the views of :mod:`reconciler.serve.views`.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

from reconciler.config.models import AnyChannelModel, Channel, LoadedConfig
from reconciler.engine.status import collect_status

_COLOURS = {
    "completed": "#2e7d32",
    "failed": "#c62828",
    "running": "#f9a825",
    "skipped": "#757575",
    "pending": "#1565c0",
}
REFRESH_SECONDS = 5  # how often a page reloads itself while a run is in progress
VIEWS = "-"  # the first segment of the views' URLs: never a channel name

e = html.escape

_CSS = (
    "body{font-family:system-ui,sans-serif;margin:0;color:#222}"
    "nav{background:#263238;padding:.6em 2em}nav a{color:#fff;margin-right:1.5em;"
    "text-decoration:none}main{margin:1.2em 2em 3em}"
    "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;"
    "text-align:left;border-bottom:1px solid #ddd;vertical-align:top}th{background:#f4f4f4}"
    ".num{text-align:right}.nowrap{white-space:nowrap}.muted{color:#666}"
    "code{background:#f4f4f4;padding:0 .25em}"
    ".completed{color:#2e7d32}.failed{color:#c62828}.running{color:#f9a825}"
    ".skipped{color:#757575}.pending{color:#1565c0}"
    ".progress{background:#fff8e1;border-left:4px solid #f9a825;padding:.5em 1em;margin:.5em 0}"
    "progress{width:18em;vertical-align:middle}ul.filters{padding-left:1.2em}"
    "form.search input[type=search]{width:18em}.pages a{margin-right:.8em}"
)


def _parse_time(text: Any) -> datetime | None:
    if not text or not isinstance(text, str):
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def relative(when: datetime | None, now: datetime) -> str:
    if when is None:
        return ""
    seconds = (now - when).total_seconds()
    future = seconds < 0
    seconds = abs(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = f"{seconds / size:.0f} {unit}"
            break
    else:
        amount = f"{seconds:.0f} s"
    return f"in {amount}" if future else f"{amount} ago"


def size_text(value: Any) -> str:
    """``1.2 MB``: bytes for people."""
    if type(value) is not int:
        return ""
    amount = float(value)
    for unit in ("B", "kB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} TB"  # pragma: no cover (the loop returns)


def duration_text(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds < 0:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def link(href: str, text: str, **attributes: str) -> str:
    """``<a>``: ``href`` is escaped as an attribute, ``text`` as text."""
    extra = "".join(f' {k.rstrip("_")}="{e(v)}"' for k, v in attributes.items())
    return f'<a href="{e(href)}"{extra}>{e(text)}</a>'


def seg(value: str) -> str:
    """One URL path segment (names are URL-safe by the schema; history is not trusted)."""
    return quote(value, safe="")


def channel_href(root: str, channel: str) -> str:
    return f"{root}{VIEWS}/channel/{seg(channel)}"


def mirror_href(root: str, channel: str, mirror: str) -> str:
    return f"{root}{VIEWS}/mirror/{seg(channel)}/{seg(mirror)}"


def run_href(root: str, channel: str, run_id: str) -> str:
    return f"{root}{VIEWS}/run/{seg(channel)}/{seg(run_id)}"


def files_href(root: str, channel: AnyChannelModel) -> str | None:
    """The channel's own index page (None: it has none): ``index.html`` or ``simple/``."""
    if isinstance(channel, Channel):
        return f"{root}{seg(channel.name)}/" if channel.index.html else None
    return f"{root}{seg(channel.name)}/simple/"


def files_link(root: str, channel: AnyChannelModel | None) -> str:
    href = files_href(root, channel) if channel is not None else None
    return f"{link(href, 'files')} · " if href else ""


def state_html(run: Mapping[str, Any] | None) -> str:
    """A run's state, coloured; an unfinished run whose process died says so."""
    if not run:
        return '<span class="muted">never</span>'
    state = str(run.get("state"))
    text = f'<span class="{e(state)}">{e(state)}</span>'
    if run.get("interrupted"):
        text += ' <span class="muted">(interrupted: no process holds the lock)</span>'
    return text


def counts_text(run: Mapping[str, Any]) -> str:
    text = f"+{run.get('added', 0)} ~{run.get('updated', 0)} -{run.get('removed', 0)}"
    if run.get("restored"):
        text += f" restored {run['restored']}"
    return text


def progress_html(progress: Mapping[str, Any] | None, now: datetime) -> str:
    """Where a running run is: its step, and how far (a ``<progress>`` bar, no script)."""
    if not progress:
        return ""
    step = str(progress.get("step") or "")
    done, total = progress.get("done"), progress.get("total")
    text = e(step)
    bar = ""
    if type(done) is int and type(total) is int and total > 0:
        unit = "files" if step == "downloading" else str(progress.get("unit") or "")
        text += f" {done}/{total} {e(unit)}".rstrip()
        bar = f' <progress value="{min(done, total)}" max="{total}"></progress>'
    if type(progress.get("bytes_total")) is int:
        text += (
            f" ({e(size_text(progress.get('bytes_done') or 0))} of "
            f"{e(size_text(progress['bytes_total']))})"
        )
    updated = relative(_parse_time(progress.get("updated")), now)
    return (
        f'<div class="progress"><strong>running</strong>: <span class="step">{text}</span>{bar}'
        f' <span class="muted">updated {e(updated)}</span></div>\n'
    )


def is_live(run: Mapping[str, Any] | None) -> bool:
    """A run in progress (whose process holds the channel's lock)."""
    if not run:
        return False
    return run.get("state") in ("pending", "running") and not run.get("interrupted")


def page(title: str, body: str, *, root: str, refresh: bool = False) -> str:
    """A whole page. ``root`` leads back to the server's top from this page, relatively."""
    home = root or "./"
    meta = f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">\n' if refresh else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"{meta}<title>{e(title)}</title>\n<style>{_CSS}</style>\n"
        # An empty icon: no /favicon.ico request, no 404 in the browser console.
        '<link rel="icon" href="data:,">\n</head>\n<body>\n'
        f"<nav>{link(home, 'conda-reconcile')}{link(f'{root}{VIEWS}/mirrors', 'All mirrors')}"
        "</nav>\n<main>\n" + body + "</main>\n</body>\n</html>\n"
    )


# -- the timeline ---------------------------------------------------------------------------

TIMELINE_WIDTH = 800
MIN_SPAN = 3600.0  # the timeline shows at least an hour
_TICKS = (60, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)


def timeline_scale(runs: Iterable[Mapping[str, Any]], now: datetime) -> tuple[datetime, float]:
    """The left edge and the span (seconds) of a timeline of ``runs``: from the earliest
    run to now, at least :data:`MIN_SPAN`, with a little room before the first run."""
    starts = [t for t in (_parse_time(r.get("started")) for r in runs) if t is not None]
    earliest = min([*starts, now])
    span = max((now - earliest).total_seconds(), MIN_SPAN) * 1.04
    return now - timedelta(seconds=span), span


def _ticks(left: datetime, span: float) -> list[tuple[datetime, str]]:
    step = next((t for t in _TICKS if span / t <= 6), 2592000)
    first = math.ceil(left.timestamp() / step) * step
    fmt = "%m-%d" if step >= 86400 else ("%m-%d %H:%M" if span > 86400 else "%H:%M")
    ticks = []
    at = float(first)
    while at <= left.timestamp() + span:
        when = datetime.fromtimestamp(at, timezone.utc)
        ticks.append((when, when.strftime(fmt)))
        at += step
    return ticks


def timeline(runs: Sequence[Mapping[str, Any]], now: datetime, *, root: str, channel: str) -> str:
    """An SVG strip of ``runs`` (each links to its page), scaled to the runs shown."""
    width, height = TIMELINE_WIDTH, 56
    left, span = timeline_scale(runs, now)

    def x_of(when: datetime) -> float:
        seconds = min(max((when - left).total_seconds(), 0.0), span)
        return width * seconds / span

    bars = []
    for run in runs:
        start = _parse_time(run.get("started"))
        if start is None:
            continue
        end = _parse_time(run.get("finished")) or (now if is_live(run) else start)
        x = x_of(start)
        w = max(3.0, x_of(end) - x)
        x = min(x, width - w)
        state = str(run.get("state"))
        colour = _COLOURS.get(state, "#1565c0")
        label = (
            f"{run.get('target')}: {state}, started {run.get('started')}"
            f" ({duration_text(run.get('duration_s'))})"
        )
        href = run_href(root, channel, str(run.get("run_id", "")))
        bars.append(
            f'<a href="{e(href)}"><rect x="{x:.1f}" y="6" width="{w:.1f}" height="24" '
            f'fill="{colour}"><title>{e(label)}</title></rect></a>'
        )
    ticks = []
    for when, text in _ticks(left, span):
        x = x_of(when)
        ticks.append(
            f'<line x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="36" stroke="#ccc"/>'
            f'<text x="{x:.1f}" y="48" font-size="10" text-anchor="middle">{e(text)}</text>'
        )
    since = left.strftime("%Y-%m-%d %H:%M")
    return (
        f'<svg class="timeline" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="runs from {e(since)} UTC to now" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="0" y="0" width="{width}" height="36" fill="#f4f4f4"/>'
        + "".join(ticks)
        + "".join(bars)
        + f'<text x="{width - 2}" y="48" font-size="10" text-anchor="end">now</text></svg>'
    )


def filters_html(rules: list[Mapping[str, Any]], empty: str = "none") -> str:
    """Filter rules as ``key: rule`` lines, the way plans and ``explain`` name them."""
    if not rules:
        return f'<p class="muted">{e(empty)}</p>\n'
    items = "".join(
        f"<li><code>{e(str(r.get('key')))}</code>: {e(str(r.get('rule')))}</li>" for r in rules
    )
    return f'<ul class="filters">{items}</ul>\n'


# -- the overview ---------------------------------------------------------------------------


def status_data(loaded: LoadedConfig) -> dict[str, Any]:
    """The engine's status model, as JSON data (``/api/status``)."""
    from reconciler.kinds import REGISTRY

    return collect_status(loaded, REGISTRY).model_dump(mode="json")


def redact_status(
    status: dict[str, Any], private: list[str], granted: frozenset[str]
) -> dict[str, Any]:
    """``status`` as one client may see it: a private channel its token does not grant
    shows its name only (no path, packages, mirrors, sources or runs)."""
    hidden = set(private) - granted
    channels = []
    for channel in status["channels"]:
        access = "private" if channel["name"] in private else "public"
        if channel["name"] in hidden:
            channels.append({"name": channel["name"], "access": access})
        else:
            channels.append({**channel, "access": access})
    return {**status, "channels": channels}


def visible(private: Iterable[str], granted: frozenset[str], channel: str) -> bool:
    """Whether a client with ``granted`` may see ``channel`` (the rule of :func:`redact_status`)."""
    return channel not in set(private) - granted


def render_status_html(status: dict[str, Any], loaded: LoadedConfig | None = None) -> str:
    configured = {c.name: c for c in loaded.config.channels} if loaded is not None else {}
    now = _parse_time(status["generated"]) or datetime.now(timezone.utc)
    root = ""
    live = False
    parts = [
        "<h1>conda-reconcile</h1>\n",
        f"<p>Generated {e(now.strftime('%Y-%m-%d %H:%M:%S'))} UTC · "
        f"{link(f'{VIEWS}/mirrors', 'all mirrors')} · "
        '<a href="api/status">JSON</a></p>\n',
    ]
    for channel in status["channels"]:
        name = e(channel["name"])
        if "packages" not in channel:  # a private channel this client has no token for
            parts.append(
                f'<section class="channel private" id="channel-{name}">\n<h2>{name}</h2>\n'
                "<p>private: its contents are shown with a token that grants it</p>\n"
                "</section>\n"
            )
            continue
        counts = ", ".join(
            f"{e(s)}: {'not indexed' if n is None else n}" for s, n in channel["packages"].items()
        )
        passive = channel["passive"]
        parts.append(
            f'<section class="channel" id="channel-{name}">\n'
            f"<h2>{link(channel_href(root, channel['name']), channel['name'])}</h2>\n"
            f"<p>{e(channel['path'])} · packages {counts} · "
            f"{files_link(root, configured.get(channel['name']))}passive fetches "
            f"{passive['fetches']} ({passive['bytes']} bytes), hits {passive['hits']}, "
            f"failures {passive['failures']}</p>\n"
        )
        if channel.get("progress"):
            live = True
            parts.append(progress_html(channel["progress"], now))
        failures = passive.get("recent_failures") or []
        if failures:
            parts.append(
                '<table class="passive-failures"><tr><th>failed passive fetch</th>'
                "<th>when (UTC)</th><th>error</th></tr>\n"
            )
            for failure in failures:
                when = _parse_time(failure.get("time"))
                parts.append(
                    f"<tr><td>{e(failure.get('file', ''))}</td>"
                    f"<td>{e(failure.get('time', ''))} ({e(relative(when, now))})</td>"
                    f'<td class="failed">{e(failure.get("error", ""))}</td></tr>\n'
                )
            parts.append("</table>\n")
        if channel["mirrors"]:
            parts.append(
                '<table class="mirrors"><tr><th>mirror</th><th>mode</th><th>schedule</th>'
                "<th>last run</th><th>next due</th><th></th></tr>\n"
            )
            for mirror in channel["mirrors"]:
                last = mirror["last_run"]
                if last:
                    when = _parse_time(last.get("finished") or last.get("started"))
                    text = (
                        f"{state_html(last)} {e(relative(when, now))} ({e(counts_text(last))})"
                        + (f": {e(last['error'])}" if last.get("error") else "")
                    )
                else:
                    text = "never"
                due = _parse_time(mirror["next_due"])
                due_text = "next apply" if mirror["due_now"] or due is None else relative(due, now)
                href = mirror_href(root, channel["name"], mirror["name"])
                parts.append(
                    f"<tr><td>{e(mirror['name'])}</td><td>{e(mirror['mode'])}</td>"
                    f"<td>{e(mirror['schedule'] or 'every apply')}</td><td>{text}</td>"
                    f"<td>{e(due_text)}</td><td>{link(href, 'details')}</td></tr>\n"
                )
            parts.append("</table>\n")
        history = channel["history"]
        live = live or any(is_live(run) for run in history)
        parts.append(timeline(history, now, root=root, channel=channel["name"]))
        parts.append(
            '\n<table class="history"><tr><th>started (UTC)</th><th>target</th><th>state</th>'
            "<th>+</th><th>~</th><th>-</th><th>error</th></tr>\n"
        )
        for run in history:
            started = _parse_time(run["started"])
            href = run_href(root, channel["name"], run["run_id"])
            parts.append(
                f"<tr><td>{link(href, run['started'])} ({e(relative(started, now))})</td>"
                f"<td>{e(run['target'])}</td>"
                f'<td class="{e(run["state"])}">{e(run["state"])}</td><td>{run["added"]}</td>'
                f"<td>{run['updated']}</td><td>{run['removed']}</td>"
                f"<td>{e(run.get('error') or '')}</td></tr>\n"
            )
        parts.append("</table>\n</section>\n")
    return page("conda-reconcile status", "".join(parts), root=root, refresh=live)
