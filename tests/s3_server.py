"""A real S3 server on 127.0.0.1 for the tests: moto's, in a process of its own.

``python -m tests.s3_server`` starts moto's S3 (its werkzeug application, threaded)
on a random port and prints ``listening on PORT``. In front of it:

- **request counts** per bucket and operation (``GET /_reconcile/counts?bucket=B``,
  reset with ``DELETE``): tests assert that a no-op apply PUTs nothing;
- **atomic conditional writes**: moto checks ``If-Match`` / ``If-None-Match`` and then
  writes, without a lock, so two racing writers can both pass the check. Real
  servers make the check and the write one step; here mutating requests of one
  object take a per-key lock (``--no-atomic`` turns it off). This emulation lives in
  the tests only: the production code always sends the conditions.

:func:`start_s3_server` runs it and gives its URL; :func:`s3_env` the environment a
``reconcile`` process needs to reach it (test credentials, no metadata service, no
user configuration).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import requests

REPO = Path(__file__).resolve().parents[1]
CONTROL = "/_reconcile/counts"
# Package files: a no-op run never reads one.
PACKAGE_SUFFIXES = (".conda", ".tar.bz2", ".whl", ".tar.gz", ".zip")


def operation(method: str, path: str, query: str) -> tuple[str, str]:
    """(bucket, operation) of a request: GET (GET_PACKAGE for a package file), HEAD, LIST,
    PUT, DELETE, POST, ..."""
    parts = path.lstrip("/").split("/", 1)
    bucket = parts[0]
    key = parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key:
        kind = "LIST" if "list-type" in query or "prefix" in query or not query else "GET_BUCKET"
        if "uploads" in query:
            kind = "LIST_UPLOADS"
    elif method == "GET" and key.endswith(PACKAGE_SUFFIXES):
        kind = "GET_PACKAGE"
    else:
        kind = method
    return bucket, kind


class Front:
    """WSGI middleware: counts requests, serialises writes of one key."""

    def __init__(self, app: Callable[..., Any], atomic: bool) -> None:
        self.app = app
        self.atomic = atomic
        self.counts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.keys: dict[str, threading.Lock] = {}

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        query = environ.get("QUERY_STRING", "")
        if path == CONTROL:
            return self._control(method, query, start_response)
        bucket, kind = operation(method, path, query)
        with self.lock:
            self.counts[(bucket, kind)] += 1
            if method == "PUT" and path.endswith("/repodata.json"):
                subdir = path.rsplit("/", 2)[-2]  # which index generation was written
                self.counts[(bucket, f"PUT {subdir}/repodata.json")] += 1
        if not self.atomic or method not in ("PUT", "POST", "DELETE"):
            return self.app(environ, start_response)
        with self.lock:
            key_lock = self.keys.setdefault(path, threading.Lock())
        with key_lock:
            # The whole response is produced under the lock: moto's check and write.
            return list(self.app(environ, start_response))

    def _control(self, method: str, query: str, start_response: Callable[..., Any]) -> Any:
        bucket = parse_qs(query).get("bucket", [""])[0]
        with self.lock:
            if method == "DELETE":
                for key in [k for k in self.counts if not bucket or k[0] == bucket]:
                    del self.counts[key]
                body = b"{}"
            else:
                mine = {k[1]: v for k, v in self.counts.items() if not bucket or k[0] == bucket}
                body = json.dumps(mine).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--no-atomic", action="store_true")
    args = parser.parse_args()
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = Front(DomainDispatcherApplication(create_backend_app), atomic=not args.no_atomic)

    class Quiet(MotoRequestHandler):  # type: ignore[misc]
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    server = make_server("127.0.0.1", args.port, app, threaded=True, request_handler=Quiet)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


@dataclass
class S3Server:
    url: str
    process: subprocess.Popen[bytes]

    def counts(self, bucket: str) -> Counter[str]:
        response = requests.get(f"{self.url}{CONTROL}", params={"bucket": bucket}, timeout=10)
        return Counter(response.json())

    def reset(self, bucket: str) -> None:
        requests.delete(f"{self.url}{CONTROL}", params={"bucket": bucket}, timeout=10)

    def client(self) -> Any:
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            region_name="us-east-1",
        )

    def env(self) -> dict[str, str]:
        return s3_env(self.url)


def s3_env(url: str) -> dict[str, str]:
    """What a process needs to reach the test server and nothing else."""
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


UNSET = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")


@contextmanager
def start_s3_server(atomic: bool = True) -> Iterator[S3Server]:
    args = [sys.executable, "-m", "tests.s3_server"] + ([] if atomic else ["--no-atomic"])
    env = {k: v for k, v in os.environ.items() if k not in UNSET}
    env["PYTHONPATH"] = str(REPO)
    process = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the S3 server did not start: {line!r}")
        url = f"http://127.0.0.1:{int(line.split()[-1])}"
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{url}{CONTROL}", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield S3Server(url, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def copy_prefix(client: Any, bucket: str, source: str, target: str) -> None:
    """Copy every object under ``source/`` to ``target/`` (a scenario's starting state)."""
    for key in list_keys(client, bucket, source):
        client.copy_object(
            Bucket=bucket,
            Key=target + key[len(source) :],
            CopySource={"Bucket": bucket, "Key": key},
        )


def list_keys(client: Any, bucket: str, prefix: str) -> Iterable[str]:
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix.rstrip("/") + "/"):
        for item in page.get("Contents", ()):
            yield item["Key"]


if __name__ == "__main__":
    main()
