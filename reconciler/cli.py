"""Command line: argparse → commands, behind one error boundary.

Product goes to stdout; logs and progress go to stderr. Exit codes follow
:class:`reconciler.errors.ExitCode`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

from reconciler import __version__
from reconciler.errors import ExitCode, ReconcileError

log = logging.getLogger("reconciler")

Command = Callable[[argparse.Namespace], int]


def _positive(text: str) -> int:
    """An argument that is a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is less than 1")
    return value


def _location(text: str) -> str:
    """A URL path prefix of an nginx location: ``/`` and then safe characters."""
    if not re.fullmatch(r"(/[A-Za-z0-9._~-]+)+/?", text) or "/." in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a location like /_reconcile-files (letters, digits, '-_.~', "
            "no segment starting with a dot)"
        )
    return text.rstrip("/")


def _config_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        type=Path,
        default=Path("channels.yaml"),
        metavar="FILE",
        help="configuration file (default: ./channels.yaml)",
    )
    return parent


def _cache_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="HTTP cache for upstream metadata, never inside a channel (default: "
        "$RECONCILE_CACHE_DIR, else the user's cache folder)",
    )
    return parent


def _logging_parent() -> argparse.ArgumentParser:
    # Accepted both before and after the subcommand name.
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output"
    )
    parent.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="errors only"
    )
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help="debug logging and tracebacks for internal errors",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    logging_opts = _logging_parent()
    config_opt = _config_parent()
    cache_opt = _cache_parent()
    parser = argparse.ArgumentParser(
        prog="reconcile",
        description="Declarative reconciler for conda channels: plan, apply, index, mirror.",
        parents=[logging_opts],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(
        name: str, help_text: str, func: Command, *, config: bool = True, cache: bool = False
    ) -> argparse.ArgumentParser:
        parents = [logging_opts, config_opt] if config else [logging_opts]
        if cache:
            parents.append(cache_opt)
        p = sub.add_parser(name, help=help_text, description=help_text, parents=parents)
        p.set_defaults(func=func)
        return p

    add("validate", "check the configuration file and report every problem", cmd_validate)
    add("schema", "print the JSON Schema of channels.yaml", cmd_schema, config=False)

    p = add("index", "index channel directories, like `conda index`", cmd_index, config=False)
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="DIR",
        help="channel directory, or s3://bucket/prefix (endpoint and credentials from the "
        "AWS environment)",
    )
    p.add_argument(
        "--subdir",
        action="append",
        dest="subdirs",
        metavar="SUBDIR",
        help="also create and index this subdir (repeatable); existing subdirs are always indexed",
    )
    p.add_argument(
        "--patch",
        action="append",
        dest="patches",
        type=Path,
        default=[],
        metavar="FILE",
        help="patch file (.py, .json, or a patch package), applied in order (repeatable)",
    )
    p.add_argument("--channel-name", help="name shown in index.html (default: folder name)")
    p.add_argument("--strict", action="store_true", help="fail on any unreadable package")
    p.add_argument("--workers", type=int, metavar="N", help="parallel readers (default: cores)")
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="wait this long for another run on the same channel to finish (default: 60)",
    )
    _add_index_switches(p)

    p = add("plan", "show what apply would do", _run("cmd_plan"), cache=True)
    p.add_argument("--out", type=Path, metavar="PLAN", help="save the plan to this file")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument(
        "--detailed-exitcode",
        action="store_true",
        help="exit 0 when there are no changes, 2 when there are, 1 on error",
    )
    p.add_argument("--channel", action="append", metavar="NAME", help="only this channel")
    p.add_argument(
        "--mirror",
        action="append",
        metavar="NAME",
        help="only this mirror refreshes and changes; everything else stays as published",
    )
    p.add_argument("--full", action="store_true", help="list every action, even in long plans")
    p.add_argument(
        "--run-now",
        action="store_true",
        help="refresh mirrors' upstream metadata regardless of schedule",
    )

    p = add("apply", "converge the channels to the configuration", _run("cmd_apply"), cache=True)
    p.add_argument("plan_file", nargs="?", type=Path, metavar="PLAN", help="a saved plan")
    p.add_argument(
        "--run-now",
        action="store_true",
        help="refresh mirrors' upstream metadata regardless of schedule",
    )
    p.add_argument("--report", type=Path, metavar="FILE", help="write the run report here")
    p.add_argument("--channel", action="append", metavar="NAME", help="only this channel")
    p.add_argument(
        "--mirror",
        action="append",
        metavar="NAME",
        help="only this mirror refreshes and changes; everything else stays as published",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="wait for a channel another run has locked (up to --lock-timeout), "
        "instead of recording this run as skipped",
    )
    p.add_argument(
        "--lock-timeout",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="with --wait: give up (exit 1) after this long (default: 600)",
    )

    p = add(
        "status", "show channels and mirrors, last runs and drift", _run("cmd_status"), cache=True
    )
    p.add_argument("--json", action="store_true", help="print the status as JSON")
    p = add("history", "show the run history, newest first", _run("cmd_history"))
    p.add_argument("--channel", action="append", metavar="NAME", help="only this channel")
    p.add_argument("--mirror", action="append", metavar="NAME", help="only this mirror")
    p.add_argument("--limit", type=int, default=20, metavar="N", help="at most N runs (0: all)")
    p.add_argument("--json", action="store_true", help="print the runs as JSON")

    p = add(
        "explain",
        "say why a package is in or out of each channel",
        _run("cmd_explain"),
        cache=True,
    )
    p.add_argument("package", metavar="SPEC_OR_FILENAME", help="e.g. numpy, 'numpy >=1.26'")
    p.add_argument("--channel", action="append", metavar="NAME", help="only this channel")
    p.add_argument("--json", action="store_true", help="print the explanations as JSON")

    p = add("serve", "serve the channels over HTTP, with a status page", _run("cmd_serve"))
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks one)")
    p.add_argument(
        "--access-log",
        metavar="FILE",
        help="write one line per request to FILE ('-': stderr); off by default",
    )
    p.add_argument(
        "--behind-proxy",
        action="store_true",
        help="a TLS terminator (nginx, caddy) is in front: no warning for private channels "
        "on a non-loopback address",
    )
    p.add_argument(
        "--watch-config",
        action="store_true",
        help="re-read the configuration when the file changes (SIGHUP always does)",
    )
    p.add_argument(
        "--failed-fetch-ttl",
        type=float,
        metavar="SECONDS",
        help="answer a failed passive fetch from memory for this long "
        "(default: serve.failed_fetch_ttl, 60)",
    )
    p.add_argument(
        "--workers",
        type=_positive,
        default=1,
        metavar="N",
        help="server processes sharing the port (default: 1; the number of cores serves most)",
    )
    p.add_argument(
        "--accel-redirect",
        type=_location,
        metavar="PREFIX",
        help="nginx in front sends the files: answer each checked file with "
        "X-Accel-Redirect: PREFIX/<its real path> (an internal location; docs/serve.md)",
    )

    p = add(
        "watch",
        "apply on config changes, re-index dropped packages, run due mirrors",
        _run("cmd_watch"),
    )
    p.add_argument("--once", action="store_true", help="handle one burst of changes, then exit")
    p.add_argument(
        "--debounce", type=float, default=2.0, metavar="SECONDS", help="quiet time (default: 2)"
    )
    p.add_argument(
        "--tick", type=float, default=60.0, metavar="SECONDS", help="apply at least this often"
    )
    return parser


