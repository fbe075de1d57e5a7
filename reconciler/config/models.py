"""The ``channels.yaml`` configuration: pydantic models and a loader that reports
every problem at once as ``FILE:LINE: key.path: message``.

Field-level rules (types, cron syntax, match specs, subdir names) live on the
models; rules that relate several fields (unique names, overlapping paths,
mirror subdirs) live in :mod:`reconciler.config.checks` and run on the raw data,
so they are reported even when other parts of the file are invalid.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    PositiveInt,
    Tag,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from reconciler.conda.license_text import LICENSE_FAMILIES, license_rule_problem
from reconciler.conda.names import is_valid_subdir
from reconciler.config.diagnostics import Diagnostic, Severity
from reconciler.errors import ConfigError

CONFIG_VERSION = 1
# An upstream record claiming a bigger file than this is refused: 32 GiB, far above any
# real package, far below what would fill a disk by a lie.
MAX_FILE_SIZE = 32 * 1024**3

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
ENV_VAR_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


def _to_utc_datetime(value: Any) -> Any:
    """YAML gives ``date`` for ``2023-01-01``; filters compare instants in UTC."""
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    return value


UtcDateTime = Annotated[
    dt.datetime,
    BeforeValidator(_to_utc_datetime),
    AfterValidator(_to_utc_datetime),  # strings parse to naive date-times: UTC too
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "format": "date"},
                {"type": "string", "format": "date-time"},
            ],
            "description": "a date (midnight UTC) or a date-time; no zone means UTC",
        }
    ),
]


# Subdir names in the JSON Schema, so editors flag them too (the model's own check
# gives the friendlier message).
SubdirName = Annotated[
    str,
    WithJsonSchema({"type": "string", "pattern": "^(noarch|[a-z0-9]+-[a-z0-9]+)$"}),
]


def _check_version_spec(value: str | None) -> str | None:
    if value is None:
        return None
    from rattler import VersionSpec

    try:
        VersionSpec(value)
    except Exception as exc:
        raise ValueError(f"invalid version spec {value!r}: {exc}") from None
    return value


def _check_match_spec(value: str | None) -> str | None:
    if value is None:
        return None
    from rattler import MatchSpec

    try:
        MatchSpec(value)
    except Exception as exc:
        raise ValueError(f"invalid match spec {value!r}: {exc}") from None
    return value


def _check_subdirs(values: list[str]) -> list[str]:
    bad = [s for s in values if not is_valid_subdir(s)]
    if bad:
        raise ValueError(
            f"invalid subdir name(s) {', '.join(map(repr, bad))}: "
            "expected 'noarch' or '<os>-<arch>' in lower case, e.g. 'linux-64'"
        )
    dupes = sorted({s for s in values if values.count(s) > 1})
    if dupes:
        raise ValueError(f"subdir(s) listed twice: {', '.join(dupes)}")
    return values


class Rule(_Model):
    """One filter rule; its keys are AND-ed. A package matches when every given key does."""

    name: str | None = Field(None, description="package name glob, e.g. 'libgcc*'")
    version: str | None = Field(None, description="conda version spec, e.g. '>=1.11,<2'")
    build: str | None = Field(None, description="build string glob, e.g. 'py311*'")
    spec: str | None = Field(None, description="conda MatchSpec, e.g. 'numpy >=1.26'")
    license: str | None = Field(
        None,
        description="licence family (GPL, LGPL, MIT, ...) or SPDX expression; a package "
        "licensed 'A OR B' matches only when every alternative does",
    )
    license_family: str | None = Field(None, description="conda license_family value")
    subdir: str | None = Field(None, description="subdir glob, e.g. 'win-*'")

    @field_validator("version")
    @classmethod
    def _version(cls, value: str | None) -> str | None:
        return _check_version_spec(value)

    @field_validator("spec")
    @classmethod
    def _spec(cls, value: str | None) -> str | None:
        return _check_match_spec(value)

    @field_validator("license")
    @classmethod
    def _license(cls, value: str | None) -> str | None:
        if value is None:
            return None
        problem = license_rule_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("license_family")
    @classmethod
    def _known_family(cls, value: str | None) -> str | None:
        if value is not None and value.upper() not in LICENSE_FAMILIES:
            raise ValueError(
                f"unknown license_family {value!r}; expected one of {', '.join(LICENSE_FAMILIES)}"
            )
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> Rule:
        if not any(getattr(self, key) is not None for key in Rule.model_fields):
            raise ValueError(
                "empty rule: give at least one of " + ", ".join(Rule.model_fields.keys())
            )
        return self


class ExcludeRule(Rule):
    """An exclude rule; a package matching one of its ``except`` rules stays in."""

    except_: list[Rule] = Field(
        default_factory=list,
        alias="except",
        description="rules that keep a package this rule would exclude",
    )


class DateWindow(_Model):
    after: UtcDateTime | None = Field(None, description="keep records built on or after this")
    before: UtcDateTime | None = Field(None, description="keep records built before this")

    @model_validator(mode="after")
    def _ordered(self) -> DateWindow:
        if self.after and self.before and self.after >= self.before:
            raise ValueError("date.after must be earlier than date.before")
        return self


class FilterBlock(_Model):
    """Filters: include (any rule), exclude (with except), date window, latest N, deps."""

    include: list[Rule] = Field(
        default_factory=list, description="a package must match one of these, if any are given"
    )
    exclude: list[ExcludeRule] = Field(
        default_factory=list, description="a package matching one of these is left out"
    )
    date: DateWindow | None = Field(None, description="window on the record's timestamp")
    latest: PositiveInt | None = Field(
        None, description="keep the newest N versions of each name in each subdir, after the rules"
    )
    dependencies: bool = Field(
        False,
        description="mirrors: add every upstream package a solver could install with the "
        "selected ones, on each platform the mirror serves",
    )


def _versions_list(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: [v] if isinstance(v, str) else v for k, v in value.items()}
    return value


class IndexOptions(_Model):
    """Which index files to write for a channel."""

    zst: bool = Field(True, description="write repodata.json.zst (clients try it first)")
    bz2: bool = Field(False, description="write the legacy repodata.json.bz2")
    repodata_from_packages: bool = Field(
        True, description="write repodata_from_packages.json (unpatched records)"
    )
    current_repodata: bool = Field(True, description="write current_repodata.json")
    run_exports: bool = Field(True, description="write run_exports.json (CEP-12)")
    channeldata: bool = Field(True, description="write channeldata.json (CEP-38)")
    shards: bool = Field(False, description="write CEP-16 sharded repodata")
    html: bool = Field(True, description="write index.html for the channel and each subdir")
    current_index_versions: Annotated[dict[str, list[str]], BeforeValidator(_versions_list)] = (
        Field(
            default_factory=dict,
            description="versions kept in current_repodata.json besides the newest, by name",
        )
    )


# -- where a channel lives: a folder or an S3 bucket ----------------------------------

# Bucket names as S3 allows them (3-63 lower-case letters, digits, dots and hyphens).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Keys of a storage block that would hold a secret: refused, whatever their value.
_SECRET_WORDS = ("secret", "password", "passwd", "token", "credential", "access_key", "session")

#: How long index files may be cached by clients, by default (Cache-Control max-age, s).
DEFAULT_INDEX_MAX_AGE = 60
#: How long an unpublished file stays before it is deleted, by default (seconds): longer
#: than the index's max-age, so a client holding the previous index never gets a 404.
DEFAULT_DELETION_GRACE = 120.0


class S3Location(BaseModel):
    """``s3://bucket/prefix``: a channel in a bucket, under a prefix (may be empty)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    bucket: str
    prefix: str = ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def nests(self, other: S3Location) -> bool:
        """True when one location is the other or lies inside it (same bucket)."""
        if self.bucket != other.bucket:
            return False
        mine, theirs = f"{self.prefix}/", f"{other.prefix}/"
        return (
            not self.prefix
            or not other.prefix
            or mine.startswith(theirs)
            or (theirs.startswith(mine))
        )


