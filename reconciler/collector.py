"""Python's cycle collector paused while millions of acyclic objects are made.

Decoding a big document makes millions of containers with no cycles among them; every
collection pass walks them all again (half the time of such a decoding). A plan that
selects from every record of a big upstream holds them all until it ends: the
collector's full passes were a third of its time. Refcounting still frees them; the few
cycles made meanwhile wait for the first collection after.

Several threads may be inside at once (a mirror's subdirs decoding): the collector is
paused while any of them is, and put back as it was when the last one leaves, so one
thread's end never turns it back on under another, nor leaves it off for good.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

_lock = threading.Lock()
_inside = 0  # threads inside collector_paused() now
_was_enabled = False  # the collector's state when the first of them came in


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    global _inside, _was_enabled
    with _lock:
        if _inside == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _inside += 1
    try:
        yield
    finally:
        with _lock:
            _inside -= 1
            if _inside == 0 and _was_enabled:
                gc.enable()
