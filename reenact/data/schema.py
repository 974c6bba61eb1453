"""Every Parquet schema, status and identifier convention of the suite, defined once.

Dataflow (DESIGN.md): ledger rows (download) -> frame rows (crop / ingest) -> coefficient rows (extract)
-> pair manifests -> guidance rows. Rows join on ``chunk_id`` + ``frame_index``.

Conventions:
* chunk id: ``<person_id>#<video_id>#<start:06d>#<end:06d>`` (PIRender / DaGAN pair lists); for CelebV the
  "video" is the identity folder and start/end span its frame files.
* images in Parquet are encoded PNG or JPEG bytes (``image_format`` says which); in code, RGB float NCHW in [0, 1].
* every row carries ``status`` (one of :class:`Status`) and a human-readable ``error`` ("" when ok).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from enum import Enum

import pyarrow as pa

SCHEMA_VERSION = 3          # 2: PAIRS gained pose discrepancy and status columns; image columns stored as HF Image
#                             3: statuses ``implausible`` and ``detector_disagreement`` (issue 12); older shards are
#                                read unchanged (their statuses are a subset of this vocabulary)


class Status(str, Enum):
    """The fixed status vocabulary. A bad item is a row with one of these, never an exception."""

    OK = "ok"
    SKIPPED = "skipped"              # done in an earlier run
    UNAVAILABLE = "unavailable"      # removed / 404 / geo-blocked
    PRIVATE = "private"
    DOWNLOAD_ERROR = "download_error"
    TIMEOUT = "timeout"
    DECODE_ERROR = "decode_error"    # missing, truncated or corrupt media
    TOO_SHORT = "too_short"          # chunk beyond the video's length
    OUT_OF_FRAME = "out_of_frame"    # bbox outside the frame
    BAD_METADATA = "bad_metadata"    # malformed metadata row
    REJECTED = "rejected"            # unsafe id or path (traversal)
    NO_FACE = "no_face"              # no detector found a face it trusts
    FIT_ERROR = "fit_error"          # the fit itself failed (an exception, a non-finite result, nothing to fit)
    IMPLAUSIBLE = "implausible"      # fitted, but a named plausibility gate failed (reenact.faces.gates: landmark
    #                                  RMSE vs face size, pose jump, identity outside the prior, face leaving the frame,
    #                                  landmarks off the face box; detection: a box off the face track)
    DETECTOR_DISAGREEMENT = "detector_disagreement"   # MTCNN and dlib confidently disagree, nothing decides


STATUSES = tuple(s.value for s in Status)


class Failure(str, Enum):
    """Whether a failed download may still succeed later (the ledger's ``failure`` column; "" when ok)."""

    NONE = ""
    TRANSIENT = "transient"          # network, DNS, timeout, HTTP 5xx, 429, bot check, expired cookies, bad bytes
    PERMANENT = "permanent"          # private, removed, copyright, terminated account, not a video


FAILURES = tuple(f.value for f in Failure)

# ---------------------------------------------------------------- identifiers
_SAFE_ID = re.compile(r"[A-Za-z0-9_\-]{1,64}")          # matched whole (fullmatch): no "$" before a newline
_CHUNK_ID = re.compile(r"(?P<person_id>[^#/\\]+)#(?P<video_id>[^#/\\]+)#(?P<start>\d{6,})#(?P<end>\d{6,})")


_OBJECT_REPR = re.compile(r" ?<[^<>]* at 0x[0-9a-fA-F]+>")            # <PIL.Image ... at 0x7f...>
_ADDRESS = re.compile(r"0x[0-9a-fA-F]{6,}")                            # ffmpeg's [in#0 @ 0x55fb3c2a9e40]
_TEMP_NAME = re.compile(r"\btmp[a-z0-9_]{8}\b")                        # tempfile.mkdtemp / mkstemp names
_PID_TEMP = re.compile(r"\.\d+\.tmp\b")                                  # reenact.data.shards' .<name>.<pid>.tmp


def clean_error(text: str) -> str:
    """An ``error`` text made deterministic: object reprs dropped, pointer addresses and temporary names replaced by
    fixed placeholders, so two runs over the same input write the same rows."""
    text = _OBJECT_REPR.sub("", text)
    text = _ADDRESS.sub("0xADDR", text)
    return _PID_TEMP.sub(".PID.tmp", _TEMP_NAME.sub("tmpXXXXXXXX", text))


def is_safe_id(value: str) -> bool:
    """True for ids safe to use as a file name (no separators, dots-only or traversal)."""
    return isinstance(value, str) and _SAFE_ID.fullmatch(value) is not None


@dataclass(frozen=True)
class ChunkId:
    """A clip of one source video: ``<person_id>#<video_id>#<start:06d>#<end:06d>`` (frames at the reference fps)."""

    person_id: str
    video_id: str
    start: int
    end: int

    def __str__(self) -> str:
        return f"{self.person_id}#{self.video_id}#{self.start:06d}#{self.end:06d}"

    @classmethod
    def parse(cls, text: str) -> "ChunkId":
        m = _CHUNK_ID.fullmatch(text.removesuffix(".mp4"))
        if m is None:
            raise ValueError(f"not a chunk id (<person_id>#<video_id>#<start:06d>#<end:06d>): {text!r}")
        return cls(m["person_id"], m["video_id"], int(m["start"]), int(m["end"]))


def frame_key(chunk_id: str, frame_index: int) -> str:
    """One frame: ``<chunk_id>/<frame_index:07d>`` (DaGAN's pair lists use ``.../<frame:07d>.png``)."""
    return f"{chunk_id}/{frame_index:07d}"


def parse_frame_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`frame_key`: ``(chunk_id, frame_index)``; ValueError naming the key otherwise."""
    chunk_id, sep, index = key.rpartition("/")
    if not sep or not index.isdigit():
        raise ValueError(f"not a frame key (<chunk_id>/<frame_index:07d>): {key!r}")
    ChunkId.parse(chunk_id)
    return chunk_id, int(index)


def pair_key(protocol: str, pair_id: int) -> str:
    """A pair across protocols: ``<protocol>/<pair_id:06d>`` (the datasets' ``pair_id`` string)."""
    return f"{protocol}/{pair_id:06d}"


# ---------------------------------------------------------------- image columns (Hugging Face ``datasets`` layout)
#: Field metadata marking a column of encoded PNG/JPEG bytes as an image.
IMAGE_META = {b"feature": b"Image"}
#: How image columns are *stored* in finished shards: the Arrow layout of ``datasets.Image`` (struct of ``bytes`` and
#: ``path``), so ``datasets.load_dataset("parquet", ...)`` decodes them as PIL images. A plain binary column with the
#: ``huggingface`` schema metadata is not enough: ``datasets`` (5.x) keeps a declared feature only when the stored
#: Arrow type equals the feature's own, and otherwise reads the column as ``Value("binary")``.
IMAGE_STORAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])


