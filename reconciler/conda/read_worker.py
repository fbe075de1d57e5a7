"""Reading many packages in worker processes that import only what reading needs.

A worker started by ``fork`` from a big process carries that process's pages
(and counts them in its resident size); these workers are fresh interpreters
running this module, a few tens of MB each, so reading a big channel in parallel
costs little memory. They take msgpack-framed paths on stdin and answer one
msgpack array per path on stdout: ``[path, encoded metadata | nil, sha256, error | nil]``.
Anything a worker leaves unanswered (it died) is read in the calling process.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

import msgpack

from reconciler.conda.archive import read_package
from reconciler.conda.metadata import PackageMetadata, encode_metadata
from reconciler.conda.names import strip_suffix
from reconciler.errors import PackageError

# (path, the metadata encoded as the stat cache keeps it, its sha256, why it cannot be
# indexed): the first is None exactly when the last is not.
ReadResult = tuple[str, bytes | None, str, str | None]


def identity_problem(meta: PackageMetadata, subdir: str) -> str | None:
    """Why the package's metadata disagrees with its filename or folder."""
    index = meta.index
    stem = strip_suffix(meta.filename)
    expected = f"{index.get('name')}-{index.get('version')}-{index.get('build')}"
    if stem != expected:
        return f"index.json says {expected}, but the filename says {stem}"
    declared = index.get("subdir")
    if declared is None:
        # Old packages lack `subdir`; noarch ones say so with `noarch`.
        declared = "noarch" if index.get("noarch") or index.get("arch") is None else None
    if declared is not None and declared != subdir:
        return f"index.json subdir is {declared!r} but the file is in {subdir}/"
    return None


def read_one(path: str) -> ReadResult:
    """Read one package and check it against its filename and the folder it is in."""
    try:
        meta = read_package(Path(path))
        problem = identity_problem(meta, Path(path).parent.name)
        if problem:
            return path, None, "", problem
        return path, encode_metadata(meta), meta.sha256, None
    except PackageError as exc:
        return path, None, "", exc.reason
    except Exception as exc:  # one bad file never stops the others
        return path, None, "", f"unreadable package ({type(exc).__name__}: {exc})"


def _feed(stdin: IO[bytes], paths: Sequence[str]) -> None:
    try:
        with stdin:
            for path in paths:
                stdin.write(msgpack.packb(path))
    except OSError:  # the worker died; what it did not answer is read by the caller
        pass


def _collect(stdout: IO[bytes], answers: queue.Queue[ReadResult | None]) -> None:
    try:
        for item in msgpack.Unpacker(stdout, raw=False, use_list=True):
            path, blob, sha256, error = item
            answers.put((str(path), blob, str(sha256), error))
    except Exception:  # a garbled stream: the rest is read by the caller
        pass
    finally:
        answers.put(None)


def read_in_workers(
    paths: Sequence[str], workers: int, advance: Callable[[int], None]
) -> list[ReadResult]:
    """:func:`read_one` of every path, in ``workers`` processes; results in ``paths`` order."""
    env = dict(os.environ)
    # The workers import this package from where this process found it.
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    answers: queue.Queue[ReadResult | None] = queue.Queue()
    processes: list[subprocess.Popen[bytes]] = []
    threads: list[threading.Thread] = []
    try:
        for number in range(workers):
            share = paths[number::workers]
            process = subprocess.Popen(
                [sys.executable, "-m", "reconciler.conda.read_worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            processes.append(process)
            assert process.stdin is not None and process.stdout is not None
            for target, args in (
                (_feed, (process.stdin, share)),
                (_collect, (process.stdout, answers)),
            ):
                thread = threading.Thread(target=target, args=args, daemon=True)
                thread.start()
                threads.append(thread)
        found: dict[str, ReadResult] = {}
        running = workers
        while running:
            answer = answers.get()
            if answer is None:
                running -= 1
                continue
            found[answer[0]] = answer
            advance(1)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        for thread in threads:
            thread.join()
    results = []
    for path in paths:
        answer = found.get(path)
        if answer is None:  # its worker died before answering: read it here
            answer = read_one(path)
            advance(1)
        results.append(answer)
    return results


def main() -> None:
    stdout = sys.stdout.buffer
    for path in msgpack.Unpacker(sys.stdin.buffer, raw=False):
        stdout.write(msgpack.packb(list(read_one(str(path))), use_bin_type=True))
    stdout.flush()


if __name__ == "__main__":
    main()
