"""The pair sampler of the benchmark protocols: pure functions, chunk / frame lists in, PAIRS rows out.

Every random choice is a hash, so the lists are reproducible in any language and on any machine:
``u64(*parts) = first 8 bytes (big-endian) of sha256("|".join(parts))``, and a choice among n is ``u64(...) % n``.
The parts always start with the protocol and the *source* chunk id, so a video's pairs are seeded by its own id
and never depend on which other videos exist (VoxCeleb self), or only through the one driving video they drew.

Rules (``per`` = 20 for VoxCeleb, 1,000 for CelebV; attempt ``j`` = 0, 1, 2, ...; an attempt repeating an earlier
pair of the same source chunk, or with source frame = driving frame, is skipped; a chunk stops after ``per`` pairs):

* **vox-self**: for a test chunk c of length L = end - start (frames at the reference fps, from the metadata alone):
  source frame ``u64(p, c, j, "source") % L``, driving frame ``u64(p, c, j, "driving") % L``.
* **vox-cross**: source frame as above; the driving chunk is the test chunk of *another* person_id that maximises
  ``splitmix64(u64(p, c, j, "driving-chunk") xor u64(candidate))`` (rendezvous hashing: removing any other
  chunk changes only the pairs that drew it), the driving frame ``u64(p, c, j, "driving", d) % L_d``.
* **celebv-cross**: one block per identity (source chunk s, identities in name order); pair k of the block takes
  its driving identity ``others[k % (n - 1)]`` (the other identities in name order, so 250 pairs each of the four
  others), then attempt j of pair k draws the source frame ``frames_s[u64(p, s, k, j, "source") % n_s]`` and the
  driving frame ``frames_d[u64(p, s, k, j, "driving") % n_d]`` among the *prepared* (ok) frames, in frame order.

Pairs are numbered 0, 1, ... in source-chunk order (chunk ids sorted), then draw order: ``pair_id``.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from reenact.data.manifests import pairs_table
from reenact.data.schema import ChunkId, Status, frame_key, parse_frame_key

VOX_PER_CHUNK = 20
CELEBV_PER_BLOCK = 1000
#: Default pose-discrepancy bins: edges in degrees of the geodesic angle; the last bin is open ("30+").
POSE_BIN_EDGES = (0.0, 10.0, 20.0, 30.0)
MAX_ATTEMPTS = 100                       # per wanted pair: a chunk too short for ``per`` distinct pairs stops


@dataclass(frozen=True)
class Chunk:
    """A test video: its chunk id and length in frames at the reference fps (``end - start``)."""

    chunk_id: str
    frames: int

    @property
    def person_id(self) -> str:
        return ChunkId.parse(self.chunk_id).person_id

    @classmethod
    def from_id(cls, chunk_id: str) -> Chunk:
        c = ChunkId.parse(chunk_id)
        return cls(str(c), c.end - c.start)


def u64(*parts: object) -> int:
    """The sampler's hash: the first 8 bytes of ``sha256("|".join(parts))`` as a big-endian integer."""
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _draw(count: int, attempt) -> list[tuple[str, str]]:
    """Call ``attempt(j)`` -> (source key, driving key) for j = 0, 1, ... until ``count`` distinct valid pairs."""
    pairs: dict[tuple[str, str], None] = {}
    for j in range(count * MAX_ATTEMPTS):
        pair = attempt(j)
        if pair[0] != pair[1]:
            pairs.setdefault(pair)
        if len(pairs) == count:
            break
    return list(pairs)


def self_pairs_of(chunk: Chunk, protocol: str = "vox-self", per: int = VOX_PER_CHUNK) -> list[tuple[str, str]]:
    """The vox-self pairs of one chunk (module docstring), in draw order."""
    c, n = chunk.chunk_id, chunk.frames
    return _draw(per, lambda j: (frame_key(c, u64(protocol, c, j, "source") % n),
                                 frame_key(c, u64(protocol, c, j, "driving") % n)))


class CrossPool:
    """Candidate driving chunks for vox-cross, hashed once, sorted by chunk id."""

    def __init__(self, chunks: Sequence[Chunk]):
        self.chunks = sorted(chunks, key=lambda ch: ch.chunk_id)
        self.persons = np.array([ch.person_id for ch in self.chunks])
        self.hashes = np.array([u64(ch.chunk_id) for ch in self.chunks], dtype=np.uint64)

    def driving_chunk(self, key: int, person_id: str) -> Chunk:
        """The chunk of another person maximising ``splitmix64(key xor u64(chunk))`` (ties: first by chunk id)."""
        scores = splitmix64(self.hashes ^ np.uint64(key))
        scores[self.persons == person_id] = 0
        best = int(np.argmax(scores))
        if self.persons[best] == person_id:
            raise ValueError(f"no test chunk of a person other than {person_id!r}")
        return self.chunks[best]