def parse_s3_url(value: str) -> S3Location:
    """``s3://bucket/prefix`` → :class:`S3Location`; ValueError says what is wrong."""
    rest = value[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError(
            f"{value!r} does not name a bucket: expected s3://bucket/prefix with a bucket "
            "of 3-63 lower-case letters, digits, dots and hyphens"
        )
    prefix = prefix.strip("/")
    if prefix:
        if "\\" in prefix or _CONTROL.search(prefix):
            raise ValueError(f"prefix of {value!r} holds a backslash or a control character")
        for part in prefix.split("/"):
            if part in ("", ".", ".."):
                raise ValueError(f"prefix of {value!r} has an empty, '.' or '..' segment")
    return S3Location(bucket=bucket, prefix=prefix)


def is_url(value: str) -> bool:
    """True when ``value`` starts with a URL scheme (``s3://``, ``gs://``, ...)."""
    return _SCHEME.match(value) is not None


def parse_location(value: Any) -> Any:
    """A channel ``path``: an S3 URL becomes an :class:`S3Location`; another scheme is an
    error (never a folder named ``gs:``); anything else is left to the Path type."""
    if isinstance(value, str) and (match := _SCHEME.match(value)):
        scheme = match.group(1)
        if scheme == "s3":
            return parse_s3_url(value)
        raise ValueError(
            f"unsupported path scheme '{scheme}://': a channel path is a folder or "
            "s3://bucket/prefix"
        )
    return value


ChannelPath = Annotated[
    Path | S3Location,
    BeforeValidator(parse_location),
    PlainSerializer(str, return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": 1,
            "description": "the channel's folder (relative paths start at this file's "
            "folder), or s3://bucket/prefix for a channel in S3-compatible object storage",
        }
    ),
]