def _run(name: str) -> Command:
    """A command implemented in reconciler.commands, imported only when it runs."""

    def run(args: argparse.Namespace) -> int:
        from reconciler import commands

        return int(getattr(commands, name)(args))

    return run


def cmd_validate(args: argparse.Namespace) -> int:
    from reconciler.config.models import load_config

    loaded = load_config(args.config, require_env=False)
    for diagnostic in loaded.warnings:
        print(diagnostic.format(), file=sys.stderr)
    config = loaded.config
    mirrors = sum(len(channel.mirrors) for channel in config.channels)
    print(
        f"{args.config}: valid ({len(config.channels)} channel(s), {mirrors} mirror(s), "
        f"{len(loaded.warnings)} warning(s))"
    )
    return ExitCode.OK


def cmd_schema(args: argparse.Namespace) -> int:
    from reconciler.config.schema import schema_text

    sys.stdout.write(schema_text())
    return ExitCode.OK


# (flag, option, default) for the index output switches.
_INDEX_SWITCHES: tuple[tuple[str, str, str], ...] = (
    ("zst", "zst", "repodata.json.zst"),
    ("bz2", "bz2", "repodata.json.bz2"),
    ("repodata-from-packages", "repodata_from_packages", "repodata_from_packages.json"),
    ("current-repodata", "current_repodata", "current_repodata.json"),
    ("run-exports", "run_exports", "run_exports.json"),
    ("channeldata", "channeldata", "channeldata.json"),
    ("shards", "shards", "CEP-16 sharded repodata"),
    ("html", "html", "index.html files"),
)


