"""Turn configuration text into a validated :class:`Config` plus diagnostics.

Every problem in the file is collected, with its line, before anything fails:
YAML syntax, duplicate keys, model errors from pydantic, and the cross-field
rules below that no single model can see.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import difflib
import os
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from reconciler.conda.names import is_valid_subdir
from reconciler.config.diagnostics import Diagnostic, KeyPath, Severity
from reconciler.config.models import (
    Channel,
    Config,
    Defaults,
    MirrorDefaults,
    PypiChannel,
    S3Location,
    channel_kind,
    is_url,
    parse_location,
    source_kind,
)
from reconciler.config.yaml_source import YamlDocument, YamlSyntaxError, load_yaml

PATCH_SUFFIXES = (".py", ".json", ".conda", ".tar.bz2")

# A schedule firing more often than this makes runs overlap on big mirrors.
MIN_SCHEDULE_INTERVAL = dt.timedelta(hours=1)


@dataclass
class CheckResult:
    config: Config | None
    diagnostics: list[Diagnostic] = field(default_factory=list)


class _Collector:
    def __init__(self, file: str, document: YamlDocument) -> None:
        self.file = file
        self.document = document
        self.items: list[Diagnostic] = []

    def add(self, path: KeyPath, message: str, severity: Severity = Severity.ERROR) -> None:
        line = self.document.line_of(path)
        item = Diagnostic(self.file, line, path, message, severity)
        if item not in self.items:
            self.items.append(item)

    def warn(self, path: KeyPath, message: str) -> None:
        self.add(path, message, Severity.WARNING)

    @property
    def has_errors(self) -> bool:
        return any(d.severity is Severity.ERROR for d in self.items)


def check_config_text(
    text: str,
    path: Path,
    *,
    environ: Mapping[str, str],
    require_env: bool = False,
    serving: bool = False,
) -> CheckResult:
    """Validate configuration ``text`` read from ``path`` (used for messages and paths).

    ``serving``: the read tokens' variables must be set (``reconcile serve`` needs them).
    """
    file = str(path)
    try:
        document = load_yaml(text)
    except YamlSyntaxError as exc:
        return CheckResult(None, [Diagnostic(file, exc.line, (), exc.message)])
    out = _Collector(file, document)

    for key_path, line, first in document.duplicates:
        out.items.append(
            Diagnostic(
                file,
                line,
                key_path,
                f"duplicate key '{key_path[-1]}' (first given at line {first}); "
                "YAML would silently keep only the last one",
            )
        )

    raw = document.data
    if raw is None:
        out.add((), "the configuration is empty; expected `version: 1` and `channels:`")
        return CheckResult(None, out.items)
    if not isinstance(raw, dict):
        out.add((), f"expected a mapping at the top level, got {type(raw).__name__}")
        return CheckResult(None, out.items)

    merged = _apply_defaults(raw)
    config: Config | None = None
    try:
        config = Config.model_validate(merged)
    except ValidationError as exc:
        for error in exc.errors():
            loc = _without_tag(tuple(error["loc"]))
            if error["type"] == "channel_kind":
                loc = (*loc, "kind")
            out.add(loc, _describe(error, loc, raw))

    base_dir = path.parent
    _check_cross_fields(raw, base_dir, out, environ=environ, require_env=require_env)
    _check_serve(raw, out, environ=environ, serving=serving)

    if config is None or out.has_errors:
        return CheckResult(None, sorted(out.items, key=lambda d: (d.line, d.path)))
    _resolve_paths(config, base_dir)
    return CheckResult(config, sorted(out.items, key=lambda d: (d.line, d.path)))


def _without_tag(loc: KeyPath) -> KeyPath:
    """``channels.0.pypi.mirrors`` → ``channels.0.mirrors``: the union tag is not a key."""
    if len(loc) >= 3 and loc[0] == "channels" and isinstance(loc[1], int):
        return (*loc[:2], *loc[3:]) if loc[2] in _CHANNEL_MODELS else loc
    return loc


_CHANNEL_MODELS: dict[str, type[BaseModel]] = {"conda": Channel, "pypi": PypiChannel}


def _apply_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    """Fill channel ``index`` and mirror settings from ``defaults`` before validation.

    Only valid defaults are merged; invalid ones are reported by the full model.
    """
    try:
        defaults = Defaults.model_validate(raw.get("defaults") or {})
    except ValidationError:
        defaults = Defaults()
    index_defaults = defaults.index.model_dump()
    mirror_defaults = defaults.mirror.model_dump()
    merged = dict(raw)
    channels = raw.get("channels")
    if not isinstance(channels, list):
        return merged
    new_channels: list[Any] = []
    for channel in channels:
        if not isinstance(channel, dict):
            new_channels.append(channel)
            continue
        channel = dict(channel)
        index = channel.get("index")
        if channel_kind(channel) == "conda" and (index is None or isinstance(index, dict)):
            channel["index"] = {**index_defaults, **(index or {})}
        mirrors = channel.get("mirrors")
        if isinstance(mirrors, list):
            channel["mirrors"] = [
                {**mirror_defaults, **m} if isinstance(m, dict) else m for m in mirrors
            ]
        new_channels.append(channel)
    merged["channels"] = new_channels
    return merged


def _describe(error: Mapping[str, Any], loc: KeyPath, raw: Any = None) -> str:
    kind = error["type"]
    message = str(error["msg"])
    if kind == "channel_kind":
        return f"{message} (got {channel_kind(error.get('input'))!r})"
    if kind == "extra_forbidden":
        key = str(loc[-1])
        text = f"unknown key '{key}'"
        choices = _keys_at(loc[:-1], raw)
        close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
        if close:
            text += f" (did you mean '{close[0]}'?)"
        elif choices:
            text += f"; expected one of: {', '.join(choices)}"
        return text
    if kind == "missing":
        return f"missing required key '{loc[-1]}'" if loc else "missing required key"
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    if message.startswith("Input should be"):
        message = "expected" + message[len("Input should be") :]
    given = error.get("input")
    if isinstance(given, (str, int, float, bool)) or given is None:
        message += f" (got {given!r})"
    return message


def _strip_annotation(annotation: Any) -> Any:
    """Remove Optional / Annotated wrappers to reach the model or container type."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _keys_at(loc: KeyPath, raw: Any = None) -> list[str]:
    """The keys the model at ``loc`` accepts (for "did you mean")."""
    annotation: Any = Config
    for depth, part in enumerate(loc):
        annotation = _strip_annotation(annotation)
        if depth == 1 and loc[0] == "channels" and isinstance(part, int):
            # A channel's model depends on its kind.
            channels = raw.get("channels") if isinstance(raw, dict) else None
            item = channels[part] if isinstance(channels, list) and part < len(channels) else {}
            annotation = _CHANNEL_MODELS.get(channel_kind(item), Channel)
            continue
        if isinstance(part, int):
            if typing.get_origin(annotation) is list:
                annotation = typing.get_args(annotation)[0]
                continue
            return []
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            found = next(
                (f for n, f in annotation.model_fields.items() if (f.alias or n) == part),
                None,
            )
            if found is None:
                return []
            annotation = found.annotation
        elif typing.get_origin(annotation) is dict:
            annotation = typing.get_args(annotation)[1]
        else:
            return []
    annotation = _strip_annotation(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [f.alias or n for n, f in annotation.model_fields.items()]
    return []


def _dicts(items: Any) -> Iterator[tuple[int, dict[str, Any]]]:
    if isinstance(items, list):
        for index, item in enumerate(items):
            if isinstance(item, dict):
                yield index, item


# The longest file name Linux, macOS and Windows file systems take, in bytes.
NAME_MAX = 255


def _resolve(base_dir: Path, value: str) -> Path:
    """``value`` as an absolute path; ValueError says why it cannot be one."""
    try:
        os.fsencode(value)
    except UnicodeEncodeError:  # a lone surrogate, from a "\ud800" escape
        raise ValueError(f"path {value!r} is not valid text") from None
    if "\x00" in value:
        raise ValueError(f"path {value!r} contains a NUL character")
    try:
        path = Path(value).expanduser()
    except RuntimeError:  # ~user of no such user, or no home directory at all
        raise ValueError(f"cannot expand {value.split('/', 1)[0]!r} in path {value!r}") from None
    resolved = (path if path.is_absolute() else base_dir / path).resolve()
    if any(len(os.fsencode(part)) > NAME_MAX for part in resolved.parts):
        raise ValueError(f"path {value!r} has a name longer than {NAME_MAX} bytes")
    return resolved


def _is(check: Callable[[], bool]) -> bool:
    """``path.is_file`` and the like, False when the system cannot even look."""
    try:
        return check()
    except OSError:  # a path too long in total, a permission denied on the way
        return False


def _resolved(base_dir: Path, value: str, out: _Collector, where: KeyPath) -> Path | None:
    """:func:`_resolve`, reporting an unusable path at ``where`` instead of raising."""
    try:
        return _resolve(base_dir, value)
    except ValueError as exc:
        out.add(where, str(exc))
        return None


# Folders no channel may be: the tool writes and deletes files in a channel's folder.
SYSTEM_FOLDERS = (Path("/proc"), Path("/sys"), Path("/dev"), Path("/etc"))
# What a channel's folder may hold besides subdir folders; anything else is somebody else's.
CHANNEL_ENTRIES = frozenset(
    {".reconciler", "channeldata.json", "index.html", "simple", "packages", "shards"}
)


def _folder_problem(folder: Path, base_dir: Path, channel: Mapping[str, Any]) -> str | None:
    """Why ``folder`` cannot be a channel's, or None when it can."""
    if folder == Path(folder.anchor):
        return f"{folder} is the root folder; give the channel a folder of its own"
    if folder == base_dir.resolve():
        return f"{folder} is this configuration's own folder; give the channel a folder of its own"
    if folder in base_dir.resolve().parents:
        return f"{folder} holds this configuration; give the channel a folder of its own"
    with contextlib.suppress(RuntimeError, KeyError):
        if folder == Path.home().resolve():
            return f"{folder} is your home folder; give the channel a folder of its own"
    for system in SYSTEM_FOLDERS:
        if folder == system or system in folder.parents:
            return f"{folder} is a system folder ({system}); a channel cannot live there"
    if channel.get("adopt") is True or not _is(folder.is_dir):
        return None
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return None  # the store reports what it cannot read, naming the folder
    foreign = [
        name
        for name in entries
        if name not in CHANNEL_ENTRIES
        and not is_valid_subdir(name)
        and not name.startswith(".reconcile-tmp-")
    ]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (
            f"{folder} exists and holds files that are not a channel's ({shown}); "
            "set adopt: true on the channel to use it anyway"
        )
    return None


def _check_cross_fields(
    raw: dict[str, Any],
    base_dir: Path,
    out: _Collector,
    *,
    environ: Mapping[str, str],
    require_env: bool,
) -> None:
    channel_names: dict[str, int] = {}
    mirror_names: dict[str, tuple[int, int]] = {}
    channel_paths: list[tuple[Path, str]] = []
    bucket_paths: list[tuple[S3Location, str]] = []
    for ci, channel in _dicts(raw.get("channels")):
        cpath: KeyPath = ("channels", ci)
        name = channel.get("name")
        if isinstance(name, str):
            if name in channel_names:
                out.add(
                    (*cpath, "name"),
                    f"duplicate channel name '{name}' (also channels[{channel_names[name]}])",
                )
            else:
                channel_names[name] = ci
        label = name if isinstance(name, str) else f"channels[{ci}]"

        path_value = channel.get("path")
        resolved = None
        if isinstance(path_value, str) and is_url(path_value):
            # An s3:// location (any other scheme: the model says it is not supported);
            # never resolved as a folder, so never a local folder named "s3:".
            _check_bucket_overlap(path_value, label, bucket_paths, (*cpath, "path"), out)
        elif isinstance(path_value, str) and path_value.strip():
            resolved = _resolved(base_dir, path_value, out, (*cpath, "path"))
        elif "path" in channel:
            out.add((*cpath, "path"), "path must be a non-empty string")
        if resolved is not None:
            problem = _folder_problem(resolved, base_dir, channel)
            if problem is not None:
                out.add((*cpath, "path"), problem)
                resolved = None
        if resolved is not None:
            # Report only the first clash per channel; one is enough to fix it.
            for other, other_label in channel_paths:
                if resolved == other:
                    out.add(
                        (*cpath, "path"),
                        f"channel '{label}' uses the same path as channel '{other_label}' "
                        f"({resolved})",
                    )
                    break
                if other in resolved.parents or resolved in other.parents:
                    out.add(
                        (*cpath, "path"),
                        f"channel '{label}' path {resolved} is nested with channel "
                        f"'{other_label}' path {other}",
                    )
                    break
            channel_paths.append((resolved, label))

        patches = channel.get("patches") if channel_kind(channel) == "conda" else None
        for pi, patch in enumerate(patches if isinstance(patches, list) else []):
            if not isinstance(patch, str):
                continue
            ppath: KeyPath = (*cpath, "patches", pi)
            if not patch.endswith(PATCH_SUFFIXES):
                out.add(ppath, f"patch file {patch!r} must end in {', '.join(PATCH_SUFFIXES)}")
                continue
            patch_path = _resolved(base_dir, patch, out, ppath)
            if patch_path is not None and not _is(patch_path.is_file):
                out.add(ppath, f"patch file not found: {patch_path}")

        channel_subdirs = channel.get("subdirs", ["noarch"])
        # Only names can be served; the model reports the rest (lists, numbers) itself.
        served = (
            {s for s in channel_subdirs if isinstance(s, str)} | {"noarch"}
            if isinstance(channel_subdirs, list)
            else None
        )

        for mi, mirror in _dicts(channel.get("mirrors")):
            mpath: KeyPath = (*cpath, "mirrors", mi)
            _check_mirror(
                mirror, mpath, label, served, channel_subdirs, base_dir, out, environ, require_env
            )
            mname = mirror.get("name")
            if isinstance(mname, str):
                if mname in mirror_names:
                    oc, om = mirror_names[mname]
                    out.add(
                        (*mpath, "name"),
                        f"duplicate mirror name '{mname}' (also channels[{oc}].mirrors[{om}]); "
                        "mirror names are unique across the configuration",
                    )
                else:
                    mirror_names[mname] = (ci, mi)


def _check_bucket_overlap(
    value: str,
    label: str,
    seen: list[tuple[S3Location, str]],
    where: KeyPath,
    out: _Collector,
) -> None:
    """Two channels may not share or nest bucket prefixes (the model reports bad URLs)."""
    try:
        location = parse_location(value)
    except ValueError:
        return
    if not isinstance(location, S3Location):
        return
    for other, other_label in seen:
        if location == other:
            out.add(where, f"channel '{label}' uses the same path as channel '{other_label}' "
                    f"({location})")  # fmt: skip
            break
        if location.nests(other):
            out.add(where, f"channel '{label}' path {location} is nested with channel "
                    f"'{other_label}' path {other}")  # fmt: skip
            break
    seen.append((location, label))


def _check_mirror(
    mirror: dict[str, Any],
    mpath: KeyPath,
    channel_label: str,
    served: set[str] | None,
    channel_subdirs: Any,
    base_dir: Path,
    out: _Collector,
    environ: Mapping[str, str],
    require_env: bool,
) -> None:
    subdirs = mirror.get("subdirs")
    if isinstance(subdirs, list) and served is not None:
        for si, subdir in enumerate(subdirs):
            if isinstance(subdir, str) and subdir not in served:
                out.add(
                    (*mpath, "subdirs", si),
                    f"subdir '{subdir}' is not served by channel '{channel_label}' "
                    f"(its subdirs: {', '.join(sorted(served))})",
                )
    effective = subdirs if isinstance(subdirs, list) else channel_subdirs
    if isinstance(effective, list) and "noarch" not in effective:
        out.warn(
            (*mpath, "subdirs") if isinstance(subdirs, list) else mpath,
            "this mirror leaves out 'noarch'; most packages need noarch dependencies, "
            "which will then be missing",
        )

    source = mirror.get("source")
    if isinstance(source, str) and source_kind(source) in ("path", "file"):
        local = source[len("file://") :] if source.lower().startswith("file://") else source
        folder = _resolved(base_dir, local, out, (*mpath, "source")) if local else None
        if folder is not None and not _is(folder.exists):
            out.warn((*mpath, "source"), f"source folder does not exist: {folder}")

    schedule = mirror.get("schedule")
    if isinstance(schedule, str):
        interval = shortest_interval(schedule)
        if interval is not None and interval < MIN_SCHEDULE_INTERVAL:
            minutes = int(interval.total_seconds() // 60)
            out.warn(
                (*mpath, "schedule"),
                f"schedule fires every {minutes} min, more often than hourly; "
                "mirror runs may overlap",
            )

    token_env = mirror.get("token_env")
    if isinstance(token_env, str) and token_env and token_env not in environ:
        message = f"environment variable {token_env} (token_env) is not set"
        if require_env:
            out.add((*mpath, "token_env"), message)
        else:
            out.warn((*mpath, "token_env"), message)


# A read token shorter than this can be guessed by a patient client.
MIN_TOKEN_LENGTH = 16
# conda's token URLs: /t/<token>/<channel>/...
TOKEN_URL_PREFIX = "t"


def _check_serve(
    raw: dict[str, Any], out: _Collector, *, environ: Mapping[str, str], serving: bool
) -> None:
    """Read tokens name known channels; every private channel has one; secrets are set."""
    channels = {
        c.get("name"): ci for ci, c in _dicts(raw.get("channels")) if isinstance(c.get("name"), str)
    }
    serve = raw.get("serve")
    tokens = serve.get("tokens") if isinstance(serve, dict) else None
    granted: set[str] = set()
    names: dict[str, int] = {}
    for ti, token in _dicts(tokens):
        tpath: KeyPath = ("serve", "tokens", ti)
        name = token.get("name")
        if isinstance(name, str):
            if name in names:
                out.add(
                    (*tpath, "name"), f"duplicate token name '{name}' (also tokens[{names[name]}])"
                )
            else:
                names[name] = ti
        listed = token.get("channels")
        for ni, channel in enumerate(listed if isinstance(listed, list) else []):
            if not isinstance(channel, str):
                continue
            if channel not in channels:
                known = ", ".join(sorted(str(c) for c in channels)) or "none"
                close = difflib.get_close_matches(channel, [str(c) for c in channels], n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else f"; channels: {known}"
                out.add((*tpath, "channels", ni), f"unknown channel '{channel}'{hint}")
            else:
                granted.add(channel)
        variable = token.get("token_env")
        if isinstance(variable, str) and variable:
            value = environ.get(variable, "")
            if not value:
                message = f"environment variable {variable} (token_env) is not set"
                if serving:
                    out.add((*tpath, "token_env"), message)
                else:
                    out.warn((*tpath, "token_env"), message)
            elif len(value) < MIN_TOKEN_LENGTH:
                out.warn(
                    (*tpath, "token_env"),
                    f"the token in {variable} has {len(value)} characters; use at least "
                    f"{MIN_TOKEN_LENGTH} random ones (e.g. `openssl rand -hex 24`)",
                )
    for ci, channel in _dicts(raw.get("channels")):
        name = channel.get("name")
        if name == TOKEN_URL_PREFIX:
            out.add(
                ("channels", ci, "name"),
                f"a channel named '{TOKEN_URL_PREFIX}' cannot be served: "
                f"/{TOKEN_URL_PREFIX}/<token>/ starts conda's token URLs",
            )
        if channel.get("access") == "private" and isinstance(name, str) and name not in granted:
            out.add(
                ("channels", ci, "access"),
                f"private channel '{name}' is granted by no token: add it to the channels of "
                "a token under serve.tokens, or make it public",
            )


def shortest_interval(expression: str, samples: int = 120) -> dt.timedelta | None:
    """Shortest gap between fire times of a cron expression, or None if it is invalid.

    The first ``samples`` fire times are enough to see a burst (``*/5 9 * * 1`` shows its
    five minutes within a week of fire times); each costs ~0.25 ms, at every command.
    """
    from croniter import croniter

    if not croniter.is_valid(expression):
        return None
    start = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    shortest: dt.timedelta | None = None
    try:
        it = croniter(expression, start)
        previous = it.get_next(dt.datetime)
        for _ in range(samples):
            current = it.get_next(dt.datetime)
            gap = current - previous
            shortest = gap if shortest is None else min(shortest, gap)
            previous = current
    except (ValueError, OverflowError):  # croniter's errors are ValueErrors
        # Fires rarely or no more (31 February, a past year, beyond year 9999): the
        # model reports one that never fires; the gaps seen so far are all there is.
        pass
    return shortest


def _resolve_paths(config: Config, base_dir: Path) -> None:
    """Make channel, patch and path-source locations absolute (relative to the file)."""
    for channel in config.channels:
        if not isinstance(channel.path, S3Location):
            channel.path = _resolve(base_dir, str(channel.path))
        if isinstance(channel, Channel):
            channel.patches = [_resolve(base_dir, str(p)) for p in channel.patches]
        for mirror in channel.mirrors:
            if source_kind(mirror.source) == "path":
                mirror.source = str(_resolve(base_dir, mirror.source))


__all__ = ["CheckResult", "MirrorDefaults", "check_config_text", "shortest_interval"]
