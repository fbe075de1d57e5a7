"""The admin views under ``/-/``: every mirror, a channel, a mirror, a run.

``-`` can never be a channel name (names start with a letter or a digit), so these
URLs never shadow a channel:

====================================  =========================================================
``/-/mirrors``                        every mirror of every channel the client may see
``/-/channel/<channel>``              a channel: filters, mirrors, its packages (search, pages)
``/-/mirror/<channel>/<mirror>``      a mirror: effective filters, progress, its last runs
``/-/run/<channel>/<run_id>``         a run: per location counts, reasons, examples, errors
====================================  =========================================================

Each is HTML, or JSON with ``?format=json`` (the engine's status models). The
pages are built like the status page: no script, relative links (they work under
``/t/<token>/`` and behind a path prefix), everything escaped, and a
``<meta http-equiv="refresh">`` while a run is in progress. Private channels follow
the server's policy: a client that may not read one gets ``401`` (no credentials) or
``403`` (a token that does not grant it) for its pages, whatever follows the
channel's name, and ``/-/mirrors`` lists its name only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any
from urllib.parse import quote, urlencode

from reconciler.config.models import AnyChannelModel, Channel, LoadedConfig
from reconciler.engine.clock import format_time, now
from reconciler.engine.status import (
    ChannelStatus,
    MirrorStatus,
    mirror_statuses,
    mirror_view,
    run_view,
)
from reconciler.serve import auth
from reconciler.serve.packages import ALL, PackageListings, PackagesPage, counts, packages_page
from reconciler.serve.status import (
    VIEWS,
    _parse_time,
    channel_href,
    counts_text,
    duration_text,
    e,
    files_link,
    filters_html,
    is_live,
    link,
    mirror_href,
    page,
    progress_html,
    relative,
    run_href,
    size_text,
    state_html,
    timeline,
)

HTML = "text/html; charset=utf-8"
JSON = "application/json"


@dataclass
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Viewer:
    """What one request may see: the configuration, and its grant."""

    loaded: LoadedConfig
    grant: auth.Grant

    def channel(self, name: str) -> AnyChannelModel | None:
        for channel in self.loaded.config.channels:
            if channel.name == name:
                return channel
        return None

    def may_read(self, channel: AnyChannelModel) -> bool:
        return channel.access != "private" or channel.name in self.grant.channels

    def reach(self, name: str) -> AnyChannelModel | Answer:
        """The channel ``name`` if this client may read it, else the answer: 404 for no
        such channel, 401/403 for a private one (before anything else is looked up, so
        the names inside a private channel stay private)."""
        channel = self.channel(name)
        if channel is None:
            return _plain(404, "")
        refused = self.refusal(channel)
        return channel if refused is None else refused

    def refusal(self, channel: AnyChannelModel) -> Answer | None:
        """The server's answer for a private channel this client may not read (None: may)."""
        if self.may_read(channel):
            return None
        if not self.grant.presented:
            return _plain(401, "this channel needs a token", auth.challenge())
        return _plain(403, "the token given does not grant this channel")


def _plain(status: int, text: str, headers: Mapping[str, str] | None = None) -> Answer:
    phrase = HTTPStatus(status).phrase
    body = f"{status} {phrase}\n{text}\n".encode()
    return Answer(
        status,
        body,
        {
            "Content-Type": "text/plain; charset=utf-8",
            "Cache-Control": "no-store",
            **(headers or {}),
        },
    )


def _html(text: str) -> Answer:
    return Answer(200, text.encode(), {"Content-Type": HTML, "Cache-Control": "no-cache"})


def _json(data: Any) -> Answer:
    body = json.dumps(data, indent=2).encode()
    return Answer(200, body, {"Content-Type": JSON, "Cache-Control": "no-cache"})


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None and len(value) < 10 else default
    except ValueError:
        return default


def respond(
    loaded: LoadedConfig,
    grant: auth.Grant,
    segments: list[str],
    query: Mapping[str, str],
    listings: PackageListings,
) -> Answer:
    """The answer to ``/-/<segments>`` (blocking: run it in a worker thread)."""
    viewer = Viewer(loaded, grant)
    if segments and segments[-1] == "" and len(segments) > 1:
        # A trailing slash would move the base of every relative link: send it back.
        target = "../" + quote(segments[-2], safe="")
        answer = _plain(301, "")
        answer.headers["Location"] = target
        return answer
    as_json = query.get("format") == "json"
    match segments:
        case ["mirrors"]:
            return _mirrors(viewer, as_json)
        case ["channel", name]:
            return _channel(viewer, name, query, listings, as_json)
        case ["mirror", name, mirror]:
            return _mirror(viewer, name, mirror, as_json)
        case ["run", name, run_id]:
            return _run(viewer, name, run_id, as_json)
    return _plain(404, "")


