"""Rebuild ``examples/upstream/pypi``: a static PEP 503 simple index the example mirrors offline.

    python examples/upstream/build_pypi_demo.py

The wheels and sdists are real (tiny) distributions; each project folder holds
them and an ``index.html`` linking them with sha256 fragments, the way a static
simple index on any web server looks. The output is committed.
"""

from __future__ import annotations

import hashlib
import html
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from tests.pypi.dists import build_sdist, build_wheel  # noqa: E402


def main() -> None:
    root = HERE / "pypi"
    shutil.rmtree(root, ignore_errors=True)
    made = {
        "demo-tool": [
            build_wheel(root / "demo-tool", "demo-tool", "1.0"),
            build_sdist(root / "demo-tool", "demo-tool", "1.0"),
            build_wheel(root / "demo-tool", "demo-tool", "1.1", requires_python=">=3.8"),
            build_wheel(root / "demo-tool", "demo-tool", "2.0b1"),
        ],
        "demo-native": [
            build_wheel(
                root / "demo-native", "demo-native", "0.5", tag="py3-none-manylinux_2_17_x86_64"
            ),
            build_wheel(root / "demo-native", "demo-native", "0.5", tag="py3-none-win_amd64"),
        ],
    }
    for project, files in made.items():
        anchors = []
        for path in sorted(files):
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            requires = ' data-requires-python="&gt;=3.8"' if "1.1" in path.name else ""
            name = html.escape(path.name)
            anchors.append(f'<a href="{name}#sha256={digest}"{requires}>{name}</a><br/>')
        page = "<!DOCTYPE html>\n<html><body>\n" + "\n".join(anchors) + "\n</body></html>\n"
        (root / project / "index.html").write_text(page)


if __name__ == "__main__":
    main()