def _no_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        for key in value:
            lowered = str(key).lower()
            if any(word in lowered for word in _SECRET_WORDS):
                raise ValueError(
                    f"'{key}' looks like a secret, and secrets never go in channels.yaml: "
                    "credentials come from the AWS environment (AWS_PROFILE, "
                    "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance or OIDC role)"
                )
    return value


class StorageOptions(_Model):
    """Object storage settings of a channel in a bucket; credentials never go here."""

    endpoint_url: str | None = Field(
        None,
        description="the S3 endpoint, e.g. http://127.0.0.1:9000 for a MinIO or SeaweedFS "
        "(default: AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, else AWS)",
    )
    region: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]+$",
        description="the bucket's region (default: AWS_REGION / AWS_DEFAULT_REGION / the "
        "profile's, else us-east-1)",
    )
    addressing_style: Literal["auto", "path", "virtual"] | None = Field(
        None,
        description="bucket in the path (http://host/bucket/key) or in the host name "
        "(default: the AWS configuration's, else auto)",
    )
    conditional_writes: bool = Field(
        True,
        description="use If-None-Match / If-Match on writes, so concurrent runs never "
        "overwrite each other; false only for S3 clones without them, and then only ONE "
        "writer may ever run on the channel",
    )
    serve: Literal["stream", "redirect"] = Field(
        "stream",
        description="`reconcile serve`: stream objects through the server, or redirect "
        "clients to a presigned URL of the bucket",
    )
    presign_expiry: int = Field(
        300, ge=10, le=7 * 24 * 3600, description="seconds a presigned URL stays valid"
    )
    lease_ttl: float = Field(
        60.0,
        ge=5,
        le=3600,
        description="seconds a run's lease on the channel lasts without renewal (renewed "
        "every third of it); a run that died holds the channel this long at most",
    )

    _no_secret_keys = model_validator(mode="before")(_no_secrets)

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is None:
            return None
        lowered = value.lower()
        if not lowered.startswith(("http://", "https://")):
            raise ValueError(f"endpoint_url {value!r} must start with http:// or https://")
        host = value.split("://", 1)[1].split("/", 1)[0]
        if "@" in host:
            raise ValueError(
                "endpoint_url contains credentials; they come from the AWS environment"
            )
        if not host:
            raise ValueError(f"endpoint_url {value!r} has no host")
        if "?" in value or "#" in value:
            raise ValueError("endpoint_url takes no query or fragment")
        return value.rstrip("/")