def cross_pairs_of(chunk: Chunk, pool: CrossPool, protocol: str = "vox-cross",
                   per: int = VOX_PER_CHUNK) -> list[tuple[str, str]]:
    """The vox-cross pairs of one chunk (module docstring), in draw order."""
    c, person = chunk.chunk_id, chunk.person_id

    def attempt(j: int) -> tuple[str, str]:
        d = pool.driving_chunk(u64(protocol, c, j, "driving-chunk"), person)
        return (frame_key(c, u64(protocol, c, j, "source") % chunk.frames),
                frame_key(d.chunk_id, u64(protocol, c, j, "driving", d.chunk_id) % d.frames))
    return _draw(per, attempt)


def number_pairs(pairs: Iterable[tuple[str, str]], protocol: str) -> pa.Table:
    """(source, driving) keys in manifest order -> a PAIRS table with ``pair_id`` 0, 1, ..."""
    pairs = list(pairs)
    return pairs_table({"pair_id": list(range(len(pairs))), "protocol": [protocol] * len(pairs),
                        "source": [s for s, _ in pairs], "driving": [d for _, d in pairs]})


def _chunks(chunks: Iterable[Chunk]) -> list[Chunk]:
    chunks = sorted(set(chunks), key=lambda ch: ch.chunk_id)
    if len({ch.chunk_id for ch in chunks}) != len(chunks):
        raise ValueError("a chunk id is listed with two different lengths")
    short = [ch.chunk_id for ch in chunks if ch.frames < 2]
    if short:
        raise ValueError(f"chunks need at least 2 frames; got {short[:3]}")
    return chunks


def vox_self_pairs(chunks: Iterable[Chunk], protocol: str = "vox-self", per: int = VOX_PER_CHUNK) -> pa.Table:
    """vox-self over the test chunks (``per`` pairs each, fewer only for chunks too short to hold them)."""
    return number_pairs((p for ch in _chunks(chunks) for p in self_pairs_of(ch, protocol, per)), protocol)


def vox_cross_pairs(chunks: Iterable[Chunk], protocol: str = "vox-cross", per: int = VOX_PER_CHUNK) -> pa.Table:
    """vox-cross over the test chunks: source from each chunk, driving from a chunk of another person_id."""
    chunks = _chunks(chunks)
    pool = CrossPool(chunks)
    return number_pairs((p for ch in chunks for p in cross_pairs_of(ch, pool, protocol, per)), protocol)


def celebv_cross_pairs(frames: dict[str, Sequence[int]], protocol: str = "celebv-cross",
                       per: int = CELEBV_PER_BLOCK) -> pa.Table:
    """celebv-cross: ``frames`` maps each identity's chunk id to its prepared (ok) frame indices.

    One block of ``per`` pairs per identity (chunk ids in order): the source identity fixed, the driving frame
    from the others in turn. ValueError when an identity has no frame or a block cannot hold ``per`` pairs."""
    ids = sorted(frames)
    if len(ids) < 2 or any(not frames[c] for c in ids):
        raise ValueError(f"celebv-cross needs >= 2 identities with frames; got {[(c, len(frames[c])) for c in ids]}")
    frames = {c: sorted(frames[c]) for c in ids}
    pairs = []
    for s in ids:
        others, taken = [c for c in ids if c != s], set()
        for k in range(per):
            pair = _celebv_pair(protocol, s, others[k % len(others)], k, frames, taken)
            if pair in taken:
                raise ValueError(f"identity {s!r}: too few frames for {per} distinct pairs")
            taken.add(pair)
            pairs.append(pair)
    return number_pairs(pairs, protocol)


def _celebv_pair(protocol: str, s: str, d: str, k: int, frames: dict[str, list[int]],
                 taken: set) -> tuple[str, str]:
    """Pair k of block s (driving identity d): the first attempt j not in ``taken`` (the last one if all are)."""
    src, drv = frames[s], frames[d]
    for j in range(MAX_ATTEMPTS):
        pair = (frame_key(s, src[u64(protocol, s, k, j, "source") % len(src)]),
                frame_key(d, drv[u64(protocol, s, k, j, "driving") % len(drv)]))
        if pair not in taken:
            break
    return pair


# ---------------------------------------------------------------- availability: mark / filter

def mark_available(pairs: pa.Table, available: Iterable[str]) -> pa.Table:
    """``status`` ok where both frame keys are in ``available`` (a user's prepared frames), else unavailable,
    with the missing key in ``error``. ``pair_id`` and every other column are kept."""
    have = set(available)
    src, drv = pairs.column("source").to_pylist(), pairs.column("driving").to_pylist()
    missing = [next((k for k in (s, d) if k not in have), None) for s, d in zip(src, drv)]
    status = [Status.OK.value if m is None else Status.UNAVAILABLE.value for m in missing]
    error = ["" if m is None else f"frame {m} is not prepared" for m in missing]
    pairs = pairs.set_column(pairs.schema.get_field_index("status"), pairs.schema.field("status"),
                             pa.array(status, pa.string()))
    return pairs.set_column(pairs.schema.get_field_index("error"), pairs.schema.field("error"),
                            pa.array(error, pa.string()))