# -- all mirrors ------------------------------------------------------------------------------


def _mirrors(viewer: Viewer, as_json: bool) -> Answer:
    channels = viewer.loaded.config.channels
    shown = [c.name for c in channels if viewer.may_read(c)]
    hidden = [c.name for c in channels if not viewer.may_read(c)]
    mirrors = mirror_statuses(viewer.loaded, shown)
    generated = format_time(now())
    if as_json:
        return _json(
            {
                "generated": generated,
                "mirrors": [m.model_dump(mode="json") for m in mirrors],
                "private_channels": hidden,
            }
        )
    at = _parse_time(generated) or datetime.now(timezone.utc)
    root = "../"
    live = any(m.progress is not None or is_live(_dump(m.last_run)) for m in mirrors)
    rows = [
        "<h1>All mirrors</h1>\n",
        '<table class="all-mirrors"><tr><th>channel</th><th>mirror</th><th>source</th>'
        "<th>mode</th><th>subdirs / projects</th><th>schedule</th><th>state</th>"
        "<th>last run</th><th>next due</th></tr>\n",
    ]
    for mirror in mirrors:
        rows.append(_mirror_row(mirror, root, at))
    rows.append("</table>\n")
    if hidden:
        names = ", ".join(e(n) for n in hidden)
        rows.append(
            f'<p class="muted">private channels, shown with a token that grants them: {names}</p>\n'
        )
    if not mirrors:
        rows.append('<p class="muted">no mirrors</p>\n')
    return _html(page("All mirrors", "".join(rows), root=root, refresh=live))


def _dump(model: Any) -> dict[str, Any] | None:
    return model.model_dump(mode="json") if model is not None else None


def _last_run_text(last: Mapping[str, Any] | None, at: datetime, root: str, channel: str) -> str:
    """When the last run ended (a link to it), its counts and its error."""
    if not last:
        return ""
    when = _parse_time(last.get("finished") or last.get("started"))
    href = run_href(root, channel, str(last.get("run_id")))
    text = f"{link(href, relative(when, at))} ({e(counts_text(last))})"
    if last.get("error"):
        text += f': <span class="failed">{e(str(last["error"]))}</span>'
    return text


def _due_text(mirror: MirrorStatus, at: datetime) -> str:
    due = _parse_time(mirror.next_due)
    return "next apply" if mirror.due_now or due is None else relative(due, at)


def _mirror_row(mirror: MirrorStatus, root: str, at: datetime) -> str:
    last = _dump(mirror.last_run)
    state = progress_html(_dump(mirror.progress), at) if mirror.progress else state_html(last)
    return (
        f"<tr><td>{link(channel_href(root, mirror.channel), mirror.channel)}</td>"
        f"<td>{link(mirror_href(root, mirror.channel, mirror.name), mirror.name)}</td>"
        f"<td>{e(mirror.source)}</td><td>{e(mirror.mode)}</td>"
        f"<td>{e(', '.join(mirror.locations))}</td>"
        f'<td class="nowrap">{e(mirror.schedule or "every apply")}</td>'
        f'<td class="state">{state}</td><td>{_last_run_text(last, at, root, mirror.channel)}</td>'
        f"<td>{e(_due_text(mirror, at))}</td></tr>\n"
    )


# -- a channel ----------------------------------------------------------------------------------


def _channel(
    viewer: Viewer,
    name: str,
    query: Mapping[str, str],
    listings: PackageListings,
    as_json: bool,
) -> Answer:
    from reconciler.engine.status import channel_status
    from reconciler.kinds import REGISTRY

    channel = viewer.reach(name)
    if isinstance(channel, Answer):
        return channel
    position = viewer.loaded.config.channels.index(channel)
    status = channel_status(channel, REGISTRY, position=position, packages=counts(listings))
    packages = packages_page(
        listings,
        channel,
        location=query.get("location", ALL),
        query=query.get("q", ""),
        page=_int(query.get("page"), 1),
    )
    if as_json:
        return _json(
            {
                "channel": status.model_dump(mode="json"),
                "packages": packages.model_dump(mode="json"),
            }
        )
    return _html(render_channel(status, packages, channel))


