"""CelebV listing and reading: ReenactGAN's ``CelebV/<Name>/Image/*.jpg`` (a folder or a ``.zip``) -> one
:class:`IdentityJob` per identity, and the raw bytes of its images.

Layout. ``root`` is the CelebV folder (or a folder holding ``CelebV/``), or a ``.zip`` of it. Every folder that
holds an ``Image/`` folder is one identity (the paper's five are Donald_Trump, Emmanuel_Macron, Jack_Ma, Kathleen
and Theresa_May; any name is accepted). Its images are the ``*.jpg`` / ``*.jpeg`` files of ``Image/`` (dot files
skipped), sorted by file name; image ``i`` of that order is ``frame_index = source_frame = i``. In a zip the
identity is the folder above ``Image/`` of each member, whatever comes before it. Dot folders and ``__MACOSX``
are skipped; a folder without images is a ``decode_error`` item.

An identity whose name fails :func:`reenact.data.schema.is_safe_id`, whose folder is a symlink leaving the root, or
a zip member whose path is absolute or traverses (``..``), is a ``rejected`` item; an image that is a symlink
leaving the root is a ``rejected`` image. :func:`list_identities` reads the listing only (names, sizes, times);
nothing is decoded.
"""
from __future__ import annotations

import hashlib
import json
import os
import stat
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from reenact.data.codec import decode_image
from reenact.data.schema import ChunkId, Status, clean_error, is_safe_id

OK = Status.OK.value
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
IMAGE_DIR = "Image"


@dataclass(frozen=True)
class ImageRef:
    """One image of an identity: ``path`` relative to the CelebV folder (or a zip member name)."""

    path: str
    status: str = OK
    error: str = ""


@dataclass(frozen=True)
class IdentityJob:
    """One identity (or one rejected item) to ingest: its images in frame order, read from ``source``."""

    name: str                               # folder name as written (may be unsafe when status = rejected)
    source: str                             # absolute path of the CelebV folder or the zip
    images: tuple[ImageRef, ...] = ()
    status: str = OK
    error: str = ""
    token: str = ""                         # digest of the listing (paths, sizes, times): changes with the input

    @property
    def key(self) -> str:
        """Part name: the identity name, or ``rejected.<digest>`` (never a safe id, so never a collision)."""
        if self.status == Status.REJECTED.value:
            return "rejected." + hashlib.sha256(self.name.encode("utf-8", "surrogateescape")).hexdigest()[:16]
        return self.name

    @property
    def chunk_id(self) -> str:
        if self.status == Status.REJECTED.value:
            return printable(self.name)
        return str(ChunkId(self.name, self.name, 0, len(self.images)))

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "IdentityJob":
        d = json.loads(text)
        return cls(**{**d, "images": tuple(ImageRef(**i) for i in d["images"])})