def filter_available(pairs: pa.Table) -> pa.Table:
    """The rows of a marked table whose status is ok (pair ids unchanged)."""
    return pairs.filter(pc.equal(pairs.column("status"), Status.OK.value))


# ---------------------------------------------------------------- pose bins

def bin_label(lo: float, hi: float | None) -> str:
    return f"{lo:g}+" if hi is None else f"{lo:g}-{hi:g}"


def bin_labels(edges: Sequence[float] = POSE_BIN_EDGES) -> list[str]:
    """``[0, 10, 20, 30]`` -> ``["0-10", "10-20", "20-30", "30+"]``."""
    if list(edges) != sorted(set(edges)) or not edges:
        raise ValueError(f"bin edges must be increasing, got {edges}")
    return [bin_label(lo, hi) for lo, hi in zip(edges, [*edges[1:], None])]


def pose_bin(angle_deg: float, edges: Sequence[float] = POSE_BIN_EDGES) -> str | None:
    """The bin label of an angle in degrees (``lo <= angle < hi``); None below the first edge or for NaN."""
    if math.isnan(angle_deg) or angle_deg < edges[0]:
        return None
    k = int(np.searchsorted(np.asarray(edges), angle_deg, side="right")) - 1
    return bin_labels(edges)[k]


# ---------------------------------------------------------------- DaGAN's published pair lists

#: DaGAN CSV -> our protocol name.
DAGAN_PROTOCOLS = {"vox_evaluation.csv": "dagan-vox-self", "vox_cross_id_evaluation.csv": "dagan-vox-cross",
                   "celeV_cross_id_evaluation.csv": "dagan-celebv-cross"}


def dagan_vox_key(path: str) -> str:
    """``.../vox1_frames/test/<chunk_id>.mp4/<frame:07d>.png`` -> frame key ``<chunk_id>/<frame:07d>``."""
    parts = path.strip().replace("\\", "/").split("/")
    if len(parts) < 2 or not parts[-1].endswith(".png") or not parts[-1][:-4].isdigit():
        raise ValueError(f"not a DaGAN VoxCeleb frame path (.../<chunk_id>.mp4/<frame>.png): {path!r}")
    key = frame_key(str(ChunkId.parse(parts[-2])), int(parts[-1][:-4]))
    parse_frame_key(key)
    return key


def dagan_celebv_file(path: str) -> tuple[str, str]:
    """``.../CelebV/<Name>/Image/<file>.jpg`` -> ``(Name, file)``."""
    parts = path.strip().replace("\\", "/").split("/")
    if len(parts) < 3 or parts[-2] != "Image" or not parts[-1].lower().endswith((".jpg", ".jpeg")):
        raise ValueError(f"not a DaGAN CelebV image path (.../<Name>/Image/<file>.jpg): {path!r}")
    return parts[-3], parts[-1]


def celebv_frame_keys(listing: dict[str, Sequence[str]]) -> dict[tuple[str, str], str]:
    """``{Name: image file names}`` (a CelebV copy's ``Image/`` folders) -> ``{(Name, file): frame key}``, with the
    CelebV ingest's convention: chunk ``<Name>#<Name>#000000#<N:06d>``, frame index = rank of the sorted name."""
    keys = {}
    for name, files in listing.items():
        files = sorted(files)
        chunk = str(ChunkId(name, name, 0, len(files)))
        keys.update({(name, f): frame_key(chunk, i) for i, f in enumerate(files)})
    return keys


def dagan_pairs(rows: Iterable[tuple[str, str]], protocol: str,
                celebv_keys: dict[tuple[str, str], str] | None = None) -> pa.Table:
    """DaGAN's (source, driving) paths -> a PAIRS table of ``protocol`` in the file's order.

    VoxCeleb paths map to frame keys directly. CelebV paths name image files, whose frame index is their rank in
    the identity's folder: give ``celebv_keys`` (:func:`celebv_frame_keys` of the user's CelebV copy); without it
    the keys use the listing of the files DaGAN names (the frame index is then the rank among those files only,
    recorded as such in the manifest notes by the caller)."""
    rows = [(s, d) for s, d in rows]
    if protocol.startswith("dagan-celebv"):
        files = [dagan_celebv_file(p) for pair in rows for p in pair]
        if celebv_keys is None:
            listing: dict[str, set[str]] = {}
            for name, f in files:
                listing.setdefault(name, set()).add(f)
            celebv_keys = celebv_frame_keys({n: sorted(fs) for n, fs in listing.items()})
        keys = [celebv_keys[f] for f in files]
        return number_pairs(zip(keys[0::2], keys[1::2]), protocol)
    return number_pairs(((dagan_vox_key(s), dagan_vox_key(d)) for s, d in rows), protocol)