def render_channel(status: ChannelStatus, packages: PackagesPage, channel: AnyChannelModel) -> str:
    at = _parse_time(format_time(now())) or datetime.now(timezone.utc)
    root = "../../"
    name = status.name
    counts = ", ".join(
        f"{e(s)}: {'not indexed' if n is None else n}" for s, n in status.packages.items()
    )
    parts = [
        f"<h1>Channel {e(name)}</h1>\n",
        f"<p>{e(status.kind)} · {e(status.access)} · {files_link(root, channel)}"
        f"packages {counts}</p>\n",
    ]
    if status.progress is not None:
        parts.append(progress_html(_dump(status.progress), at))
    for warning in status.warnings:
        parts.append(f'<p class="failed">warning: {e(warning)}</p>\n')
    parts.append(f"<h2>Filters</h2>\n<h3>Channel ({_scope(channel)})</h3>\n")
    parts.append(filters_html([r.model_dump() for r in status.filters]))
    for mirror in status.mirrors:
        title = link(mirror_href(root, name, mirror.name), mirror.name)
        parts.append(f"<h3>Mirror {title}</h3>\n")
        parts.append(filters_html([r.model_dump() for r in mirror.filters]))
    if status.mirrors:
        parts.append(
            '<h2>Mirrors</h2>\n<table class="mirrors"><tr><th>channel</th><th>mirror</th>'
            "<th>source</th><th>mode</th><th>subdirs / projects</th><th>schedule</th>"
            "<th>state</th><th>last run</th><th>next due</th></tr>\n"
        )
        parts.extend(_mirror_row(m, root, at) for m in status.mirrors)
        parts.append("</table>\n")
    parts.append(_packages_html(packages, name, root, isinstance(channel, Channel)))
    history = [r.model_dump(mode="json") for r in status.history]
    parts.append("<h2>Runs</h2>\n" + timeline(history, at, root=root, channel=name) + "\n")
    parts.append(_runs_table(history, name, root, at))
    live = status.progress is not None or any(is_live(r) for r in history)
    return page(f"Channel {name}", "".join(parts), root=root, refresh=live)


def _packages_html(packages: PackagesPage, channel: str, root: str, conda: bool) -> str:
    what = "subdir" if conda else "project"
    parts = [
        "<h2>Packages</h2>\n",
        # A GET form to this same page (action=""): works under any prefix.
        '<form class="search" method="get" action="">'
        f'<label>name <input type="search" name="q" value="{e(packages.query)}" '
        'placeholder="substring or glob, e.g. lib*"></label> ',
    ]
    if conda:
        options = [f'<option value=""{_selected(packages.location == "")}>every subdir</option>']
        options += [
            f'<option value="{e(loc)}"{_selected(packages.location == loc)}>{e(loc)}</option>'
            for loc in packages.locations
        ]
        parts.append(f'<label>{what} <select name="location">{"".join(options)}</select></label> ')
    elif packages.location:
        parts.append(f'<input type="hidden" name="location" value="{e(packages.location)}">')
    parts.append('<button type="submit">search</button></form>\n')
    shown_from = (packages.page - 1) * packages.per_page + 1 if packages.rows else 0
    shown_to = shown_from + len(packages.rows) - 1 if packages.rows else 0
    parts.append(
        f'<p class="muted">{packages.matched} of {packages.total} package file(s)'
        + (f" match {e(repr(packages.query))}" if packages.query else "")
        + (f", showing {shown_from} to {shown_to}" if packages.rows else "")
        + "</p>\n"
    )
    if packages.rows:
        note = "licence" if conda else "uploaded"
        kind = "build" if conda else "kind"
        parts.append(
            f'<table class="packages"><tr><th>name</th><th>version</th><th>{kind}</th>'
            f'<th>{what}</th><th class="num">size</th><th>{note}</th><th>file</th></tr>\n'
        )
        for row in packages.rows:
            folder = quote(row.location) if conda else f"packages/{quote(row.location)}"
            href = f"{root}{quote(channel, safe='')}/{folder}/{quote(row.filename)}"
            parts.append(
                f"<tr><td>{e(row.name)}</td><td>{e(row.version)}</td><td>{e(row.build)}</td>"
                f'<td>{e(row.location)}</td><td class="num">{e(size_text(row.size))}</td>'
                f"<td>{e(row.note)}</td><td>{link(href, row.filename)}</td></tr>\n"
            )
        parts.append("</table>\n")
    if packages.pages > 1:
        parts.append(_pager(packages))
    return "".join(parts)


def _scope(channel: AnyChannelModel) -> str:
    return "every mirror and local package" if isinstance(channel, Channel) else "every mirror"


def _selected(flag: bool) -> str:
    return " selected" if flag else ""