class MirrorDefaults(_Model):
    """Settings every mirror inherits unless it sets its own."""

    mode: Literal["active", "passive"] = Field(
        "active", description="active: files and metadata; passive: metadata only"
    )
    prune: bool = Field(True, description="remove what is no longer desired")
    timeout: float = Field(60.0, gt=0, description="seconds per HTTP request")
    retries: int = Field(3, ge=0, le=20, description="retries on 5xx and connection errors")
    parallel_downloads: int = Field(4, ge=1, le=64, description="concurrent downloads")
    max_file_size: PositiveInt = Field(
        MAX_FILE_SIZE,
        description="bytes: an upstream record claiming a bigger file is refused with a "
        "warning (the largest real packages are a few GB)",
    )


class Defaults(_Model):
    index: IndexOptions = Field(default_factory=IndexOptions)
    mirror: MirrorDefaults = Field(default_factory=MirrorDefaults)
    deletion_grace: float = Field(
        DEFAULT_DELETION_GRACE,
        ge=0,
        le=30 * 24 * 3600,
        description="seconds an unpublished file stays before a later apply deletes it; keep "
        "it longer than index_max_age so clients holding the previous index never get a 404",
    )
    index_max_age: int = Field(
        DEFAULT_INDEX_MAX_AGE,
        ge=0,
        le=24 * 3600,
        description="Cache-Control max-age (s) of index files (repodata, pages) when served "
        "or uploaded; packages and shards are immutable",
    )


SourceKind = Literal["http", "file", "path"]


def source_kind(source: str) -> SourceKind | None:
    """Classify a mirror ``source``; None when the scheme is not supported."""
    lowered = source.lower()
    if lowered.startswith(("http://", "https://")):
        return "http"
    if lowered.startswith("file://"):
        return "file"
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source):
        return None
    return "path"


class Mirror(MirrorDefaults):
    name: str = Field(pattern=NAME_PATTERN, description="unique across the configuration")
    source: str = Field(
        description="upstream channel: https://..., http://..., file://... or a path"
    )
    subdirs: list[SubdirName] | None = Field(
        None, description="subdirs to mirror (default: the channel's)"
    )
    schedule: str | None = Field(None, description="cron expression in UTC; absent: every apply")
    token_env: str | None = Field(
        None,
        pattern=ENV_VAR_PATTERN,
        description="environment variable holding the upstream token (never the token itself)",
    )
    filters: FilterBlock = Field(default_factory=FilterBlock)

    @field_validator("subdirs")
    @classmethod
    def _subdirs(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _check_subdirs(value)

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        kind = source_kind(value)
        if kind is None:
            scheme = value.split("://", 1)[0]
            raise ValueError(
                f"unsupported source scheme '{scheme}://': use http(s)://, file:// or a path"
            )
        if kind == "http":
            rest = value.split("://", 1)[1]
            host = rest.split("/", 1)[0]
            if not host or host.startswith("@"):
                raise ValueError(f"source URL {value!r} has no host")
            if "@" in host:
                raise ValueError(
                    "source URL contains credentials; put the token in an environment "
                    "variable and name it with token_env"
                )
        if not value.strip():
            raise ValueError("source is empty")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is None:
            return None
        from croniter import croniter

        if not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r} (expected e.g. '17 3 * * *')")
        try:
            # Valid syntax can still name no time at all (31 February, a past year).
            croniter(value, dt.datetime.now(dt.timezone.utc)).get_next(dt.datetime)
        except (ValueError, OverflowError):  # croniter's errors are ValueErrors
            raise ValueError(f"cron expression {value!r} never fires") from None
        return value