def image_field(name: str) -> pa.Field:
    """An encoded-image column as code sees it: binary, marked :data:`IMAGE_META` (stored as :data:`IMAGE_STORAGE`)."""
    return pa.field(name, pa.binary(), metadata=IMAGE_META)


def image_columns(schema: pa.Schema) -> list[str]:
    """Names of the fields of ``schema`` marked as images."""
    return [f.name for f in schema if f.metadata and f.metadata.get(b"feature") == b"Image"]


def storage_schema(schema: pa.Schema) -> pa.Schema:
    """``schema`` as finished shards store it: image columns as :data:`IMAGE_STORAGE`, plus the ``huggingface``
    schema metadata declaring them ``Image`` features (other columns are typed by ``datasets`` from Arrow)."""
    names = image_columns(schema)
    if not names:
        return schema
    fields = [pa.field(f.name, IMAGE_STORAGE, metadata=f.metadata) if f.name in names else f for f in schema]
    features = {name: {"_type": "Image"} for name in names}
    meta = {**(schema.metadata or {}), b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    return pa.schema(fields, metadata=meta)


# ---------------------------------------------------------------- schemas
_STATUS = [pa.field("status", pa.string(), nullable=False), pa.field("error", pa.string(), nullable=False)]

LEDGER = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("url", pa.string()),
    pa.field("path", pa.string()),            # downloaded file, relative to the download root
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("fps", pa.float32()),
    pa.field("num_frames", pa.int32()),
    pa.field("attempts", pa.int32()),
    pa.field("bytes", pa.int64()),
    pa.field("seconds", pa.float32()),
    *_STATUS,
    pa.field("failure", pa.string()),         # Failure: "" (ok), transient, permanent; null in older ledgers
])

