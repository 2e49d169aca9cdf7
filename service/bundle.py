"""Release bundles: one archive holding a whole model repository, checked before it is used.

`python -m export release` writes the archive (a tar, gzip-compressed for `.tar.gz`/`.tgz`)::

    <top>/release.json               ReleaseManifest: sha256 of every other file, models, scores
    <top>/<name>/config.json         the model repository, exactly as `python -m service` reads it
    <top>/<name>/MODEL_CARD.md
    <top>/<name>/<version>/...       one version per model, with its own manifest.json

so `tar xf` gives a directory `python -m service --model-repository <top>` serves as it is (the
reader only looks at model directories). The schema lives here, beside its reader, because the
serving image ships `service/` alone and must be able to check a bundle it is handed:

    python -m service.bundle unpack FILE --out DIR    verify, then move into DIR (all or nothing)
    python -m service.bundle verify FILE|DIR          verify only

An archive is refused, with a message naming the member, when a member is not a plain file or
directory (links, devices), when its path leaves the top directory (absolute, `..`), when it is
truncated or not a tar, when it would not fit on the disk, or when a file is missing, unlisted
or differs from its sha256 in release.json. Nothing is written outside a staging directory
until every check has passed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tarfile
import tempfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from service import repository

RELEASE_FILE = "release.json"
CARD_FILE = "MODEL_CARD.md"


class BundleError(Exception):
    """The archive or directory is not a valid release bundle; the message says why."""


class ReleasedModel(BaseModel):
    """One model of the bundle (release.json `models.<name>`). Extra facts are kept."""

    model_config = ConfigDict(extra="allow")

    version: int = Field(ge=1)
    task: repository.Task
    card: str = Field(description="path of the model card inside the bundle")


class ReleaseManifest(BaseModel):
    """`<top>/release.json`. Format version 1; new optional fields may be added."""

    model_config = ConfigDict(extra="allow")

    format: Literal["nlpserve-release"] = "nlpserve-release"
    format_version: Literal[1] = 1
    created_at: str
    models: dict[str, ReleasedModel]
    files: dict[str, str] = Field(description="path inside the bundle -> sha256 hex")

    @field_validator("files")
    @classmethod
    def _check_files(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            _relative_path(name)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"checksum of {name!r} is not a lowercase sha256 hex digest")
        return files


def _relative_path(name: str) -> PurePosixPath:
    """`name` as a path that stays below the directory it is joined to; ValueError if not."""
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise ValueError(f"{name!r} is not a relative path inside the bundle")
    return path


# ------------------------------------------------------------------------------ verification


def verify_directory(root: Path) -> ReleaseManifest:
    """Check an unpacked bundle: release.json valid, every file present, listed and unchanged,
    and every model servable at the version release.json names."""
    root = Path(root)
    try:
        manifest = ReleaseManifest.model_validate_json((root / RELEASE_FILE).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"no {RELEASE_FILE} in {root}: not a release bundle") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(root)"
        raise BundleError(f"{RELEASE_FILE} is invalid: {where}: {first['msg']}") from None
    found = {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.relative_to(root).as_posix() != RELEASE_FILE
    }
    missing = sorted(set(manifest.files) - set(found))
    unlisted = sorted(set(found) - set(manifest.files))
    if missing:
        raise BundleError(f"{len(missing)} file(s) missing (truncated?), e.g. {missing[0]}")
    if unlisted:
        raise BundleError(f"{len(unlisted)} file(s) not in {RELEASE_FILE}, e.g. {unlisted[0]}")
    for name, digest in manifest.files.items():
        if repository.sha256_file(found[name]) != digest:
            raise BundleError(f"{name} does not match its sha256 in {RELEASE_FILE} (corrupt)")
    models, problems = repository.scan(root)
    if problems:
        raise BundleError(f"model {problems[0].name} cannot be served: {problems[0].reason}")
    served = {m.name: m for m in models}
    for name, entry in manifest.models.items():
        model = served.get(name)
        if model is None or model.version != entry.version:
            raise BundleError(f"{RELEASE_FILE} names {name} version {entry.version}, not found")
        model.verify_others(())  # each version's own manifest.json, file by file
    if set(served) != set(manifest.models):
        raise BundleError(f"models {sorted(set(served) - set(manifest.models))} not in release")
    return manifest


def _members(tar: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, PurePosixPath]]:
    """Every member with its path below the single top directory; BundleError for a bad one."""
    top: str | None = None
    seen: set[PurePosixPath] = set()
    for member in tar:
        try:
            path = _relative_path(member.name.rstrip("/"))
        except ValueError:
            raise BundleError(f"member {member.name!r} points outside the bundle") from None
        if not (member.isfile() or member.isdir()):
            raise BundleError(f"member {member.name!r} is a link or device, not a plain file")
        top = top or path.parts[0]
        if path.parts[0] != top:
            raise BundleError(f"member {member.name!r} is outside the top directory {top!r}")
        inner = PurePosixPath(*path.parts[1:])
        if member.isfile() and not inner.parts:
            raise BundleError(f"member {member.name!r} is a file where the top directory belongs")
        if inner in seen:
            raise BundleError(f"member {member.name!r} appears twice")
        seen.add(inner)
        yield member, inner


def _extract(archive: Path, into: Path) -> None:
    """Write the archive's files below `into` (the top directory stripped), checking each
    member before anything of it is written."""
    # A small archive can inflate to anything: stop before the disk is full, not after.
    room = shutil.disk_usage(into).free
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member, inner in _members(tar):
                target = into.joinpath(*inner.parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                room -= member.size
                if room < 0:
                    raise BundleError(f"unpacking {member.name!r} would fill the disk of {into}")
                source = tar.extractfile(member)
                if source is None:  # isfile() members always have data; kept for the types
                    raise BundleError(f"member {member.name!r} has no data")
                target.parent.mkdir(parents=True, exist_ok=True)
                with source, target.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        if isinstance(e, FileNotFoundError) and not Path(archive).exists():
            raise BundleError(f"{archive} does not exist") from None
        raise BundleError(f"cannot read {archive}: truncated or not a tar archive ({e})") from None


@contextlib.contextmanager
def _staging(parent: Path, name: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f".{name}.unpacking-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def unpack(archive: Path, out: Path) -> ReleaseManifest:
    """Verify `archive` and make `out` the model repository it holds; BundleError if refused.

    `out` must not exist yet (or be an empty directory): a bundle is never mixed into an
    existing repository. The files are staged next to `out` and renamed into place at the end.
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BundleError(f"{out} exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    with _staging(out.parent, out.name) as staging:
        _extract(Path(archive), staging)
        manifest = verify_directory(staging)
        if out.exists():
            out.rmdir()
        os.rename(staging, out)
        out.chmod(0o755)  # mkdtemp made it private; a server may run as another user
    return manifest


def verify(path: Path) -> ReleaseManifest:
    """Verify an archive (unpacked into a temporary directory, then removed) or a directory."""
    path = Path(path)
    if path.is_dir():
        return verify_directory(path)
    with tempfile.TemporaryDirectory(prefix="nlpserve-verify-") as tmp:
        _extract(path, Path(tmp))
        return verify_directory(Path(tmp))


# ------------------------------------------------------------------------------------- CLI


def _summary(manifest: ReleaseManifest) -> dict[str, Any]:
    return {name: {"version": m.version, "task": m.task} for name, m in manifest.models.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m service.bundle", description=(__doc__ or "").splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("unpack", help="verify an archive and unpack it into a new directory")
    p.add_argument("archive", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the model repository to create")
    p = sub.add_parser("verify", help="verify an archive or an unpacked bundle directory")
    p.add_argument("path", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "unpack":
            manifest = unpack(args.archive, args.out)
            print(f"unpacked {args.archive} into {args.out}: {json.dumps(_summary(manifest))}")
        else:
            manifest = verify(args.path)
            print(f"{args.path} is a valid bundle: {json.dumps(_summary(manifest))}")
    except BundleError as e:
        if args.command == "unpack":
            print(f"error: refused {args.archive}: {e}; nothing was written", file=sys.stderr)
        else:
            print(f"error: {args.path} is not a valid bundle: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