class _ChannelBase(_Model):
    """What every kind of channel has: where it lives, who reads it, how it publishes."""

    name: str = Field(pattern=NAME_PATTERN, description="channel name, used in URLs")
    kind: str  # each kind narrows it (here for the order of the fields)
    path: ChannelPath = Field(
        description="channel folder (relative paths start at this file's folder), or "
        "s3://bucket/prefix"
    )
    storage: StorageOptions | None = Field(
        None, description="object storage settings (an s3:// path only); never credentials"
    )
    deletion_grace: float | None = Field(
        None, ge=0, le=30 * 24 * 3600, description="overrides defaults.deletion_grace"
    )
    index_max_age: int | None = Field(
        None, ge=0, le=24 * 3600, description="overrides defaults.index_max_age"
    )
    access: Literal["public", "private"] = Field(
        "public",
        description="public: anyone who reaches `reconcile serve` reads it; private: only "
        "with a token of `serve.tokens` that names this channel",
    )
    adopt: bool = Field(
        False,
        description="take over a folder that exists and holds files that are not a channel's "
        "(without it such a folder is refused, so a typo never turns a folder of yours into "
        "a channel)",
    )
    on_conflict: Literal["error", "first"] = Field(
        "error",
        description="same filename with different sha256 from two mirrors: "
        "'error' fails the plan, 'first' keeps the mirror listed first",
    )

    @model_validator(mode="after")
    def _storage_needs_a_bucket(self) -> Self:
        if self.storage is not None and not isinstance(self.path, S3Location):
            raise ValueError("storage: settings apply only to a channel whose path is s3://...")
        return self

    @property
    def grace(self) -> float:
        """Seconds an unpublished file stays (after defaults were applied)."""
        return DEFAULT_DELETION_GRACE if self.deletion_grace is None else self.deletion_grace

    @property
    def max_age(self) -> int:
        """Cache-Control max-age of index files (after defaults were applied)."""
        return DEFAULT_INDEX_MAX_AGE if self.index_max_age is None else self.index_max_age


class Channel(_ChannelBase):
    """A conda channel."""

    kind: Literal["conda"] = Field("conda", description="conda (default) or pypi")
    subdirs: list[SubdirName] = Field(
        default_factory=lambda: ["noarch"],
        min_length=1,
        description="subdirs served; noarch is always served",
    )
    index: IndexOptions = Field(default_factory=IndexOptions)
    patches: list[Path] = Field(
        default_factory=list,
        description="patch files applied in order: .py, .json or a patch package",
    )
    filters: FilterBlock = Field(
        default_factory=FilterBlock, description="applies to every mirror and local package"
    )
    mirrors: list[Mirror] = Field(default_factory=list)

    @field_validator("subdirs")
    @classmethod
    def _subdirs(cls, value: list[str]) -> list[str]:
        return _check_subdirs(value)

    @property
    def served_subdirs(self) -> list[str]:
        """The channel's subdirs plus ``noarch``, which clients require."""
        return sorted({*self.subdirs, "noarch"})

    def mirror_subdirs(self, mirror: Mirror) -> list[str]:
        return list(mirror.subdirs) if mirror.subdirs is not None else list(self.subdirs)


# -- PyPI channels --------------------------------------------------------------------

PYPI_SOURCE = "https://pypi.org/simple/"
# Where pypi.org's simple index points its files.
PYPI_FILES_HOST = "files.pythonhosted.org"

_LICENCE_KEYS = ("license", "license_family", "license_expression")


