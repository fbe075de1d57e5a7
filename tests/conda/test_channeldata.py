"""channeldata.json (CEP-38) from the packages present."""

from __future__ import annotations

from typing import Any

from reconciler.conda.channeldata import build_channeldata
from reconciler.conda.metadata import CHANNELDATA_FLAGS, PackageMetadata
from reconciler.conda.run_exports import build_run_exports


def meta(name: str, version: str, ts: int = 1_700_000_000_000, **kw: Any) -> PackageMetadata:
    return PackageMetadata(
        filename=f"{name}-{version}-0.conda",
        index={"name": name, "version": version, "build": "0", "timestamp": ts},
        about=kw.pop("about", {"summary": f"{name} {version}", "home": "https://x.org"}),
        run_exports=kw.pop("run_exports", {}),
        flags=kw.pop("flags", {}),
    )


def test_newest_version_wins_by_conda_order() -> None:
    data = build_channeldata(
        {
            "linux-64": {
                "a-1.9-0.conda": meta("a", "1.9", ts=1_700_000_900_000),
                "a-1.10-0.conda": meta("a", "1.10", run_exports={"weak": ["a"]}),
            },
            "noarch": {"b-1-0.conda": meta("b", "1", flags={"post_link": True})},
            "osx-arm64": {"a-1.10-0.conda": meta("a", "1.10")},
        }
    )
    assert data["channeldata_version"] == 1
    assert data["subdirs"] == ["linux-64", "noarch", "osx-arm64"]
    a = data["packages"]["a"]
    assert a["version"] == "1.10"
    assert a["summary"] == "a 1.10"
    assert a["subdirs"] == ["linux-64", "osx-arm64"]
    assert a["timestamp"] == 1_700_000_900  # newest of any record, in seconds
    assert a["run_exports"]["1.9"] == {}
    assert a["run_exports"]["1.10"] in ({"weak": ["a"]}, {})
    assert set(CHANNELDATA_FLAGS) <= set(a)
    assert data["packages"]["b"]["post_link"] is True
    assert data["packages"]["b"]["pre_link"] is False


def test_names_without_files_do_not_appear() -> None:
    data = build_channeldata({"noarch": {}, "linux-64": {"a-1-0.conda": meta("a", "1")}})
    assert list(data["packages"]) == ["a"]


def test_run_exports_lists_every_package() -> None:
    data = build_run_exports("linux-64", {"a-1-0.conda": {"weak": ["a >=1"]}, "b-1-0.tar.bz2": {}})
    assert data["info"]["subdir"] == "linux-64"
    assert data["packages.conda"] == {"a-1-0.conda": {"run_exports": {"weak": ["a >=1"]}}}
    assert data["packages"] == {"b-1-0.tar.bz2": {"run_exports": {}}}
