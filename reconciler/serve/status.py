"""The status page (``/``) and its data (``/api/status``): channels, mirrors, runs.

Plain HTML and inline SVG: no script, no build step, nothing fetched from
elsewhere, so it works on an air-gapped network. Times are shown in UTC and
relative to now.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from typing import Any
from urllib.parse import quote

from reconciler.config.models import LoadedConfig
from reconciler.engine.status import collect_status

_COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "running": "#f9a825", "skipped": "#757575"}


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


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


def _timeline(runs: list[dict[str, Any]], now: datetime) -> str:
    """An SVG strip: one bar per run over the last day, coloured by outcome."""
    width, height, span = 600, 40, 86400.0
    bars = []
    for run in runs:
        start = _parse_time(run.get("started"))
        end = _parse_time(run.get("finished")) or now
        if start is None or (now - start).total_seconds() > span:
            continue
        w = max(3.0, width * (end - start).total_seconds() / span)
        x = min(width * (1 - (now - start).total_seconds() / span), width - w)
        colour = _COLOURS.get(str(run.get("state")), "#1565c0")
        label = html.escape(f"{run.get('mirror') or run.get('channel')}: {run.get('state')}")
        bars.append(
            f'<rect x="{x:.1f}" y="8" width="{w:.1f}" height="24" fill="{colour}">'
            f"<title>{label}</title></rect>"
        )
    return (
        f'<svg class="timeline" width="{width}" height="{height}" role="img" '
        f'aria-label="runs in the last 24 hours" xmlns="http://www.w3.org/2000/svg">'
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#f4f4f4"/>'
        + "".join(bars)
        + f'<text x="2" y="38" font-size="9">24 h ago</text>'
        f'<text x="{width - 22}" y="38" font-size="9">now</text></svg>'
    )


def render_status_html(status: dict[str, Any]) -> str:
    e = html.escape
    now = _parse_time(status["generated"]) or datetime.now(timezone.utc)
    parts = [
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n',
        "<title>conda-reconcile status</title>\n<style>",
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}",
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{padding:.25em .8em;",
        "text-align:left;border-bottom:1px solid #ddd}th{background:#f4f4f4}",
        ".completed{color:#2e7d32}.failed{color:#c62828}.running{color:#f9a825}",
        # An empty icon: no /favicon.ico request, no 404 in the browser console.
        '</style>\n<link rel="icon" href="data:,">\n</head>\n<body>\n',
        "<h1>conda-reconcile</h1>\n",
        # Relative links: the page also works under /t/<token>/ and behind a path prefix.
        f"<p>Generated {e(now.strftime('%Y-%m-%d %H:%M:%S'))} UTC · "
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
            f'<h2><a href="{e(quote(channel["name"]), quote=True)}/">{name}</a></h2>\n'
            f"<p>{e(channel['path'])} · packages {counts} · passive fetches "
            f"{passive['fetches']} ({passive['bytes']} bytes), hits {passive['hits']}, "
            f"failures {passive['failures']}</p>\n"
        )
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
                "<th>last run</th><th>next due</th></tr>\n"
            )
            for mirror in channel["mirrors"]:
                last = mirror["last_run"]
                if last:
                    when = _parse_time(last.get("finished") or last.get("started"))
                    text = (
                        f'<span class="{e(last["state"])}">{e(last["state"])}</span> '
                        f"{e(relative(when, now))} (+{last['added']} ~{last['updated']} "
                        f"-{last['removed']})"
                        + (f": {e(last['error'])}" if last.get("error") else "")
                    )
                else:
                    text = "never"
                due = _parse_time(mirror["next_due"])
                due_text = "next apply" if mirror["due_now"] or due is None else relative(due, now)
                parts.append(
                    f"<tr><td>{e(mirror['name'])}</td><td>{e(mirror['mode'])}</td>"
                    f"<td>{e(mirror['schedule'] or 'every apply')}</td><td>{text}</td>"
                    f"<td>{e(due_text)}</td></tr>\n"
                )
            parts.append("</table>\n")
        parts.append(_timeline(channel["history"], now))
        parts.append(
            '\n<table class="history"><tr><th>started (UTC)</th><th>target</th><th>state</th>'
            "<th>+</th><th>~</th><th>-</th><th>error</th></tr>\n"
        )
        for run in channel["history"]:
            target = run["target"]
            started = _parse_time(run["started"])
            parts.append(
                f"<tr><td>{e(run['started'])} ({e(relative(started, now))})</td>"
                f"<td>{e(target)}</td>"
                f'<td class="{e(run["state"])}">{e(run["state"])}</td><td>{run["added"]}</td>'
                f"<td>{run['updated']}</td><td>{run['removed']}</td>"
                f"<td>{e(run.get('error') or '')}</td></tr>\n"
            )
        parts.append("</table>\n</section>\n")
    parts.append("</body>\n</html>\n")
    return "".join(parts)