def printable(name: str) -> str:
    """A name as valid UTF-8 text (undecodable file-name bytes become ``\\udcXX`` escapes)."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _rejected(name: str, source: Path, why: str) -> IdentityJob:
    return IdentityJob(name, str(source), (), Status.REJECTED.value, f"rejected {printable(name)!r}: {why}")


def _digest(entries: Sequence[Any]) -> str:
    return hashlib.sha256(json.dumps(entries, default=str).encode("utf-8", "surrogateescape")).hexdigest()[:16]


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMAGE_SUFFIXES)


def celebv_dir(root: Path) -> Path:
    """``root`` itself when it holds identity folders, else ``root/CelebV`` when that exists."""
    if not any((p / IMAGE_DIR).is_dir() for p in root.iterdir()) and (root / "CelebV").is_dir():
        return root / "CelebV"
    return root


def list_identities(root: str | os.PathLike) -> list[IdentityJob]:
    """Every identity under ``root`` (folder or zip), in name order, rejected items included.

    Reads the listing only (names, sizes, times); nothing is decoded. Raises ValueError when ``root`` is neither
    a folder nor a zip file.
    """
    root = Path(root)
    if root.is_dir():
        return _folder_identities(celebv_dir(root).resolve())
    if root.is_file() and zipfile.is_zipfile(root):
        return _zip_identities(root.resolve())
    raise ValueError(f"CelebV root must be a folder or a .zip file, got {os.fspath(root)!r}")


def _inside(path: Path, base: Path) -> bool:
    """True when ``path`` resolves (symlinks followed) to a place inside ``base`` (already resolved)."""
    try:
        return path.resolve().is_relative_to(base)
    except (OSError, RuntimeError):         # a symlink loop
        return False


def _folder_identities(base: Path) -> list[IdentityJob]:
    jobs = []
    for entry in sorted(base.iterdir(), key=lambda p: p.name):
        if not entry.is_dir() or entry.name.startswith(".") or entry.name == "__MACOSX":
            continue
        if not is_safe_id(entry.name):
            jobs.append(_rejected(entry.name, base, "unsafe identity name (allowed: [A-Za-z0-9_-], 1-64 chars)"))
        elif not _inside(entry, base):
            jobs.append(_rejected(entry.name, base, "the identity folder is a symlink leaving the CelebV root"))
        else:
            jobs.append(_folder_identity(entry.name, base))
    return jobs


def _folder_identity(name: str, base: Path) -> IdentityJob:
    folder = base / name / IMAGE_DIR
    files = sorted(p.name for p in folder.iterdir() if is_image_name(p.name)) if folder.is_dir() else []
    images, listing = [], []
    for file in files:
        path = folder / file
        rel = f"{name}/{IMAGE_DIR}/{file}"
        if not _inside(path, base):
            images.append(ImageRef(rel, Status.REJECTED.value, f"rejected {printable(rel)!r}: a symlink leaving "
                                                               "the CelebV root (not followed)"))
            listing.append([rel, "rejected"])
            continue
        try:
            st = path.stat()
            listing.append([rel, st.st_size, st.st_mtime_ns])
        except OSError as e:
            listing.append([rel, repr(e)])
        images.append(ImageRef(rel))
    return _identity_job(name, base, images, listing)


def _identity_job(name: str, source: Path, images: list[ImageRef], listing: list) -> IdentityJob:
    if not images:
        return IdentityJob(name, str(source), (), Status.DECODE_ERROR.value,
                           f"no {IMAGE_DIR}/*.jpg images for identity {name!r}", _digest([]))
    return IdentityJob(name, str(source), tuple(images), token=_digest(listing))


def member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is unsafe (absolute, drive, backslash or ``..`` / ``.`` / empty parts, symlink), or None."""
    name = info.filename
    parts = name.rstrip("/").split("/")
    if name.startswith("/") or "\\" in name or (parts and ":" in parts[0]):
        return "an absolute or non-portable member path"
    if any(p in ("", ".", "..") for p in parts):
        return "a member path that traverses (empty, '.' or '..' parts)"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "a symlink member (never followed)"
    return None


def _zip_identities(source: Path) -> list[IdentityJob]:
    by_name: dict[str, list[tuple[str, str, zipfile.ZipInfo]]] = {}
    rejected = []
    with zipfile.ZipFile(source) as zf:
        for info in zf.infolist():
            if info.filename.startswith("__MACOSX/"):
                continue
            problem = member_problem(info)
            if problem is not None:
                rejected.append(_rejected(info.filename, source, problem))
                continue
            parts = PurePosixPath(info.filename).parts
            if info.is_dir() or len(parts) < 3 or parts[-2] != IMAGE_DIR or not is_image_name(parts[-1]):
                continue
            by_name.setdefault(parts[-3], []).append((parts[-1], info.filename, info))
    jobs = []
    for name in sorted(by_name):
        if not is_safe_id(name):
            jobs.append(_rejected(name, source, "unsafe identity name (allowed: [A-Za-z0-9_-], 1-64 chars)"))
            continue
        members = sorted(by_name[name], key=lambda m: (m[0], m[1]))
        jobs.append(_identity_job(name, source, [ImageRef(m[1]) for m in members],
                                  [[m[1], m[2].file_size, m[2].CRC, m[2].date_time] for m in members]))
    return jobs + sorted(rejected, key=lambda j: j.name)


# ---------------------------------------------------------------- reading

class ImageSource:
    """Reads the raw bytes of an identity's images from its folder or zip (``with`` closes the zip)."""

    def __init__(self, source: str | os.PathLike):
        self.base = Path(source)
        self.zip = zipfile.ZipFile(self.base) if self.base.is_file() else None

    def read(self, path: str) -> bytes:
        if self.zip is not None:
            return self.zip.read(path)
        full = self.base / path
        if not _inside(full, self.base):    # checked again at read time: the tree may have changed
            raise PermissionError(f"{path!r} leaves the CelebV root")
        return full.read_bytes()

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def __enter__(self) -> "ImageSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_image(reader: ImageSource, ref: ImageRef) -> tuple[np.ndarray | None, str]:
    """(RGB array, "") or (None, reason) for a file that cannot be read or decoded."""
    try:
        return decode_image(reader.read(ref.path)), ""
    except Exception as e:                  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError
        return None, clean_error(f"cannot decode {printable(ref.path)!r}: {type(e).__name__}: {e}")
