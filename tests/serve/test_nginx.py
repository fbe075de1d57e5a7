"""The nginx configuration docs/serve.md shows, with a real nginx in front of a real
`reconcile serve`: files on disk from nginx, the rest (passive fetches, private channels,
pages) from reconcile."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import requests

from reconciler import cli
from reconciler.kinds.conda.indexer import index_channel
from tests.faulty_server import faulty_server
from tests.packages import PackageSpec, build_package
from tests.serve.helpers import ServeProcess
from tests.serve.nginx import NGINX, free_port, nginx, sample_config, sample_serve_arguments

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NGINX is None, reason="needs Debian's nginx (.ci/run installs it)"),
]

TOKEN = "nginx-test-token-5d1c9e7a3b"


def _sent_by_nginx(response: requests.Response, path: Path) -> bool:
    """nginx's own ETag (mtime and size in hex), not the one reconcile makes."""
    st = path.stat()
    return response.headers.get("ETag") == f'"{int(st.st_mtime):x}-{st.st_size:x}"'


def test_the_documented_nginx_config(tmp_path: Path) -> None:
    upstream = tmp_path / "upstream"
    build_package(upstream, PackageSpec("app", "2.0", subdir="linux-64"))
    index_channel(upstream)
    root = tmp_path / "srv"
    with faulty_server(upstream) as (url, state):
        config = root / "channels.yaml"
        root.mkdir()
        config.write_text(
            "version: 1\nserve:\n  tokens:\n"
            "    - {name: readers, token_env: NGINX_TEST_TOKEN, channels: [internal]}\n"
            "channels:\n"
            "  - name: pub\n    path: ./pub\n    subdirs: [linux-64]\n    mirrors:\n"
            f"      - {{name: up, source: '{url}', mode: passive, retries: 0, timeout: 10}}\n"
            "  - {name: internal, access: private, path: ./internal}\n"
        )
        build_package(root / "pub", PackageSpec("mine", "1.0", subdir="linux-64"))
        build_package(root / "internal", PackageSpec("secret", "1.0", noarch="generic"))
        os.environ["NGINX_TEST_TOKEN"] = TOKEN
        try:
            assert cli.main(["apply", "-c", str(config)]) == 0
            served = ServeProcess(
                config,
                *sample_serve_arguments(),
                env={"NGINX_TEST_TOKEN": TOKEN},
                cwd=tmp_path,
            )
        finally:
            os.environ.pop("NGINX_TEST_TOKEN", None)
        try:
            reconcile_port = int(served.url.rsplit(":", 1)[1])
            port = free_port()
            with nginx(tmp_path / "nginx", sample_config(root, port, reconcile_port), port):
                front = f"http://127.0.0.1:{port}"
                # On disk: nginx answers itself, with the documented cache headers.
                repodata = requests.get(f"{front}/pub/linux-64/repodata.json", timeout=30)
                assert repodata.status_code == 200
                assert repodata.headers["Server"].startswith("nginx")
                assert repodata.headers["Cache-Control"] == "public, max-age=60"
                etag = repodata.headers["ETag"]
                again = requests.get(
                    f"{front}/pub/linux-64/repodata.json",
                    headers={"If-None-Match": etag},
                    timeout=30,
                )
                assert again.status_code == 304
                mine = requests.get(f"{front}/pub/linux-64/mine-1.0-0.conda", timeout=30)
                assert mine.status_code == 200
                assert mine.headers["Cache-Control"] == "public, max-age=31536000, immutable"
                # Not on disk yet: a passive file, fetched by reconcile through nginx.
                app = requests.get(f"{front}/pub/linux-64/app-2.0-0.conda", timeout=30)
                assert app.status_code == 200
                assert app.content == (upstream / "linux-64" / "app-2.0-0.conda").read_bytes()
                assert _sent_by_nginx(app, root / "pub" / "linux-64" / "app-2.0-0.conda")
                assert requests.get(f"{front}/pub/linux-64/app-2.0-0.conda", timeout=30).ok
                assert sum(1 for r in state["requests"] if r.endswith("app-2.0-0.conda")) == 1
                # Private: reconcile checks the token, nginx never serves it from disk.
                secret = "/internal/noarch/secret-1.0-0.conda"
                assert requests.get(front + secret, timeout=30).status_code == 401
                assert (
                    requests.get(
                        front + secret, headers={"Authorization": "Bearer wrong"}, timeout=30
                    ).status_code
                    == 403
                )
                # Once checked, nginx sends the file itself (X-Accel-Redirect), ranges too.
                on_disk = root / "internal" / "noarch" / "secret-1.0-0.conda"
                by_token = requests.get(f"{front}/t/{TOKEN}{secret}", timeout=30)
                assert by_token.content == on_disk.read_bytes()
                assert _sent_by_nginx(by_token, on_disk)
                assert "X-Accel-Redirect" not in by_token.headers
                part = requests.get(
                    front + secret, auth=("pip", TOKEN), headers={"Range": "bytes=2-9"}, timeout=30
                )
                assert part.status_code == 206 and part.content == on_disk.read_bytes()[2:10]
                revalidated = requests.get(
                    front + secret,
                    auth=("pip", TOKEN),
                    headers={"If-None-Match": by_token.headers["ETag"]},
                    timeout=30,
                )
                assert revalidated.status_code == 304
                # The internal location is nobody's URL.
                internal = f"{front}/_reconcile-files{on_disk.resolve()}"
                assert requests.get(internal, timeout=30).status_code == 404
                # State and hidden files: never.
                for hidden in ("/pub/.reconciler/state.json", "/channels.yaml.swp/.x"):
                    assert requests.get(front + hidden, timeout=30).status_code == 404
                # Pages come from reconcile.
                status = requests.get(f"{front}/api/status", timeout=30).json()
                assert [c["name"] for c in status["channels"]] == ["pub", "internal"]
                assert requests.get(f"{front}/metrics", timeout=30).status_code == 200
        finally:
            assert served.stop() == 0