FRAMES = pa.schema([
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("person_id", pa.string(), nullable=False),
    pa.field("partition", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32(), nullable=False),   # index within the chunk, 0-based
    pa.field("source_frame", pa.int32()),                  # index within the decoded source video
    image_field("image"),                                  # encoded image, None when status != ok
    pa.field("image_format", pa.string()),                 # "png" | "jpeg"
    pa.field("height", pa.int32()),
    pa.field("width", pa.int32()),
    *_STATUS,
])

#: FRAMES plus the crop the ingest chose (CelebV: pipelines.celebv). A separate schema because FRAMES writers build
#: their rows with every FRAMES field named; the oracle extractor reads ``crop_box`` to re-frame ground truth.
CELEBV_FRAMES = pa.schema([
    *FRAMES,
    pa.field("crop_box", pa.list_(pa.float32(), 4)),      # l, t, r, b of the square crop, source pixels (may leave
])                                                        # the image: padded), resized to height x width


COEFFS = pa.schema([
    pa.field("chunk_id", pa.string(), nullable=False),
    pa.field("frame_index", pa.int32(), nullable=False),
    pa.field("coeffs", pa.list_(pa.float32(), 257)),       # reenact.face3d.coeffs layout
    pa.field("landmarks", pa.list_(pa.float32(), 136)),    # 68 x (x, y) in crop pixels, pixel-centre convention
    pa.field("extractor", pa.string(), nullable=False),    # deep3d | landmarks | oracle
    pa.field("fit_error", pa.float32()),                   # extractor's residual (e.g. landmark RMSE, pixels)
    *_STATUS,
    pa.field("align", pa.list_(pa.float64(), 5)),          # deep3d: Deep3D trans_params (w0, h0, s, tx, ty), else null
])

#: Ground truth written by the synthetic world beside its videos.
SYNTH_TRUTH = pa.schema([
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("person_id", pa.string(), nullable=False),
    pa.field("source_frame", pa.int32(), nullable=False),  # frame index in the source mp4 / image index for CelebV
    pa.field("coeffs", pa.list_(pa.float32(), 257)),
    pa.field("landmarks", pa.list_(pa.float32(), 136)),    # in source-video pixels
    pa.field("face_bbox", pa.list_(pa.float32(), 4)),      # l, t, r, b of the rendered face, source pixels
    # added by the synthetic world generator (reenact.synth); coeffs are exact for the source camera below
    pa.field("dataset", pa.string()),                      # vox | celebv
    pa.field("partition", pa.string()),                    # train | test
    pa.field("chunk_id", pa.string()),                     # vox: chunk holding the frame (null between chunks)
    pa.field("frame_index", pa.int32()),                   # index within chunk_id (celebv: the image index)
    pa.field("path", pa.string()),                         # media file, relative to the vox/ or CelebV/ root
    pa.field("width", pa.int32()),                         # source image size
    pa.field("height", pa.int32()),
    pa.field("focal", pa.float64()),                       # source camera: fx = fy, principal point (pixels),
    pa.field("cx", pa.float64()),                          # at Deep3D's camera distance 10
    pa.field("cy", pa.float64()),
    pa.field("crop_box", pa.list_(pa.int32(), 4)),         # vox: the video's square chunk bbox l, t, r, b
    pa.field("crop_coeffs", pa.list_(pa.float32(), 257)),  # vox: coefficients for the 256^2 crop, deep3d(256)
    pa.field("crop_landmarks", pa.list_(pa.float32(), 136)),  # vox: 68 x (x, y) in 256^2 crop pixels
])

