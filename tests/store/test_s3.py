"""The S3 store against a real S3 server (moto's, on 127.0.0.1): what a bucket adds."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from reconciler.config.models import S3Location, StorageOptions, load_config
from reconciler.errors import ConfigError
from reconciler.store import open_store
from reconciler.store import s3 as s3_module
from reconciler.store.base import LockTimeout, PreconditionFailed, StorageError
from reconciler.store.local import LocalStore
from reconciler.store.s3 import S3Store, cache_control
from tests.s3_server import S3Server, list_keys


def store_of(bucket: str, prefix: str = "chan", **options: object) -> S3Store:
    settings = StorageOptions.model_construct(**{**StorageOptions().model_dump(), **options})
    return S3Store(S3Location(bucket=bucket, prefix=prefix), settings)


def test_uploads_carry_cache_control_and_content_type(s3: S3Server, bucket: str) -> None:
    store = store_of(bucket)
    store.write("linux-64/repodata.json", b"{}")
    store.write("linux-64/shards/ab.msgpack.zst", b"x")
    store.write("linux-64/repodata_shards.msgpack.zst", b"x")
    store.write(".reconciler/state.json", b"{}")
    writer = store.writer("linux-64/a-1-0.conda")
    writer.handle.write(b"package")
    writer.commit()
    client = s3.client()

    def head(key: str) -> tuple[str, str]:
        response = client.head_object(Bucket=bucket, Key=f"chan/{key}")
        return response["CacheControl"], response["ContentType"]

    immutable = "public, max-age=31536000, immutable"
    assert head("linux-64/repodata.json") == ("public, max-age=60", "application/json")
    assert head("linux-64/shards/ab.msgpack.zst") == (immutable, "application/zstd")
    assert head("linux-64/repodata_shards.msgpack.zst")[0] == "public, max-age=60"
    assert head(".reconciler/state.json")[0] == "no-store"
    assert head("linux-64/a-1-0.conda") == (immutable, "application/octet-stream")
    assert cache_control("simple/pkg/index.html", 30) == "public, max-age=30"
    assert cache_control("packages/pkg/pkg-1.0-py3-none-any.whl") == immutable


def test_a_private_channels_objects_are_for_the_clients_own_cache(
    s3: S3Server, bucket: str, tmp_path: Path
) -> None:
    """A presigned URL's answer carries the object's Cache-Control: never ``public``."""
    from reconciler.config.models import load_config
    from reconciler.store import channel_store

    (tmp_path / "channels.yaml").write_text(
        "version: 1\nserve:\n  tokens:\n"
        "    - {name: readers, token_env: S3_TEST_TOKEN, channels: [internal]}\n"
        "channels:\n"
        f"  - {{name: internal, access: private, path: 's3://{bucket}/private'}}\n"
        f"  - {{name: open, path: 's3://{bucket}/open'}}\n"
    )
    config = load_config(tmp_path / "channels.yaml")
    stores = [channel_store(channel) for channel in config.config.channels]
    for store in stores:
        store.write("noarch/repodata.json", b"{}")
        store.write("noarch/a-1-0.conda", b"package")
    client = s3.client()

    def control(key: str) -> str:
        cache: str = client.head_object(Bucket=bucket, Key=key)["CacheControl"]
        return cache

    assert control("private/noarch/repodata.json") == "private, max-age=60"
    assert control("private/noarch/a-1-0.conda") == "private, max-age=31536000, immutable"
    assert control("open/noarch/repodata.json") == "public, max-age=60"
    assert control("open/noarch/a-1-0.conda") == "public, max-age=31536000, immutable"


def test_unchanged_bytes_are_never_uploaded_again(s3: S3Server, bucket: str) -> None:
    store = store_of(bucket)
    assert store.write_if_changed("noarch/repodata.json", b'{"a": 1}') is True
    s3.reset(bucket)
    assert store.write_if_changed("noarch/repodata.json", b'{"a": 1}') is False
    counts = s3.counts(bucket)
    assert counts == {"HEAD": 1}, counts  # the ETag is the MD5: no GET, no PUT


def test_a_multipart_upload_is_conditional_too(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "MULTIPART_THRESHOLD", 1024)
    monkeypatch.setattr(s3_module, "PART_SIZE", 5 * 1024 * 1024)
    store = store_of(bucket)
    data = bytes(range(256)) * (24 * 1024)  # 6 MiB: two parts
    for _ in range(2):  # the second: a 412, then the same bytes found there
        writer = store.writer("linux-64/big-1-0.conda")
        writer.handle.write(data)
        info = writer.commit()
    assert "-" in info.tag  # a multipart ETag
    assert store.read("linux-64/big-1-0.conda") == data
    with pytest.raises(PreconditionFailed):
        store.write("linux-64/big-1-0.conda", b"x", if_absent=True)


def test_an_expired_lease_is_taken_over_and_its_holder_fenced(s3: S3Server, bucket: str) -> None:
    first = store_of(bucket, lease_ttl=1.0)
    second = store_of(bucket, lease_ttl=1.0)
    with first.lock(timeout=0, command="first") as held:
        assert held.generation is not None
        holder = second.lock_holder()
        assert holder is not None and holder.command == "first" and holder.expires
        with (
            pytest.raises(LockTimeout, match=r"first\) since .*, lease \d+ until"),
            second.lock(timeout=0, command="second"),
        ):
            pass
        lease = first._lease
        assert lease is not None
        lease.stop()  # the holder stalls: no more renewals
        time.sleep(2.5)  # the TTL, and the servers' one-second clock
        with second.lock(timeout=0, command="second") as taken:
            assert taken.generation is not None and taken.generation > held.generation
            # The stalled holder finds out before its next write, and writes nothing.
            lease.renewed -= 10
            with pytest.raises(StorageError, match="another run took the channel's lease over"):
                first.write("noarch/repodata.json", b"late")
            assert second.read("noarch/repodata.json") is None
    assert second.lock_holder() is None


def test_lease_generations_grow_across_holders(s3: S3Server, bucket: str) -> None:
    store = store_of(bucket)
    generations = []
    for _ in range(3):
        with store.lock(timeout=0, command="apply") as holder:
            generations.append(holder.generation)
        time.sleep(0.002)
    assert generations == sorted(generations) and len(set(generations)) == 3


def test_history_pieces_are_compacted_without_loss(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "COMPACT_AFTER", 5)
    store = store_of(bucket)
    key = ".reconciler/history.jsonl"
    lines = [f'{{"n": {n}}}\n'.encode() for n in range(12)]
    for line in lines[:7]:
        store.append_line(key, line)
    store.compact_lines(key)
    pieces = list(list_keys(s3.client(), bucket, "chan/.reconciler/history.jsonl.d"))
    assert len(pieces) == 1 and pieces[0].rsplit("/", 1)[1].startswith("seg-")
    for line in lines[7:]:
        store.append_line(key, line)
    assert list(store.read_lines(key)) == lines
    # A compaction killed after writing its segment, before deleting what it merged:
    # readers take the union, never a line twice.
    monkeypatch.setattr(store, "delete", lambda *a, **k: False)
    store.compact_lines(key)
    assert list(store.read_lines(key)) == lines
    # A log copied from a folder (a channel moved into the bucket) comes first.
    store.write(key, b'{"n": -1}\n')
    assert list(store.read_lines(key)) == [b'{"n": -1}\n', *lines]


def test_without_conditional_writes_the_conditions_are_checked_first(
    s3: S3Server, bucket: str
) -> None:
    store = store_of(bucket, conditional_writes=False)
    first = store.write("noarch/repodata.json", b"one", if_absent=True)
    with pytest.raises(PreconditionFailed):
        store.write("noarch/repodata.json", b"two", if_absent=True)
    store.write("noarch/repodata.json", b"two", if_match=first.tag)
    with pytest.raises(PreconditionFailed):
        store.write("noarch/repodata.json", b"three", if_match=first.tag)
    with store.lock(timeout=0, command="single writer"):
        pass


def test_errors_name_the_bucket_and_say_what_to_do(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(StorageError, match="the bucket no-such-bucket does not exist") as caught:
        store_of("no-such-bucket").write("noarch/repodata.json", b"{}")
    assert caught.value.hint and "create the bucket" in caught.value.hint
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="no AWS credentials found") as caught:
        store_of(bucket).read("noarch/repodata.json")
    assert caught.value.hint and "AWS_PROFILE" in caught.value.hint


def test_stale_multipart_uploads_are_aborted(
    s3: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = s3.client()
    client.create_multipart_upload(Bucket=bucket, Key="chan/linux-64/x-1-0.conda")
    store = store_of(bucket)
    # (moto reports every upload as initiated in 2010, so the age check is not tested here)
    monkeypatch.setattr(s3_module, "STALE_UPLOAD", -1.0)
    assert store.clean_temporaries() >= 1
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_open_store_takes_urls_and_never_makes_a_folder_of_one(tmp_path: Path) -> None:
    store = open_store("s3://chan/team/x")
    assert isinstance(store, S3Store) and store.bucket == "chan" and store.prefix == "team/x"
    assert store.describe("noarch/repodata.json") == "s3://chan/team/x/noarch/repodata.json"
    assert isinstance(open_store(tmp_path), LocalStore)
    with pytest.raises(StorageError, match="mangled URL"):
        open_store(Path("s3://chan/team"))  # a Path folds s3:// into s3:/
    with pytest.raises(StorageError, match="unsupported path scheme 'gs://'"):
        open_store("gs://chan/team")


# -- configuration ----------------------------------------------------------------------


def config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "channels.yaml"
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def test_an_s3_path_is_a_location_not_a_folder(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """
        version: 1
        channels:
          - name: team
            path: s3://chan/team/
            storage: {endpoint_url: "http://127.0.0.1:9000/", addressing_style: path}
          - name: wheels
            kind: pypi
            path: s3://chan/wheels
            deletion_grace: 0
          - name: disk
            path: ./disk
        defaults: {deletion_grace: 300, index_max_age: 30}
        """,
    )
    loaded = load_config(path)
    team, wheels, disk = loaded.config.channels
    assert team.path == S3Location(bucket="chan", prefix="team") and str(team.path) == (
        "s3://chan/team"
    )
    assert team.storage is not None and team.storage.endpoint_url == "http://127.0.0.1:9000"
    assert (team.grace, team.max_age, wheels.grace, wheels.max_age) == (300, 30, 0, 30)
    assert disk.path == tmp_path / "disk"
    assert not (tmp_path / "s3:").exists()


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        (
            "path: gs://chan/team",
            "4: channels[0].path: unsupported path scheme 'gs://': a channel path is a folder "
            "or s3://bucket/prefix",
        ),
        ("path: s3://Chan/team", "4: channels[0].path: 's3://Chan/team' does not name a bucket"),
        ("path: s3://chan/a/../b", "4: channels[0].path: prefix of 's3://chan/a/../b' has an"),
        (
            "path: s3://chan/x\n    storage: {aws_secret_access_key: abc}",
            "5: channels[0].storage: 'aws_secret_access_key' looks like a secret",
        ),
        (
            "path: s3://chan/x\n    storage: {endpoint_url: 'https://key:secret@host'}",
            "5: channels[0].storage.endpoint_url: endpoint_url contains credentials",
        ),
        (
            "path: ./folder\n    storage: {region: eu-west-1}",
            "3: channels[0]: storage: settings apply only to a channel whose path is s3://",
        ),
    ],
)
def test_bad_locations_and_storage_settings_are_refused(
    tmp_path: Path, channel: str, message: str
) -> None:
    path = config(tmp_path, f"version: 1\nchannels:\n  - name: team\n    {channel}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in caught.value.message, caught.value.message
    assert not any(tmp_path.glob("*:*"))


def test_channels_may_not_share_or_nest_bucket_prefixes(tmp_path: Path) -> None:
    path = config(
        tmp_path,
        """
        version: 1
        channels:
          - {name: a, path: "s3://chan/team"}
          - {name: b, path: "s3://chan/team/sub"}
          - {name: c, path: "s3://other/team"}
        """,
    )
    with pytest.raises(ConfigError, match="channel 'b' path s3://chan/team/sub is nested"):
        load_config(path)


def test_reconcile_index_of_a_bucket(
    s3: S3Server, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from reconciler import cli
    from tests.packages import PackageSpec, build_package

    store = store_of(bucket, prefix="team/chan")
    for spec in (
        PackageSpec("one", "1.0", subdir="linux-64"),
        PackageSpec("two", "1.0", noarch="generic"),
    ):
        built = build_package(tmp_path / "built", spec)
        store.write(f"{spec.subdir}/{built.name}", built.read_bytes())
    store.write("linux-64/broken-1.0-0.conda", b"not a package")
    monkeypatch_cwd = tmp_path  # nothing may appear here: no "s3:" folder
    assert cli.main(["index", f"s3://{bucket}/team/chan", "--shards"]) == 0
    out = capsys.readouterr().out
    assert f"s3://{bucket}/team/chan: indexed 2 packages" in out and "1 skipped" in out
    repodata = store.read("linux-64/repodata.json")
    assert repodata is not None and b"one-1.0-0.conda" in repodata and b"broken" not in repodata
    assert store.read("noarch/repodata.json") is not None
    assert not list(monkeypatch_cwd.glob("s3*")) and not Path("s3:").exists()
    # Nothing changed: nothing written, and not even the lease taken. (A package that
    # cannot be read is read again on every run, in case it was fixed: remove it first.)
    store.delete("linux-64/broken-1.0-0.conda")
    assert cli.main(["index", f"s3://{bucket}/team/chan", "--shards"]) == 0
    s3.reset(bucket)
    assert cli.main(["index", f"s3://{bucket}/team/chan", "--shards"]) == 0
    counts = s3.counts(bucket)
    assert counts["PUT"] == counts["DELETE"] == counts["GET_PACKAGE"] == 0, counts
