"""The download manifest: what `spmctl download` can fetch, from where, to where.

The sources live in `datasets/sources.yaml` (package data `spmctl_datasets`) rather than in
the commands, so a mirror, a new dataset or a known hash is a data change. Tests
and mirrors may point at another manifest with `--manifest` or `SPMCTL_SOURCES`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ..errors import ConfigError, one_line, unknown_message

DEFAULT_ENDPOINT = "https://huggingface.co"
MANIFEST_ENV = "SPMCTL_SOURCES"
ARCHIVE_TYPES = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz")
KINDS = ("archive", "file", "hub")
DEFAULT_MAX_RATIO = 50.0  # generous for images/weights, far below a zip bomb's ratio

Kind = Literal["model", "dataset"]


@dataclass(frozen=True)
class Source:
    """One fetchable thing: a model, or one variant (sample/full) of a dataset."""

    kind: Kind
    name: str
    variant: str | None
    fetch: str  # archive | file | hub
    dest: str
    description: str = ""
    url: str | None = None
    archive: str | None = None
    size: int | None = None
    approx_size: int | None = None
    sha256: str | None = None
    unwrap: str | None = None
    max_ratio: float = DEFAULT_MAX_RATIO
    repo_id: str | None = None
    repo_type: str | None = None
    revision: str | None = None
    links: bool = False  # archive may hold links (refused unless a source opts in)

    @property
    def label(self) -> str:
        return f"{self.name} {self.variant}" if self.variant else self.name

    def resolve_url(self, endpoint: str) -> str:
        if self.url is None:
            raise ConfigError(f"source {self.label!r} has no url")
        if self.url.startswith(("http://", "https://")):
            return self.url
        return f"{endpoint.rstrip('/')}/{self.url.lstrip('/')}"

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url or self.label.replace(" ", "-")).name


@dataclass(frozen=True)
class Manifest:
    models: dict[str, Source]
    datasets: dict[str, dict[str, Source]]
    aliases: dict[str, str]

    def model(self, name: str) -> Source | None:
        return self.models.get(name)

    def dataset(self, name: str, variant: str) -> Source:
        canonical = self.aliases.get(name, name)
        if canonical not in self.datasets:
            raise ConfigError(unknown_message("dataset", name, list(self.datasets) + list(self.aliases)))
        variants = self.datasets[canonical]
        if variant not in variants:
            raise ConfigError(unknown_message(f"variant of {canonical}", variant, list(variants)))
        return variants[variant]

    def all_sources(self) -> list[Source]:
        out = list(self.models.values())
        for variants in self.datasets.values():
            out.extend(variants.values())
        return out


def resolve_endpoint(option: str | None = None) -> str:
    """--endpoint, then SPMCTL_HUB_ENDPOINT, then HF_ENDPOINT, then the public hub."""
    for value in (option, os.environ.get("SPMCTL_HUB_ENDPOINT"), os.environ.get("HF_ENDPOINT")):
        if value:
            return value.rstrip("/")
    return DEFAULT_ENDPOINT


def _opt_int(where: str, key: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"manifest: {where}.{key} must be a non-negative integer or null, got {value!r}")
    return value


def _source(kind: Kind, name: str, variant: str | None, raw: Any) -> Source:
    where = f"{kind}s.{name}" + (f".variants.{variant}" if variant else "")
    if not isinstance(raw, dict):
        raise ConfigError(f"manifest: {where} must be a mapping")
    known = {"description", "kind", "url", "archive", "size", "approx_size", "sha256", "dest", "unwrap",
             "max_ratio", "repo_id", "repo_type", "revision", "aliases", "variants", "links"}
    extra = set(raw) - known
    if extra:
        raise ConfigError(f"manifest: unknown key {where}.{sorted(extra)[0]}")
    fetch = raw.get("kind", "archive")
    if fetch not in KINDS:
        raise ConfigError(f"manifest: {where}.kind must be one of {', '.join(KINDS)}, got {fetch!r}")
    dest = raw.get("dest")
    parts = PurePosixPath(dest).parts if isinstance(dest, str) else ()
    # A strict subfolder: `.` (or an empty path) would make --dest itself the thing replaced.
    if not parts or PurePosixPath(dest).is_absolute() or ".." in parts or "\\" in dest:
        raise ConfigError(f"manifest: {where}.dest must be a folder strictly inside --dest "
                          f"(relative, no '..'), got {dest!r}")
    dest = "/".join(parts)
    if fetch in ("archive", "file") and not raw.get("url"):
        raise ConfigError(f"manifest: {where}.url is required for kind {fetch}")
    if fetch == "hub" and not raw.get("repo_id"):
        raise ConfigError(f"manifest: {where}.repo_id is required for kind hub")
    archive = raw.get("archive") if fetch == "archive" else None
    if fetch == "archive" and archive not in ARCHIVE_TYPES:
        raise ConfigError(f"manifest: {where}.archive must be one of {', '.join(ARCHIVE_TYPES)}")
    links = raw.get("links", False)
    if not isinstance(links, bool):
        raise ConfigError(f"manifest: {where}.links must be true or false, got {links!r}")
    sha = raw.get("sha256")
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
        raise ConfigError(f"manifest: {where}.sha256 must be 64 hex digits or null")
    return Source(
        kind=kind, name=name, variant=variant, fetch=fetch, dest=dest,
        description=raw.get("description", ""), url=raw.get("url"), archive=archive,
        size=_opt_int(where, "size", raw.get("size")),
        approx_size=_opt_int(where, "approx_size", raw.get("approx_size")),
        sha256=sha.lower() if sha else None, unwrap=raw.get("unwrap"),
        max_ratio=float(raw.get("max_ratio", DEFAULT_MAX_RATIO)),
        repo_id=raw.get("repo_id"), repo_type=raw.get("repo_type"), revision=raw.get("revision"), links=links,
    )


def parse_manifest(data: Any) -> Manifest:
    if not isinstance(data, dict):
        raise ConfigError("manifest: top level must be a mapping")
    models = {name: _source("model", name, None, raw) for name, raw in (data.get("models") or {}).items()}
    datasets: dict[str, dict[str, Source]] = {}
    aliases: dict[str, str] = {}
    for name, raw in (data.get("datasets") or {}).items():
        variants = raw.get("variants") if isinstance(raw, dict) else None
        if not isinstance(variants, dict) or not variants:
            raise ConfigError(f"manifest: datasets.{name}.variants must be a non-empty mapping")
        datasets[name] = {}
        for variant, vraw in variants.items():
            merged = {"description": raw.get("description", ""), **vraw}
            datasets[name][variant] = _source("dataset", name, variant, merged)
        for alias in raw.get("aliases") or []:
            aliases[alias] = name
    return Manifest(models, datasets, aliases)


def default_manifest_path() -> Path:
    from ..datafiles import data_file

    return data_file("sources.yaml")


def load_manifest(path: str | Path | None = None) -> Manifest:
    """The manifest at `path`, else $SPMCTL_SOURCES, else the one shipped with spmctl."""
    import json

    import yaml

    chosen = Path(path or os.environ.get(MANIFEST_ENV) or default_manifest_path())
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read manifest {chosen}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if chosen.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"manifest {chosen} is not valid: {one_line(exc)}") from None
    try:
        return parse_manifest(data)
    except ConfigError as exc:  # name the file: the user may have several manifests
        raise ConfigError(str(exc).replace("manifest:", f"manifest {chosen}:", 1)) from None
