"""A real nginx (Debian's) in the foreground on 127.0.0.1, for tests and benchmarks.

``sample_config`` takes the configuration docs/serve.md shows and points it at a
test's folders and ports, so what the documentation says is what is tested.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def sample_server_block() -> str:
    """The nginx block of docs/serve.md (the one marked as tested)."""
    text = (REPO / "docs" / "serve.md").read_text()
    marker = text.index("tests/serve/test_nginx.py")
    start = text.index("```nginx\n", marker) + len("```nginx\n")
    return text[start : text.index("```", start)]


def sample_serve_arguments() -> list[str]:
    """The ``reconcile serve`` options docs/serve.md gives for running behind that block
    (its command line with ``--accel-redirect``), but the address and configuration."""
    text = (REPO / "docs" / "serve.md").read_text()
    line = next(
        line
        for line in text.splitlines()
        if line.startswith("reconcile serve ") and "--accel-redirect" in line
    )
    arguments = line.split("#")[0].split()[2:]
    kept: list[str] = []
    for argument in arguments:
        if kept and kept[-1] in ("-c", "--port", "--host"):
            kept.pop()  # the test's own
        elif argument != "--behind-proxy":  # tests listen on loopback
            kept.append(argument)
    return kept


def sample_config(root: Path, port: int, reconcile_port: int) -> str:
    """The documented block, listening on 127.0.0.1:``port`` without TLS."""
    block = sample_server_block()
    block = block.replace("listen 443 ssl http2;", f"listen 127.0.0.1:{port};")
    block = re.sub(r"^\s*ssl_certificate.*\n", "", block, flags=re.MULTILINE)
    block = block.replace("root /srv/channels;", f"root {root};")
    block = block.replace("server 127.0.0.1:8000;", f"server 127.0.0.1:{reconcile_port};")
    return block


def direct_config(root: Path, port: int) -> str:
    """nginx serving ``root`` as static files, as a plain file server would."""
    return (
        "server {\n"
        f"    listen 127.0.0.1:{port};\n"
        f"    root {root};\n"
        "    sendfile on;\n    tcp_nopush on;\n"
        "    location / { try_files $uri =404; }\n"
        "}\n"
    )


def full_config(work: Path, servers: str) -> str:
    temp = work / "temp"
    temp.mkdir(parents=True, exist_ok=True)
    user = "user root;\n" if os.geteuid() == 0 else ""  # the worker must read test folders
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {work}/nginx.pid;\n"
        f"error_log {work}/error.log warn;\n"
        "events { worker_connections 4096; }\n"
        "http {\n"
        "    access_log off;\n"
        "    default_type application/octet-stream;\n"
        "    types { application/json json; text/html html; }\n"
        "    keepalive_requests 1000000;\n"
        f"    client_body_temp_path {temp}/body;\n    proxy_temp_path {temp}/proxy;\n"
        f"    fastcgi_temp_path {temp}/fastcgi;\n    uwsgi_temp_path {temp}/uwsgi;\n"
        f"    scgi_temp_path {temp}/scgi;\n" + servers + "}\n"
    )


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def nginx(work: Path, servers: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """nginx with ``servers`` (server blocks), in the foreground; stopped on exit."""
    assert NGINX is not None
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(full_config(work, servers))
    check = subprocess.run([NGINX, "-t", "-p", str(work), "-c", str(conf)], capture_output=True)
    if check.returncode != 0:
        raise RuntimeError(check.stderr.decode())
    process = subprocess.Popen(
        [NGINX, "-p", str(work), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