#: One pair of a protocol (``manifests/<protocol>/v<N>/pairs.parquet``). ``pair_id`` is the row's position in the
#: full manifest and never changes when a manifest is filtered. Every column after ``driving`` is optional (null):
#: pose discrepancy (from coefficients, by ``extractor``) and the availability mark of a user's run.
PAIRS = pa.schema([
    pa.field("pair_id", pa.int32(), nullable=False),
    pa.field("protocol", pa.string(), nullable=False),     # vox-self | vox-cross | celebv-cross | dagan-...
    pa.field("source", pa.string(), nullable=False),       # frame key
    pa.field("driving", pa.string(), nullable=False),      # frame key
    # added in schema version 2
    pa.field("geodesic_deg", pa.float32()),                # angle between source and driving head rotations
    pa.field("yaw_diff_deg", pa.float32()),                # driving minus source, degrees
    pa.field("pitch_diff_deg", pa.float32()),
    pa.field("roll_diff_deg", pa.float32()),
    pa.field("pose_bin", pa.string()),                     # e.g. "10-20" (degrees of geodesic angle), "30+"
    pa.field("extractor", pa.string()),                    # coefficients the pose came from (oracle | deep3d | ...)
    pa.field("status", pa.string()),                       # ok | unavailable (a frame is missing in a user's run)
    pa.field("error", pa.string()),
])

GUIDANCE = pa.schema([
    pa.field("pair_id", pa.int32(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("driving", pa.string(), nullable=False),
    pa.field("size", pa.int32(), nullable=False),
    pa.field("flow", pa.binary()),          # F_c float16 (2, H, W), pixels, raw little-endian bytes
    pa.field("occlusion", pa.binary()),     # O_c uint8 (H, W) in {0, 1}
    pa.field("face_mask", pa.binary()),     # inner-face mask uint8 (H, W)
    image_field("render"),                  # I_r PNG bytes
    *_STATUS,
])

#: The parsed ``vox-metadata.csv`` (pipelines.metadata): one row per CSV record, with the clip it maps to.
METADATA = pa.schema([
    pa.field("line", pa.int32(), nullable=False),          # 1-based line in the CSV (header = line 1)
    pa.field("video_id", pa.string(), nullable=False),     # as written (may be unsafe when status = rejected)
    pa.field("start", pa.int32()),
    pa.field("end", pa.int32()),
    pa.field("bbox", pa.list_(pa.int32(), 4)),             # l, t, r, b at the reference width x height
    pa.field("fps", pa.float32()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("partition", pa.string()),                    # this row's own partition / person_id
    pa.field("person_id", pa.string()),
    pa.field("chunk_id", pa.string()),                     # clip id, person_id from the video's first row
    pa.field("out_partition", pa.string()),                # partition of the clip (the video's first row)
    pa.field("duplicate", pa.bool_()),                     # superseded by a later row for the same clip
    *_STATUS,
])

SCHEMAS: dict[str, pa.Schema] = {
    "ledger": LEDGER, "frames": FRAMES, "celebv_frames": CELEBV_FRAMES, "coeffs": COEFFS, "synth_truth": SYNTH_TRUTH,
    "pairs": PAIRS, "guidance": GUIDANCE, "metadata": METADATA,
}
