"""The plan, apply, status and history commands (argument parsing lives in cli.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from reconciler.config.models import LoadedConfig, load_config
from reconciler.errors import ExitCode


def _load(args: argparse.Namespace, *, require_env: bool, serving: bool = False) -> LoadedConfig:
    loaded = load_config(args.config, require_env=require_env, serving=serving)
    for diagnostic in loaded.warnings:
        print(diagnostic.format(), file=sys.stderr)
    return loaded


def cmd_plan(args: argparse.Namespace) -> int:
    from reconciler.engine.planner import make_plan
    from reconciler.engine.render import print_plan

    loaded = _load(args, require_env=False)
    plan = make_plan(loaded, args.channel, args.mirror, args.run_now)
    if args.out:
        from reconciler.store.local import write_atomic

        write_atomic(args.out, plan.to_json().encode())
    if args.json:
        sys.stdout.write(plan.to_json())
    else:
        print_plan(plan, full=args.full, colour=sys.stdout.isatty())
        if args.out:
            print(f"Saved the plan to {args.out}; apply it with `reconcile apply {args.out}`.")
    if args.detailed_exitcode and plan.has_changes:
        return ExitCode.CHANGES
    return ExitCode.OK


def cmd_apply(args: argparse.Namespace) -> int:
    from reconciler.engine.apply import apply
    from reconciler.engine.render import print_plan
    from reconciler.engine.report import append_step_summary

    loaded = _load(args, require_env=True)
    plan, report = apply(
        loaded,
        saved_plan=args.plan_file,
        channels=args.channel,
        mirrors=args.mirror,
        lock_timeout=args.lock_timeout if args.wait else 0.0,
        run_now=args.run_now,
        wait=args.wait,
    )
    if plan.has_changes:
        print_plan(plan, full=False, colour=sys.stdout.isatty())
        print()
    for planned in plan.channels:
        for mirror in planned.mirrors:
            if not mirror.due:
                print(f"skipped mirror {planned.name}/{mirror.name}: not due ({mirror.reason})")
    for channel in report.channels:
        if channel.state == "skipped":
            print(f"skipped channel {channel.name}: locked by another run", file=sys.stderr)
        for failure in channel.failures:
            print(f"error: {channel.name}: {failure}", file=sys.stderr)
    print(report.summary())
    if args.report:
        report.write_json(args.report)
        args.report.with_suffix(".md").write_text(_markdown(report), encoding="utf-8")
    append_step_summary(report)
    return ExitCode.ERROR if report.result == "failed" else ExitCode.OK


def _markdown(report: object) -> str:
    from reconciler.engine.report import ApplyReport, render_markdown

    assert isinstance(report, ApplyReport)
    return render_markdown(report)


def _last(history: Any, mirror: str | None) -> dict[str, Any] | None:
    run = history.last_run(mirror)
    return run.to_json() if run is not None else None


def cmd_status(args: argparse.Namespace) -> int:
    from reconciler.engine.history import History
    from reconciler.engine.planner import plan_any_channel
    from reconciler.engine.published import published_counts

    loaded = _load(args, require_env=False)
    rows: list[dict[str, Any]] = []
    for i, channel in enumerate(loaded.config.channels):
        path = Path(channel.path)
        planned = plan_any_channel(channel, i, loaded.base_dir)
        warnings = {m.name: m for m in planned.mirrors}
        last = History(path).last_run(None)
        rows.append(
            {
                "channel": channel.name,
                "path": str(path),
                "subdirs": published_counts(channel),
                "last_run": last.to_json() if last else None,
                "drift": planned.has_changes,
                "mirrors": [
                    {
                        "name": m.name,
                        "mode": m.mode,
                        "schedule": m.schedule,
                        "last_run": _last(History(path), m.name),
                        "next_due": warnings[m.name].next_due,
                        "warning": warnings[m.name].warning,
                    }
                    for m in channel.mirrors
                ],
            }
        )
    if args.json:
        print(json.dumps({"channels": rows}, indent=2))
        return ExitCode.OK
    for row in rows:
        print(f"channel {row['channel']} ({row['path']})")
        counts = row["subdirs"]
        assert isinstance(counts, dict)
        shown = ", ".join(f"{s}: {'not indexed' if n is None else n}" for s, n in counts.items())
        print(f"  packages   {shown}")
        last = row["last_run"]
        if isinstance(last, dict):
            counts_text = f"+{last['added']} ~{last['updated']} -{last['removed']}"
            when = last["finished"] or last["started"]
            line = f"  last run   {last['state']} at {when} ({counts_text})"
            if last.get("error"):
                line += f": {last['error']}"
            print(line)
        else:
            print("  last run   never")
        print(f"  drift      {'yes: `reconcile plan` shows changes' if row['drift'] else 'none'}")
        for mirror in row["mirrors"]:
            last_mirror = mirror["last_run"]
            when = "never run"
            if last_mirror:
                stamp = last_mirror["finished"] or last_mirror["started"]
                when = f"last run {last_mirror['state']} at {stamp}"
            print(
                f"  mirror     {mirror['name']} ({mirror['mode']}, "
                f"schedule {mirror['schedule'] or 'every apply'}): {when}"
            )
            if mirror["next_due"]:
                print(f"             next due {mirror['next_due']}")
            if mirror["warning"]:
                print(f"             warning: {mirror['warning']}")
    return ExitCode.OK


def cmd_history(args: argparse.Namespace) -> int:
    from reconciler.engine.history import History

    loaded = _load(args, require_env=False)
    runs = []
    for channel in loaded.config.channels:
        if args.channel and channel.name not in args.channel:
            continue
        for run in History(Path(channel.path)).runs():
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
    print(f"{'started':26} {'target':28} {'state':10} {'+':>5} {'~':>5} {'-':>5}  error")
    for run in runs:
        print(
            f"{run.started:26} {run.target:28} {run.state:10} {run.added:5} {run.updated:5} "
            f"{run.removed:5}  {run.error or ''}"
        )
    return ExitCode.OK


def cmd_explain(args: argparse.Namespace) -> int:
    from reconciler.engine.explain import explain

    loaded = _load(args, require_env=False)
    found = list(explain(loaded, args.package, args.channel))
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
    )
    serve(loaded, args.host, args.port, options)
    return ExitCode.OK


def cmd_watch(args: argparse.Namespace) -> int:
    from reconciler.watch import Watcher

    watcher = Watcher(Path(args.config), debounce=args.debounce, tick=args.tick)
    watcher.install_signal_handlers()
    watcher.run(once=args.once, wait=args.debounce * 5 if args.once else None)
    return ExitCode.OK