def _add_index_switches(parser: argparse.ArgumentParser) -> None:
    from reconciler.config.models import IndexOptions

    defaults = IndexOptions()
    for flag, option, what in _INDEX_SWITCHES:
        default = getattr(defaults, option)
        parser.add_argument(
            f"--{flag}",
            dest=option,
            action=argparse.BooleanOptionalAction,
            default=default,
            help=f"write {what} (default: {'on' if default else 'off'})",
        )


def cmd_index(args: argparse.Namespace) -> int:
    from reconciler.config.models import IndexOptions, S3Location, is_url, parse_location
    from reconciler.engine.progress import default_reporter
    from reconciler.kinds.conda.indexer import index_channel
    from reconciler.store import open_store

    options = IndexOptions(**{option: getattr(args, option) for _, option, _ in _INDEX_SWITCHES})
    for text in args.dirs:
        try:
            where = parse_location(text)
        except ValueError as exc:
            raise ReconcileError(f"{text}: {exc}") from None
        directory = None if is_url(text) else Path(text)
        if directory is not None and directory.exists() and not directory.is_dir():
            raise ReconcileError(f"{directory} is not a folder")
        name = args.channel_name
        if isinstance(where, S3Location):
            name = name or where.prefix.rpartition("/")[2] or where.bucket
        # The same lock (a lease in a bucket) as apply and watch, taken to publish: two
        # indexers never write one channel at once; nothing to write, no lock.
        store = open_store(where if directory is None else directory)
        result = index_channel(
            directory,
            store=store,
            options=options,
            patches=args.patches,
            subdirs=args.subdirs,
            channel_name=name,
            strict=args.strict,
            workers=args.workers,
            reporter=default_reporter(),
            lock=functools.partial(
                store.lock, timeout=args.lock_timeout, command="reconcile index"
            ),
        )
        # Each skipped package was already logged as a warning with its reason.
        print(f"{text}: {result.summary()}")
    return ExitCode.OK


def _configure_logging(args: argparse.Namespace) -> None:
    level = logging.INFO
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "debug", False) or getattr(args, "verbose", 0) >= 1:
        level = logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    root = logging.getLogger("reconciler")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (the error boundary lives here)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args)
    debug = bool(getattr(args, "debug", False))
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED
    except ReconcileError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr)
        return ExitCode.ERROR
    except BrokenPipeError:
        # stdout closed early (e.g. piped into `head`); not an error of ours.
        return ExitCode.OK
    except Exception as exc:
        print(
            f"internal error: {type(exc).__name__}: {exc}\n"
            "This is a bug in conda-reconcile; please report it with the command you ran."
            + ("" if debug else " Re-run with --debug for the traceback."),
            file=sys.stderr,
        )
        if debug:
            traceback.print_exc()
        return ExitCode.BUG