def _pager(packages: PackagesPage) -> str:
    def href(number: int) -> str:
        params = {"q": packages.query, "location": packages.location, "page": str(number)}
        return "?" + urlencode({k: v for k, v in params.items() if v})

    links = []
    if packages.page > 1:
        links.append(link(href(packages.page - 1), "← previous", rel="prev"))
    links.append(f"page {packages.page} of {packages.pages}")
    if packages.page < packages.pages:
        links.append(link(href(packages.page + 1), "next →", rel="next"))
    return f'<p class="pages">{" ".join(links)}</p>\n'


def _runs_table(runs: list[dict[str, Any]], channel: str, root: str, at: datetime) -> str:
    if not runs:
        return '<p class="muted">no runs yet</p>\n'
    parts = [
        '<table class="runs"><tr><th>started (UTC)</th><th>target</th><th>state</th>'
        '<th class="num">+</th><th class="num">~</th><th class="num">-</th>'
        '<th class="num">restored</th><th class="num">bytes</th><th class="num">duration</th>'
        "<th>error</th></tr>\n"
    ]
    for run in runs:
        started = _parse_time(run.get("started"))
        href = run_href(root, channel, str(run.get("run_id")))
        parts.append(
            f"<tr><td>{link(href, str(run.get('started')))} ({e(relative(started, at))})</td>"
            f"<td>{e(str(run.get('target')))}</td><td>{state_html(run)}</td>"
            f'<td class="num">{run.get("added", 0)}</td>'
            f'<td class="num">{run.get("updated", 0)}</td>'
            f'<td class="num">{run.get("removed", 0)}</td>'
            f'<td class="num">{run.get("restored", 0)}</td>'
            f'<td class="num">{e(size_text(run.get("bytes", 0)))}</td>'
            f'<td class="num">{e(duration_text(run.get("duration_s")))}</td>'
            f'<td class="failed">{e(str(run.get("error") or ""))}</td></tr>\n'
        )
    parts.append("</table>\n")
    return "".join(parts)


# -- a mirror -------------------------------------------------------------------------------------


def _mirror(viewer: Viewer, name: str, mirror_name: str, as_json: bool) -> Answer:
    channel = viewer.reach(name)
    if isinstance(channel, Answer):
        return channel
    view = mirror_view(viewer.loaded, name, mirror_name)
    if view is None:
        return _plain(404, "")
    if as_json:
        return _json(view.model_dump(mode="json"))
    at = _parse_time(view.generated) or datetime.now(timezone.utc)
    root = "../../../"
    mirror = view.mirror
    last = _dump(mirror.last_run)
    runs = [r.model_dump(mode="json") for r in view.runs]
    parts = [
        f"<h1>Mirror {e(mirror.name)}</h1>\n",
        f"<p>of channel {link(channel_href(root, name), name)} · state {state_html(last)}</p>\n",
    ]
    if mirror.progress is not None:
        parts.append(progress_html(_dump(mirror.progress), at))
    success = _parse_time(mirror.last_success)
    parts.append(
        '<table class="mirror">'
        f"<tr><th>source</th><td>{e(mirror.source)}</td></tr>"
        f"<tr><th>mode</th><td>{e(mirror.mode)}</td></tr>"
        f"<tr><th>subdirs / projects</th><td>{e(', '.join(mirror.locations))}</td></tr>"
        f"<tr><th>schedule</th><td>{e(mirror.schedule or 'every apply')}</td></tr>"
        f"<tr><th>last run</th><td>{_last_run_text(last, at, root, name)}</td></tr>"
        f"<tr><th>last success</th><td>{e(mirror.last_success or 'never')} "
        f"{e(relative(success, at))}</td></tr>"
        f"<tr><th>next due</th><td>{e(_due_text(mirror, at))}</td></tr></table>\n"
    )
    parts.append(f"<h2>Effective filters</h2>\n<h3>Channel ({_scope(channel)})</h3>\n")
    parts.append(filters_html([r.model_dump() for r in view.channel_filters]))
    parts.append("<h3>This mirror</h3>\n")
    parts.append(filters_html([r.model_dump() for r in mirror.filters]))
    parts.append("<h2>Last runs</h2>\n" + timeline(runs, at, root=root, channel=name) + "\n")
    parts.append(_runs_table(runs, name, root, at))
    live = mirror.progress is not None or is_live(last)
    return _html(page(f"Mirror {mirror.name}", "".join(parts), root=root, refresh=live))


# -- a run -----------------------------------------------------------------------------------------


_CATEGORIES = ("added", "updated", "removed", "restored", "reindexed")


