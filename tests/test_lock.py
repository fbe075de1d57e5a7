"""The per-channel lock: exclusive, says who holds it, freed when its holder dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from reconciler.engine.lock import LockTimeout, channel_lock, read_holder

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from reconciler.engine.lock import channel_lock
    with channel_lock(Path(sys.argv[1]), command="reconcile apply (test)"):
        print("locked", flush=True)
        time.sleep(float(sys.argv[2]))
    """
)


def hold_in_child(channel: Path, seconds: float) -> subprocess.Popen[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(channel), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "locked"
    return child


def test_second_holder_times_out_naming_the_first(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 30)
    try:
        holder = read_holder(tmp_path)
        assert holder is not None and holder.pid == child.pid
        with pytest.raises(LockTimeout) as info, channel_lock(tmp_path, timeout=0.3):
            pass
        assert f"pid {child.pid}" in info.value.message
        assert "reconcile apply (test)" in info.value.message
    finally:
        child.kill()
        child.wait()


def test_waiter_gets_the_lock_when_the_holder_finishes(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 0.5)
    started = time.monotonic()
    with channel_lock(tmp_path, timeout=20) as me:
        assert time.monotonic() - started >= 0.2
        assert read_holder(tmp_path) is not None
        assert me.pid != child.pid
    child.wait()
    assert read_holder(tmp_path) is None


def test_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    child = hold_in_child(tmp_path, 60)
    child.kill()
    child.wait()
    with channel_lock(tmp_path, timeout=0):
        holder = read_holder(tmp_path)
        assert holder is not None and holder.pid != child.pid
