"""Running `reconcile serve` in tests: in a thread, or as a real process."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from reconciler.config.models import load_config
from reconciler.serve.server import ChannelServer, ServeOptions


@contextmanager
def running(config: Path, options: ServeOptions | None = None) -> Iterator[ChannelServer]:
    """The server of ``config`` on 127.0.0.1 (random port), in a thread."""
    server = ChannelServer(("127.0.0.1", 0), load_config(config, serving=True), options)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def raw_get(
    url: str, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[http.client.HTTPResponse, bytes]:
    """One request with the path sent as given (no client-side normalisation)."""
    host, port = url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request(method, path, headers=headers or {})
    response = connection.getresponse()
    body = response.read()
    connection.close()
    return response, body


def raw_exchange(url: str, data: bytes, wait: float = 1.0) -> bytes:
    """Send ``data`` on a fresh connection; everything the server sends back until it
    closes the connection or stays quiet for ``wait`` seconds."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(data)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
        return received


class ServeProcess:
    """`reconcile serve` as a subprocess; its stderr goes to a file the test can read."""

    def __init__(
        self, config: Path, *args: str, env: Mapping[str, str] | None = None, cwd: Path
    ) -> None:
        self.log = cwd / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
        self._handle = self.log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "serve", "-c", str(config), "--port", "0", *args],
            stdout=subprocess.DEVNULL,
            stderr=self._handle,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        deadline = time.monotonic() + 30
        while " on http://" not in (text := self.log.read_text()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"serve did not start: {text}")
            time.sleep(0.02)
        self.url = text.split(" on ", 1)[1].split()[0].rstrip("/")

    def text(self) -> str:
        return self.log.read_text()

    def wait_for(self, needle: str, timeout: float = 15) -> str:
        deadline = time.monotonic() + timeout
        while needle not in (text := self.text()):
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} not in the server's log:\n{text}")
            time.sleep(0.05)
        return text

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        code = self.process.wait(timeout=60)
        self._handle.close()
        return code