def _run(viewer: Viewer, name: str, run_id: str, as_json: bool) -> Answer:
    channel = viewer.reach(name)
    if isinstance(channel, Answer):
        return channel
    view = run_view(viewer.loaded, name, run_id)
    if view is None:
        return _plain(404, "")
    if as_json:
        return _json(view.model_dump(mode="json"))
    at = _parse_time(view.generated) or datetime.now(timezone.utc)
    root = "../../../"
    run = view.run.model_dump(mode="json")
    parts = [
        f"<h1>Run {e(view.run.run_id)}</h1>\n",
        f"<p>{link(channel_href(root, name), name)}"
        + (
            f" · mirror {link(mirror_href(root, name, view.run.mirror), view.run.mirror)}"
            if view.run.mirror
            else " · the channel's own run"
        )
        + f" · {state_html(run)}</p>\n",
    ]
    if view.progress is not None:
        parts.append(progress_html(_dump(view.progress), at))
    rows = [
        ("started", f"{e(view.run.started)} ({e(relative(_parse_time(view.run.started), at))})"),
        ("finished", e(view.run.finished or "")),
        ("duration", e(duration_text(view.run.duration_s))),
        ("counts", f"{e(counts_text(run))}, re-indexed {view.run.reindexed}"),
        ("downloaded", e(size_text(view.run.bytes))),
    ]
    if view.run.revision:
        rows.append(("configuration", f"git commit <code>{e(view.run.revision)}</code>"))
    if view.run.error:
        rows.append(("error", f'<span class="failed">{e(view.run.error)}</span>'))
    cells = "".join(f"<tr><th>{name}</th><td>{value}</td></tr>" for name, value in rows)
    parts.append(f'<table class="run">{cells}</table>\n')
    if view.related:
        related = []
        for other in view.related:
            data = other.model_dump(mode="json")
            related.append(
                f"<li>{link(run_href(root, name, other.run_id), other.target)}: "
                f"{state_html(data)} ({e(counts_text(data))})</li>"
            )
        title = "Mirror runs" if view.run.mirror is None else "The channel's run"
        parts.append(f'<h2>{title}</h2>\n<ul class="related">{"".join(related)}</ul>\n')
    details = view.details
    if details is None:
        parts.append('<p class="muted">this run recorded no details</p>\n')
    else:
        if details.locations:
            parts.append(
                '<h2>Per location</h2>\n<table class="locations"><tr><th>location</th>'
                + "".join(f'<th class="num">{c}</th>' for c in _CATEGORIES)
                + "</tr>\n"
            )
            for location, counts in details.locations.items():
                values = counts.model_dump()
                where = "(channel)" if location == "." else location
                parts.append(
                    f"<tr><td>{e(where)}</td>"
                    + "".join(f'<td class="num">{values[c]}</td>' for c in _CATEGORIES)
                    + "</tr>\n"
                )
            parts.append("</table>\n")
        if details.reasons:
            parts.append(
                '<h2>By reason</h2>\n<table class="reasons"><tr><th>category</th>'
                '<th>reason</th><th class="num">count</th></tr>\n'
            )
            for category in _CATEGORIES:
                for reason, count in details.reasons.get(category, {}).items():
                    parts.append(
                        f"<tr><td>{e(category)}</td><td><code>{e(reason)}</code></td>"
                        f'<td class="num">{count}</td></tr>\n'
                    )
            parts.append("</table>\n")
        for category in _CATEGORIES:
            examples = details.examples.get(category) or []
            if not examples:
                continue
            total = sum(details.reasons.get(category, {}).values())
            more = f" (first {len(examples)} of {total})" if total > len(examples) else ""
            parts.append(
                f'<h3>{e(category.capitalize())}{e(more)}</h3>\n<table class="examples">'
                "<tr><th>where</th><th>source</th><th>reason</th><th>detail</th></tr>\n"
            )
            for example in examples:
                parts.append(
                    f"<tr><td>{e(example.where)}</td><td>{e(example.source)}</td>"
                    f"<td><code>{e(example.reason)}</code></td><td>{e(example.detail)}</td></tr>\n"
                )
            parts.append("</table>\n")
        if details.failures:
            more = (
                f" (first {len(details.failures)} of {details.failures_total})"
                if details.failures_total > len(details.failures)
                else ""
            )
            items = "".join(f'<li class="failed">{e(f)}</li>' for f in details.failures)
            parts.append(f'<h2>Errors{e(more)}</h2>\n<ul class="failures">{items}</ul>\n')
    live = view.progress is not None or is_live(run)
    return _html(page(f"Run {view.run.run_id}", "".join(parts), root=root, refresh=live))


__all__ = ["VIEWS", "Answer", "respond"]
