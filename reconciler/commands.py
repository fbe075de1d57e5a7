"""The plan, apply, status, history, explain, serve and watch commands.

Argument parsing lives in cli.py; here each command loads the configuration,
hands the engine the registry of channel kinds, and prints the product on
stdout (logs and progress go to stderr).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reconciler.config.models import LoadedConfig, load_config
from reconciler.errors import ExitCode


def _load(args: argparse.Namespace, *, require_env: bool, serving: bool = False) -> LoadedConfig:
    loaded = load_config(args.config, require_env=require_env, serving=serving)
    for diagnostic in loaded.warnings:
        print(diagnostic.format(), file=sys.stderr)
    return loaded


def _cache_dir(args: argparse.Namespace) -> Path:
    from reconciler.engine.planner import default_cache_dir

    chosen: Path | None = getattr(args, "cache_dir", None)
    return chosen if chosen is not None else default_cache_dir()


def cmd_plan(args: argparse.Namespace) -> int:
    from reconciler.engine.planner import make_plan
    from reconciler.engine.render import print_plan
    from reconciler.kinds import REGISTRY

    loaded = _load(args, require_env=False)
    planning = make_plan(
        loaded,
        REGISTRY,
        channels=args.channel,
        mirrors=args.mirror,
        run_now=args.run_now,
        cache_dir=_cache_dir(args),
    )
    planning.close()
    plan = planning.plan
    if args.out:
        from reconciler.store.local import write_atomic

        write_atomic(args.out, plan.to_json().encode())
    if args.json:
        sys.stdout.write(plan.to_json())
    else:
        print_plan(plan, full=args.full, colour=sys.stdout.isatty())
        if args.out:
            print(f"Saved the plan to {args.out}; apply it with `reconcile apply {args.out}`.")
    for error in plan.errors:
        print(f"error: {error}", file=sys.stderr)
    if plan.errors:
        return ExitCode.ERROR
    if args.detailed_exitcode and plan.has_changes:
        return ExitCode.CHANGES
    return ExitCode.OK


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.engine.apply import apply
    from reconciler.engine.progress import default_reporter
    from reconciler.engine.render import print_plan
    from reconciler.engine.report import append_step_summary, render_markdown
    from reconciler.kinds import REGISTRY
    from reconciler.store.local import write_atomic

    loaded = _load(args, require_env=True)
    plan, report = apply(
        loaded,
        REGISTRY,
        saved_plan=args.plan_file,
        channels=args.channel,
        mirrors=args.mirror,
        lock_timeout=args.lock_timeout,
        run_now=args.run_now,
        wait=args.wait,
        cache_dir=_cache_dir(args),
        reporter=default_reporter(),
    )
    if plan.has_changes:
        print_plan(plan, full=False, colour=sys.stdout.isatty())
        print()
    for planned in plan.channels:
        for mirror in planned.mirrors:
            if not mirror.refresh:
                print(f"mirror {planned.name}/{mirror.name} not refreshed: {mirror.reason}")
    for channel in report.channels:
        if channel.state == "skipped":
            print(f"skipped channel {channel.name}: locked by another run", file=sys.stderr)
        for failure in channel.failures:
            print(f"error: {channel.name}: {failure}", file=sys.stderr)
    print(report.summary())
    if args.report:
        report.write_json(args.report)
        write_atomic(args.report.with_suffix(".md"), render_markdown(report).encode())
    append_step_summary(report)
    return ExitCode.ERROR if report.result == "failed" else ExitCode.OK


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.engine.planner import make_plan
    from reconciler.engine.status import collect_status
    from reconciler.kinds import REGISTRY

    loaded = _load(args, require_env=False)
    status = collect_status(loaded, REGISTRY)
    planning = make_plan(loaded, REGISTRY, cache_dir=_cache_dir(args))
    planning.close()
    drift = {c.name: c.has_changes for c in planning.plan.channels}
    for channel in status.channels:
        channel.drift = drift.get(channel.name)
    if args.json:
        print(status.model_dump_json(indent=2))
        return ExitCode.OK
    for row in status.channels:
        print(f"channel {row.name} ({row.path})")
        shown = ", ".join(
            f"{s}: {'not indexed' if n is None else n}" for s, n in row.packages.items()
        )
        print(f"  packages   {shown}")
        last = row.last_run
        if last is not None:
            counts = f"+{last.added} ~{last.updated} -{last.removed}"
            if last.restored:
                counts += f" restored {last.restored}"
            line = f"  last run   {last.state} at {last.finished or last.started} ({counts})"
            if last.error:
                line += f": {last.error}"
            print(line)
        else:
            print("  last run   never")
        print(f"  drift      {'yes: `reconcile plan` shows changes' if row.drift else 'none'}")
        if row.pending_deletions:
            print(
                f"  deletions  {row.pending_deletions} unpublished file(s) waiting for their "
                f"grace period (the first due at {row.next_deletion})"
            )
        if row.locked_by:
            print(f"  locked by  {row.locked_by}")
        for warning in row.warnings:
            print(f"  warning    {warning}")
        for mirror in row.mirrors:
            when = "never run"
            if mirror.last_run is not None:
                stamp = mirror.last_run.finished or mirror.last_run.started
                when = f"last run {mirror.state} at {stamp}"
                if mirror.last_run.error:
                    when += f": {mirror.last_run.error}"
            print(
                f"  mirror     {mirror.name} ({mirror.mode}, "
                f"schedule {mirror.schedule or 'every apply'}): {when}"
            )
            fires = f" (schedule fires next at {mirror.next_due})" if mirror.next_due else ""
            if mirror.due_now:
                print(f"             due now: the next apply refreshes it{fires}")
            elif mirror.next_due:
                print(f"             next due {mirror.next_due}")
            planned = next((c for c in planning.plan.channels if c.name == row.name), None)
            for mirror_plan in planned.mirrors if planned is not None else []:
                if mirror_plan.name == mirror.name and mirror_plan.warning:
                    print(f"             warning: {mirror_plan.warning}")
    return ExitCode.OK


def cmd_history(args: argparse.Namespace) -> int:
    from reconciler.engine.history import History
    from reconciler.store import channel_store

    loaded = _load(args, require_env=False)
    runs = []
    for channel in loaded.config.channels:
        if args.channel and channel.name not in args.channel:
            continue
        for run in History(channel_store(channel)).runs():
            if args.mirror and run.mirror not in args.mirror:
                continue
            runs.append(run)
    runs.sort(key=lambda r: r.started, reverse=True)
    runs = runs[: args.limit] if args.limit else runs
    if args.json:
        print(json.dumps([r.to_json() for r in runs], indent=2))
        return ExitCode.OK
    if not runs:
        print("No runs recorded yet.")
        return ExitCode.OK
    print(f"{'started':26} {'target':28} {'state':10} {'+':>5} {'~':>5} {'-':>5} {'↺':>5}  error")
    for run in runs:
        print(
            f"{run.started:26} {run.target:28} {run.state:10} {run.added:5} {run.updated:5} "
            f"{run.removed:5} {run.restored:5}  {run.error or ''}"
        )
    return ExitCode.OK


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.engine.explain import explain
    from reconciler.kinds import REGISTRY

    loaded = _load(args, require_env=False)
    found = list(explain(loaded, REGISTRY, args.package, args.channel, _cache_dir(args)))
    if args.json:
        print(json.dumps([e.to_json() for e in found], indent=2))
        return ExitCode.OK
    if not found:
        print(f"No package matching {args.package!r} upstream or in any channel.")
        return ExitCode.OK
    for explanation in found:
        print(explanation.format())
    return ExitCode.OK


def cmd_serve(args: argparse.Namespace) -> int:
    from reconciler.serve.server import ServeOptions, serve

    loaded = _load(args, require_env=False, serving=True)
    options = ServeOptions(
        access_log=args.access_log,
        behind_proxy=args.behind_proxy,
        watch_config=args.watch_config,
        failed_fetch_ttl=args.failed_fetch_ttl,
        workers=args.workers,
        accel_redirect=args.accel_redirect,
    )
    serve(loaded, args.host, args.port, options)
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> int:
    from reconciler.watch import Watcher

    watcher = Watcher(Path(args.config), debounce=args.debounce, tick=args.tick)
    watcher.install_signal_handlers()
    watcher.run(once=args.once, wait=args.debounce * 5 if args.once else None)
    return ExitCode.OK