def _licence_key(value: Any) -> str | None:
    """The first licence key anywhere in ``value`` (filters are small; walk it all)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key in _LICENCE_KEYS:
                return str(key)
            found = _licence_key(inner)
            if found:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _licence_key(item)
            if found:
                return found
    return None


class TagRule(_Model):
    """Globs over one wheel tag triple (``python-abi-platform``); given keys are AND-ed."""

    python: str | None = Field(None, description="python tag glob, e.g. 'cp311' or 'py3'")
    abi: str | None = Field(None, description="abi tag glob, e.g. 'abi3' or 'none'")
    platform: str | None = Field(
        None, description="platform tag glob, e.g. 'manylinux*_x86_64' or 'any'"
    )

    @model_validator(mode="after")
    def _not_empty(self) -> TagRule:
        if self.python is None and self.abi is None and self.platform is None:
            raise ValueError("empty tag rule: give at least one of python, abi, platform")
        return self


class WheelTagFilter(_Model):
    """Which wheels to keep by tag; a wheel matches a rule when one of its tags does."""

    include: list[TagRule] = Field(
        default_factory=list, description="a wheel must match one of these, if any are given"
    )
    exclude: list[TagRule] = Field(
        default_factory=list, description="a wheel matching one of these is left out"
    )


class PypiFilters(_Model):
    """Filters for PyPI files. Unset keys add no constraint (defaults apply per mirror)."""

    prerelease: bool | None = Field(
        None, description="keep pre-releases (default false; a requirement naming one keeps it)"
    )
    yanked: bool | None = Field(None, description="keep yanked files (default false)")
    kinds: list[Literal["sdist", "wheel"]] | None = Field(
        None, min_length=1, description="file kinds to keep (default both)"
    )
    wheel_tags: WheelTagFilter | None = Field(None, description="wheel tags to keep or drop")
    date: DateWindow | None = Field(None, description="window on the file's upload time")
    latest: PositiveInt | None = Field(
        None, description="keep the newest N versions of each project, after the other filters"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_licences(cls, value: Any) -> Any:
        key = _licence_key(value)
        if key is not None:
            raise ValueError(
                f"'{key}' filters are not offered for PyPI channels: PyPI licence metadata "
                "is free text, not standardised, so it cannot be filtered reliably"
            )
        return value


def _check_requirement(value: str) -> str:
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        requirement = Requirement(value)
    except InvalidRequirement as exc:
        reason = str(exc).splitlines()[0]
        raise ValueError(f"invalid requirement {value!r}: {reason}") from None
    if requirement.url:
        raise ValueError(f"requirement {value!r} has a URL; name a project and versions")
    if requirement.marker is not None:
        raise ValueError(f"requirement {value!r} has an environment marker; leave it out")
    return value


Requirement = Annotated[str, AfterValidator(_check_requirement)]


class PypiMirror(MirrorDefaults):
    """Selected projects of a PyPI-style simple index (PEP 503/691)."""

    name: str = Field(pattern=NAME_PATTERN, description="unique across the configuration")
    source: str = Field(
        PYPI_SOURCE,
        description="simple index URL (https://..., http://...), or a folder or file:// URL "
        "holding a static simple index",
    )
    projects: list[Requirement] = Field(
        min_length=1,
        description="projects to mirror: names or requirements, e.g. 'urllib3>=2,<3'",
    )
    schedule: str | None = Field(None, description="cron expression in UTC; absent: every apply")
    allowed_hosts: list[str] | None = Field(
        None,
        description="hosts besides the source's that files may come from "
        f"(default: {PYPI_FILES_HOST} for pypi.org, none otherwise)",
    )
    filters: PypiFilters = Field(default_factory=PypiFilters)

    _check_source = field_validator("source")(Mirror._source.__func__)  # type: ignore[attr-defined]
    _check_cron = field_validator("schedule")(Mirror._cron.__func__)  # type: ignore[attr-defined]

    @property
    def file_hosts(self) -> list[str]:
        if self.allowed_hosts is not None:
            return list(self.allowed_hosts)
        host = self.source.split("://", 1)[-1].split("/", 1)[0].lower()
        return [PYPI_FILES_HOST] if host == "pypi.org" else []


class PypiChannel(_ChannelBase):
    """A PyPI simple repository (``simple/`` pages and ``packages/`` files)."""

    kind: Literal["pypi"] = Field(description="pypi: a PEP 503/691 simple repository")
    filters: PypiFilters = Field(
        default_factory=PypiFilters, description="applies to every mirror of the channel"
    )
    mirrors: list[PypiMirror] = Field(default_factory=list)


AnyChannelModel = Channel | PypiChannel


# -- reconcile serve ------------------------------------------------------------------


class ServeToken(_Model):
    """A read token for private channels; the secret lives in an environment variable."""

    name: str = Field(
        pattern=NAME_PATTERN, description="what logs and pages call it (never the secret)"
    )
    token_env: str = Field(
        pattern=ENV_VAR_PATTERN,
        description="environment variable holding the secret (never the secret itself)",
    )
    channels: list[str] = Field(min_length=1, description="channels this token may read")


class ServeSettings(_Model):
    """Settings of `reconcile serve`."""

    tokens: list[ServeToken] = Field(
        default_factory=list, description="read tokens for private channels"
    )
    failed_fetch_ttl: float = Field(
        60.0,
        ge=0,
        le=86400,
        description="seconds a failed passive fetch is answered from memory (502) before the "
        "upstream is asked again; 0 asks every time",
    )
    sweep_interval: float = Field(
        300.0,
        ge=0,
        le=86400,
        description="seconds between the server's sweeps of deletions whose grace period is "
        "over (files unpublished by an apply); 0 leaves them to the next apply",
    )


def channel_kind(value: Any) -> str:
    """Which channel model validates ``value``: its ``kind``, ``conda`` when absent."""
    kind = value.get("kind", "conda") if isinstance(value, dict) else getattr(value, "kind", None)
    return kind if isinstance(kind, str) else "conda"


AnyChannel = Annotated[
    Annotated[Channel, Tag("conda")] | Annotated[PypiChannel, Tag("pypi")],
    Discriminator(
        channel_kind,
        custom_error_type="channel_kind",
        custom_error_message="kind must be 'conda' or 'pypi'",
    ),
]


class Config(_Model):
    """Top level of channels.yaml."""

    model_config = ConfigDict(
        extra="forbid",
        title="conda-reconcile channels.yaml",
        json_schema_extra={"$comment": "generated by `reconcile schema`; do not edit by hand"},
    )

    version: Literal[1] = Field(description="configuration format version")
    defaults: Defaults = Field(default_factory=Defaults)
    channels: list[AnyChannel] = Field(min_length=1)
    serve: ServeSettings = Field(
        default_factory=ServeSettings, description="`reconcile serve`: read tokens and limits"
    )

    @model_validator(mode="after")
    def _channel_defaults(self) -> Config:
        for channel in self.channels:
            if channel.deletion_grace is None:
                channel.deletion_grace = self.defaults.deletion_grace
            if channel.index_max_age is None:
                channel.index_max_age = self.defaults.index_max_age
        return self

    @property
    def conda_channels(self) -> list[Channel]:
        return [c for c in self.channels if isinstance(c, Channel)]

    def channel(self, name: str) -> Channel | PypiChannel:
        for channel in self.channels:
            if channel.name == name:
                return channel
        raise KeyError(name)


@dataclass
class LoadedConfig:
    config: Config
    path: Path
    warnings: list[Diagnostic] = field(default_factory=list)

    @property
    def base_dir(self) -> Path:
        return self.path.parent


def load_config(
    path: Path | str, *, require_env: bool = False, serving: bool = False
) -> LoadedConfig:
    """Read, validate and resolve ``path``.

    Raises :class:`ConfigError` listing every error; warnings are returned.
    ``require_env`` turns an unset ``token_env`` variable into an error (apply needs it);
    ``serving`` does the same for the read tokens of ``serve.tokens`` (serve needs them).
    """
    from reconciler.config.checks import check_config_text

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: configuration file not found",
            hint="pass the file with -c/--config, or run from the folder holding channels.yaml",
        ) from None
    except UnicodeDecodeError as exc:
        before = exc.object[: exc.start]
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        raise ConfigError(
            f"{path}:{line}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} cannot be decoded)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read configuration: {exc}") from None

    result = check_config_text(
        text, path, environ=os.environ, require_env=require_env, serving=serving
    )
    errors = [d for d in result.diagnostics if d.severity is Severity.ERROR]
    warnings = [d for d in result.diagnostics if d.severity is Severity.WARNING]
    if errors or result.config is None:
        raise ConfigErrors(path, errors, warnings)
    return LoadedConfig(config=result.config, path=path, warnings=warnings)


class ConfigErrors(ConfigError):
    """Every error found in one configuration file."""

    def __init__(
        self, path: Path, errors: list[Diagnostic], warnings: list[Diagnostic] | None = None
    ) -> None:
        self.errors = errors
        self.warnings = warnings or []
        lines = [d.format() for d in [*errors, *self.warnings]]
        count = len(errors)
        super().__init__(
            f"{path}: {count} error(s) in configuration\n" + "\n".join(lines),
            hint="run `reconcile schema` for the full format, or see examples/channels.yaml",
        )
