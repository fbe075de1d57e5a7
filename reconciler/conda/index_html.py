"""Small, static ``index.html`` pages for a channel and its subdirs.

Everything shown comes from package metadata, which is untrusted: it is all
escaped. No timestamps of "now", so the pages only change when the content does.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:left;"
    "border-bottom:1px solid #ddd}th{background:#f4f4f4}code{font-size:.9em}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n{body}</body>\n</html>\n"
    )


def _size(n: Any) -> str:
    try:
        value = float(n)
    except (TypeError, ValueError):
        return ""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return ""


# The last second of year 9999, the last a datetime holds.
_LAST_SECOND = 253_402_300_799


def _when(timestamp: Any) -> str:
    try:
        value = int(timestamp)
    except (TypeError, ValueError):
        return ""
    if value > 10**11:  # milliseconds
        value //= 1000
    if 0 <= value <= _LAST_SECOND:
        # What the datetime below gives, several times faster (a page lists every package).
        t = time.gmtime(value)
        return f"{t.tm_year}-{t.tm_mon:02d}-{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d} UTC"
    try:
        return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    except (OverflowError, ValueError, OSError):  # beyond what a date can hold
        return ""


def render_subdir_html(
    channel: str,
    subdir: str,
    repodata: Mapping[str, Any],
    extra_files: Mapping[str, tuple[int, int]] | None = None,
) -> str:
    """A listing of the subdir's packages (and index files, given as name → (size, mtime))."""
    e = html.escape
    records = {**(repodata.get("packages") or {}), **(repodata.get("packages.conda") or {})}
    rows = []
    for filename in sorted(records):
        record = records[filename]
        rows.append(
            f'<tr><td><a href="{e(filename, quote=True)}">{e(filename)}</a></td>'
            f"<td>{e(_size(record.get('size')))}</td>"
            f"<td>{e(_when(record.get('timestamp')))}</td>"
            f"<td><code>{e(str(record.get('sha256', ''))[:16])}</code></td></tr>\n"
        )
    files = "".join(
        f'<li><a href="{e(name, quote=True)}">{e(name)}</a> {e(_size(size))}</li>\n'
        for name, (size, _mtime) in sorted((extra_files or {}).items())
    )
    body = (
        f"<h1>{e(channel)}/{e(subdir)}</h1>\n"
        f'<p>{len(records)} packages. <a href="../index.html">Channel</a></p>\n'
        + (f"<ul>\n{files}</ul>\n" if files else "")
        + "<table>\n<tr><th>file</th><th>size</th><th>built</th><th>sha256</th></tr>\n"
        + "".join(rows)
        + "</table>\n"
    )
    return _page(f"{channel}/{subdir}", body)


def render_channel_html(
    channel: str, channeldata: Mapping[str, Any] | None, subdirs: Sequence[str]
) -> str:
    """The channel's front page: its subdirs and, from channeldata, its packages."""
    e = html.escape
    links = "".join(
        f'<li><a href="{e(s, quote=True)}/index.html">{e(s)}</a></li>\n' for s in sorted(subdirs)
    )
    body = f"<h1>{e(channel)}</h1>\n<h2>Subdirs</h2>\n<ul>\n{links}</ul>\n"
    packages = (channeldata or {}).get("packages") or {}
    if packages:
        rows = []
        for name in sorted(packages):
            info = packages[name]
            home = info.get("home")
            name_cell = (
                f'<a href="{e(str(home), quote=True)}">{e(name)}</a>'
                if isinstance(home, str) and home.startswith(("http://", "https://"))
                else e(name)
            )
            rows.append(
                f"<tr><td>{name_cell}</td><td>{e(str(info.get('version', '')))}</td>"
                f"<td>{e(', '.join(info.get('subdirs') or []))}</td>"
                f"<td>{e(str(info.get('license', '')))}</td>"
                f"<td>{e(str(info.get('summary', '')))}</td></tr>\n"
            )
        body += (
            f"<h2>Packages ({len(packages)})</h2>\n<table>\n<tr><th>name</th><th>version</th>"
            "<th>subdirs</th><th>license</th><th>summary</th></tr>\n" + "".join(rows) + "</table>\n"
        )
    return _page(channel, body)
