"""``channeldata.json`` (CEP-38): per package name, the newest version's metadata.

Built from the packages present now, so a name whose last file is gone
disappears (conda-index keeps such names forever).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rattler

from reconciler.conda.metadata import CHANNELDATA_FLAGS, PackageMetadata

CHANNELDATA_VERSION = 1

# about.json fields copied for the newest version (CEP-38, plus description).
ABOUT_FIELDS: tuple[str, ...] = (
    "description",
    "dev_url",
    "doc_url",
    "home",
    "license",
    "source_url",
    "summary",
)


def _version(text: str) -> rattler.Version | None:
    try:
        return rattler.Version(text)
    except Exception:
        return None


def _order_key(meta: PackageMetadata) -> tuple[int, Any, int, int]:
    version = _version(str(meta.index.get("version", "")))
    # Unparseable versions sort below every parseable one.
    return (
        version is not None,
        version if version is not None else 0,
        int(meta.index.get("build_number") or 0),
        int(meta.index.get("timestamp") or 0),
    )


def _sort_key(item: tuple[str, PackageMetadata]) -> Any:
    return _order_key(item[1])


def _ms(value: Any) -> int:
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def summarize_subdir(packages: Mapping[str, PackageMetadata]) -> dict[str, dict[str, Any]]:
    """What one subdir contributes to channeldata, per package name (JSON-safe).

    Kept per subdir so a change in one subdir does not mean re-reading the
    metadata of every package in the channel.
    """
    by_name: dict[str, list[tuple[str, PackageMetadata]]] = {}
    for filename, meta in packages.items():
        name = meta.index.get("name")
        if isinstance(name, str):
            by_name.setdefault(name, []).append((filename, meta))
    summaries: dict[str, dict[str, Any]] = {}
    for name, items in sorted(by_name.items()):
        items.sort(key=_sort_key, reverse=True)
        filename, newest = items[0]
        version = str(newest.index.get("version"))
        same_version = [m for _, m in items if str(m.index.get("version")) == version]
        about = {f: newest.about[f] for f in ABOUT_FIELDS if newest.about.get(f)}
        if "license" not in about and newest.index.get("license"):
            about["license"] = newest.index["license"]
        run_exports: dict[str, Any] = {}
        for _, meta in reversed(items):  # oldest first: the newest build of a version wins
            run_exports[str(meta.index.get("version"))] = meta.run_exports
        summaries[name] = {
            "version": version,
            "build_number": _ms(newest.index.get("build_number")),
            "timestamp": _ms(newest.index.get("timestamp")),
            "max_timestamp": max(_ms(m.index.get("timestamp")) for _, m in items),
            "about": about,
            "flags": {
                f: any(m.flags.get(f, False) for m in same_version) for f in CHANNELDATA_FLAGS
            },
            "run_exports": run_exports,
            "filename": filename,
        }
    return summaries


def _summary_key(item: tuple[str, dict[str, Any]]) -> tuple[int, Any, int, int]:
    version = _version(str(item[1]["version"]))
    return (
        version is not None,
        version if version is not None else 0,
        int(item[1]["build_number"]),
        int(item[1]["timestamp"]),
    )


def merge_summaries(
    summaries_by_subdir: Mapping[str, Mapping[str, dict[str, Any]]],
) -> dict[str, Any]:
    """channeldata.json from per-subdir summaries (see :func:`summarize_subdir`)."""
    by_name: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for subdir, summaries in summaries_by_subdir.items():
        for name, summary in summaries.items():
            by_name.setdefault(name, []).append((subdir, summary))
    return {
        "channeldata_version": CHANNELDATA_VERSION,
        "packages": {name: _merge_name(items) for name, items in sorted(by_name.items())},
        "subdirs": sorted(summaries_by_subdir),
    }


def update_channeldata(
    previous: Mapping[str, Any],
    summaries_by_subdir: Mapping[str, Mapping[str, dict[str, Any]]],
    names: set[str],
) -> dict[str, Any]:
    """``merge_summaries(summaries_by_subdir)``, given that ``previous`` is what it was
    before the summaries of ``names`` changed: only those names are merged again, as
    an entry depends on its own name's summaries alone."""
    packages = dict(previous["packages"])
    for name in names:
        items = [
            (subdir, summaries[name])
            for subdir, summaries in summaries_by_subdir.items()
            if name in summaries
        ]
        if items:
            packages[name] = _merge_name(items)
        else:
            packages.pop(name, None)
    return {
        "channeldata_version": CHANNELDATA_VERSION,
        "packages": dict(sorted(packages.items())),
        "subdirs": sorted(summaries_by_subdir),
    }


def _merge_name(items: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """One name's channeldata entry from its summaries in each subdir that has it."""
    items.sort(key=_summary_key, reverse=True)
    newest_subdir, newest = items[0]
    same_version = [s for _, s in items if s["version"] == newest["version"]]
    run_exports: dict[str, Any] = {}
    for _, summary in reversed(items):
        run_exports.update(summary["run_exports"])
    newest_ms = max(int(s["max_timestamp"]) for _, s in items)
    entry: dict[str, Any] = dict(newest["about"])
    for flag in CHANNELDATA_FLAGS:
        entry[flag] = any(s["flags"].get(flag, False) for s in same_version)
    entry.update(
        {
            "version": newest["version"],
            "subdirs": sorted({subdir for subdir, _ in items}),
            "run_exports": run_exports,
            # CEP-38: seconds; records carry milliseconds (or seconds, in old ones).
            "timestamp": newest_ms // 1000 if newest_ms > 10**11 else newest_ms,
            "reference_package": f"{newest_subdir}/{newest['filename']}",
        }
    )
    return entry


def build_channeldata(
    packages_by_subdir: Mapping[str, Mapping[str, PackageMetadata]],
) -> dict[str, Any]:
    """channeldata for the packages present, keyed by subdir then filename."""
    return merge_summaries(
        {subdir: summarize_subdir(packages) for subdir, packages in packages_by_subdir.items()}
    )
