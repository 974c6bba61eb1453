"""Sampling the synthetic world: presets, identities, cameras and smooth per-frame coefficient trajectories.

Everything here is plain numpy and depends only on the seed and the preset's name: each identity, video and CelebV
sequence draws from its own generator (:func:`item_rng`), so changing one preset knob never reshuffles unrelated
items, and two presets never share a video id.

Camera / coefficient contract (see :func:`vox_camera`): all chunks of one VoxCeleb-style video share one square
bbox of side ``Sb`` source pixels. The video's camera has its principal point at the bbox centre and focal
``1015 * Sb / 224``, so ``vox_camera(bbox).crop(l, t, Sb, 256) == PerspectiveCamera.deep3d(256)``: the world
coefficients of a frame *are* the coefficients of its 256^2 chunk crop. CelebV-style images get a camera of their
own (principal point at the image centre, focal ``1015 * min(W, H) / 224``), recorded in the ground truth.

Trajectories (25 fps): yaw sweeps up to ``yaw_max`` (45 deg by default) so pose-discrepancy bins are populated,
pitch and roll stay smaller; translation drifts a little around trans z in [-4.6, -3.2] dm (camera depth 13.2-14.6:
the face spans about 40-55 % of the crop width, hair and shoulders visible), the head centred in the crop.
Expressions use the procedural model's semantic components (:data:`reenact.face3d.procedural.EXPRESSION_NAMES`):
speech-like mouth openings, eye blinks, slow smiles, brow raises and puckers, plus small random motion on the other
59 components.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from reenact.face3d.camera import REFERENCE_FOCAL, REFERENCE_SIZE, PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, NUM_COEFFS, TEX, TRANS
from reenact.face3d.shading import INIT_LIGHT

FPS = 25
VIDEO_WIDTH, VIDEO_HEIGHT = 640, 360
CROP_SIZE = 256
CELEBV_NAMES = ("Donald_Trump", "Emmanuel_Macron", "Jack_Ma", "Kathleen", "Theresa_May")
#: VoxCeleb1's test identities are id10270-id10309; train identities come from the rest of id10001-id11251.
TEST_ID_RANGE, ALL_ID_RANGE = (10270, 10309), (10001, 11251)
_KIND_IDENTITY, _KIND_VIDEO, _KIND_CELEBV, _KIND_NAMES = 1, 2, 3, 4
#: Texture coefficient scale: the 5 semantic components (brightness, redness, tan, brows, lips) vary freely, the
#: random colour fields less (large values tint the skin green or blue).
TEX_SCALE = np.array([0.8] * 5 + [0.4] * 75)
_YOUTUBE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
#: Hair albedo palette (linear-ish RGB in [0, 1]): black, dark brown, brown, auburn, blond, grey.
HAIR_COLOURS = ((0.05, 0.04, 0.035), (0.14, 0.09, 0.06), (0.3, 0.19, 0.11), (0.4, 0.16, 0.07), (0.68, 0.53, 0.3),
                (0.55, 0.54, 0.52))


# ---------------------------------------------------------------------------------------------------- presets
@dataclass(frozen=True)
class Preset:
    """Sizes of one synthetic world. Frame counts are at 25 fps; chunk lengths are in frames."""

    name: str
    model: str                                   # procedural model size: full | small | tiny
    train_identities: int
    test_identities: int
    videos: int                                  # assigned to identities round-robin (train first)
    single_chunk_frames: tuple[int, int]         # chunk length of one-chunk videos (inclusive range)
    double_chunk_frames: tuple[int, int]         # length of each chunk of two-chunk videos
    two_chunk_fraction: float                    # share of videos holding two chunks (video 0 always does)
    bbox_side: tuple[int, int] = (240, 330)      # square bbox side Sb in source pixels
    celebv_images: int = 8                       # images per CelebV identity
    celebv_step: int = 3                         # frames of the underlying 25 fps sequence between two images
    celebv_size: tuple[int, int] = (256, 400)    # image width / height range
    yaw_max_deg: float = 45.0


PRESETS: dict[str, Preset] = {
    # tests: 4 identities (2 train, 2 test), 6 videos of ~27-36 frames (some with 2 chunks), 5 x 8 CelebV images.
    "tiny": Preset("tiny", model="full", train_identities=2, test_identities=2, videos=6,
                   single_chunk_frames=(26, 30), double_chunk_frames=(12, 14), two_chunk_fraction=0.3,
                   celebv_images=8),
    # quickstart: 16 identities (11 train, 5 test), 40 videos of 64-150 frames (one chunk of 64-90 frames, or two
    # of 64-69), 5 x 40 CelebV images, with the full (189^2-vertex) procedural model.
    "demo": Preset("demo", model="full", train_identities=11, test_identities=5, videos=40,
                   single_chunk_frames=(64, 90), double_chunk_frames=(64, 69), two_chunk_fraction=0.15,
                   celebv_images=40),
}


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown synth preset {name!r}; choose from {sorted(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True, eq=False)
class Identity:
    """One person: fixed shape, albedo, illumination, hair and clothes.

    id_coeffs ``(80,)``, tex_coeffs ``(80,)``, gamma ``(27,)`` (Deep3D layout), hair / cloth albedo ``(3,)`` in [0, 1],
    hairline: height (model y, dm) of the hair edge on the forehead; hair_length: how far down the back it falls.
    """

    person_id: str
    partition: str
    id_coeffs: np.ndarray
    tex_coeffs: np.ndarray
    gamma: np.ndarray
    hair_rgb: np.ndarray
    cloth_rgb: np.ndarray
    hairline: float
    hair_length: float
    hair_volume: float


@dataclass(frozen=True, eq=False)
class Sequence:
    """A rendered sequence of one identity: a VoxCeleb-style source video or the frames behind a CelebV folder.

    coeffs ``(T, 257)`` float32 are exact for ``camera`` (the full frame); ``chunks`` are ``(start, end)`` frame
    ranges, end exclusive (the vox-metadata convention), empty for CelebV; ``bbox`` is the chunks' shared square crop
    box ``(l, t, r, b)`` in source pixels, None for CelebV. ``seed`` seeds the background.
    """

    video_id: str
    identity: Identity
    camera: PerspectiveCamera
    coeffs: np.ndarray
    chunks: tuple[tuple[int, int], ...]
    bbox: tuple[int, int, int, int] | None
    seed: int
    dataset: str = "vox"

    @property
    def num_frames(self) -> int:
        return self.coeffs.shape[0]


@dataclass(frozen=True, eq=False)
class World:
    preset: Preset
    seed: int
    identities: tuple[Identity, ...]
    videos: tuple[Sequence, ...]
    celebv: tuple[Sequence, ...] = field(default=())


# ---------------------------------------------------------------------------------------------------- cameras
def vox_camera(bbox: tuple[int, int, int, int], width: int = VIDEO_WIDTH, height: int = VIDEO_HEIGHT
               ) -> PerspectiveCamera:
    """The source-video camera whose square crop ``bbox`` (l, t, r, b) resized to 256^2 is Deep3D's camera."""
    left, top, right, bottom = bbox
    side = right - left
    if side <= 0 or bottom - top != side:
        raise ValueError(f"bbox must be square (l, t, r, b), got {bbox}")
    return PerspectiveCamera(width=width, height=height, focal=REFERENCE_FOCAL * side / REFERENCE_SIZE,
                             cx=left + side / 2, cy=top + side / 2)


def celebv_camera(width: int, height: int) -> PerspectiveCamera:
    """A CelebV image's camera: principal point at the image centre, Deep3D's focal scaled to the short side."""
    return PerspectiveCamera(width=width, height=height, focal=REFERENCE_FOCAL * min(width, height) / REFERENCE_SIZE,
                             cx=width / 2, cy=height / 2)


# ---------------------------------------------------------------------------------------------------- ids
def item_rng(seed: int, preset: Preset, kind: int, index: int = 0) -> np.random.Generator:
    """The generator of one item (identity, video, CelebV sequence, name draw) of ``preset``'s world for ``seed``."""
    return np.random.default_rng([seed, zlib.crc32(preset.name.encode()), kind, index])


def youtube_like_id(rng: np.random.Generator) -> str:
    """An 11-character id over YouTube's alphabet (never starting with '-', which command lines read as a flag)."""
    first = _YOUTUBE_ALPHABET[rng.integers(0, 63)]
    return first + "".join(_YOUTUBE_ALPHABET[i] for i in rng.integers(0, 64, size=10))


def person_ids(rng: np.random.Generator, train: int, test: int) -> tuple[list[str], list[str]]:
    """Distinct VoxCeleb1-style person ids: test ones from id10270-id10309, train ones from the rest."""
    test_pool = np.arange(TEST_ID_RANGE[0], TEST_ID_RANGE[1] + 1)
    all_ids = np.arange(ALL_ID_RANGE[0], ALL_ID_RANGE[1] + 1)
    train_pool = all_ids[(all_ids < TEST_ID_RANGE[0]) | (all_ids > TEST_ID_RANGE[1])]
    pick = lambda pool, n: sorted(f"id{i}" for i in rng.choice(pool, size=n, replace=False))  # noqa: E731
    return pick(train_pool, train), pick(test_pool, test)


# ---------------------------------------------------------------------------------------------------- identity
def sample_gamma(rng: np.random.Generator) -> np.ndarray:
    """Mild SH lighting ``(27,)``: ambient offset, a key light from the front (and a bit above / to a side), small
    second-order terms, a slight colour tint. Deep3D adds 0.8 to every channel's first band."""
    light = np.zeros(9)
    light[0] = rng.uniform(-0.05, 0.12)
    light[1] = rng.uniform(-0.2, 0.02)        # -y band: positive light from above makes this negative
    light[2] = rng.uniform(0.15, 0.35)        # +z: from the camera side
    light[3] = rng.uniform(-0.2, 0.2)         # -x band: left / right
    light[4:] = rng.normal(0, 0.04, 5)
    light[0] += INIT_LIGHT                    # the total first band, tinted per channel below
    tint = 1 + rng.normal(0, 0.04, 3)
    gamma = light[None, :] * tint[:, None]    # 3 x 9, channel-major as Deep3D
    gamma[:, 0] -= INIT_LIGHT
    return gamma.reshape(27)


def sample_identity(rng: np.random.Generator, person_id: str, partition: str) -> Identity:
    hair = np.asarray(HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))]) * rng.uniform(0.85, 1.15, 3)
    cloth = rng.uniform(0.08, 0.75, 3) * rng.uniform(0.5, 1.0)
    return Identity(person_id=person_id, partition=partition,
                    id_coeffs=rng.normal(0, 0.8, 80), tex_coeffs=rng.normal(0, 1, 80) * TEX_SCALE,
                    gamma=sample_gamma(rng),
                    hair_rgb=np.clip(hair, 0, 1), cloth_rgb=cloth, hairline=rng.uniform(0.7, 0.95),
                    hair_length=rng.uniform(0.0, 1.0), hair_volume=rng.uniform(0.0, 0.12))


# ---------------------------------------------------------------------------------------------------- trajectories
def smooth_curves(rng: np.random.Generator, num_frames: int, count: int, max_hz: float, terms: int = 4
                  ) -> np.ndarray:
    """``(T, count)`` smooth curves that reach exactly +-1 at their extreme: sums of ``terms`` random sinusoids
    below ``max_hz`` (at 25 fps), each divided by its largest absolute value."""
    t = np.arange(num_frames)[:, None, None] / FPS                                     # T x 1 x 1
    freq = rng.uniform(0.05, max_hz, (terms, count))
    phase = rng.uniform(0, 2 * np.pi, (terms, count))
    amp = rng.uniform(0.5, 1.0, (terms, count)) / np.arange(1, terms + 1)[:, None]
    x = (amp * np.sin(2 * np.pi * freq * t + phase)).sum(1)                            # T x count
    return x / np.maximum(np.abs(x).max(0, keepdims=True), 1e-9)


def blink_curve(rng: np.random.Generator, num_frames: int, amplitude: float = 1.3) -> np.ndarray:
    """``(T,)`` eye-blink coefficient: ~0.1 s bumps at Poisson times (about one per 2.5 s, at least one)."""
    count = max(1, rng.poisson(num_frames / FPS / 2.5))
    centres = rng.uniform(2, max(num_frames - 2, 3), count)
    width = rng.uniform(1.3, 2.2, count)
    t = np.arange(num_frames)[:, None]
    return amplitude * np.exp(-(((t - centres) / width) ** 2)).max(1)


def speech_curve(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """``(T,)`` jaw opening: syllable-rate (3-5 Hz) openings under a slower envelope, in [0, ~1.6]."""
    syllables = np.abs(smooth_curves(rng, num_frames, 1, 5.0, terms=3)[:, 0])
    envelope = 0.7 + 0.3 * smooth_curves(rng, num_frames, 1, 0.6, terms=2)[:, 0]
    return 1.6 * syllables * envelope


def sample_expression(rng: np.random.Generator, num_frames: int) -> np.ndarray:
    """``(T, 64)`` expression coefficients (semantic components 0-4 as in the procedural model)."""
    exp = 0.35 * smooth_curves(rng, num_frames, 64, 1.0) * rng.uniform(0.3, 1.0, 64)
    slow = smooth_curves(rng, num_frames, 3, 0.4)
    exp[:, 0] = speech_curve(rng, num_frames)                                          # jaw_open
    exp[:, 1] = 0.45 + 0.75 * slow[:, 0] * rng.uniform(0.4, 1.0)                       # smile
    exp[:, 2] = blink_curve(rng, num_frames)                                           # blink
    exp[:, 3] = 0.8 * slow[:, 1] * rng.uniform(0.3, 1.0)                               # brow_raise
    exp[:, 4] = 0.5 * slow[:, 2] * rng.uniform(0.2, 1.0)                               # pucker
    return exp


def sample_pose(rng: np.random.Generator, num_frames: int, yaw_max_deg: float,
                depth_range: tuple[float, float] = (-4.6, -3.2), centre: tuple[float, float] = (0.0, -0.14),
                drift: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Angles ``(T, 3)`` (pitch, yaw, roll; radians) and translations ``(T, 3)`` (dm)."""
    curves = smooth_curves(rng, num_frames, 6, 0.25)
    yaw_amp = rng.uniform(0.45, 1.0) * yaw_max_deg
    pitch_amp, roll_amp = rng.uniform(4, 14), rng.uniform(2, 8)
    angles = np.deg2rad(np.stack([pitch_amp * curves[:, 0], yaw_amp * curves[:, 1], roll_amp * curves[:, 2]], -1))
    base = np.array([centre[0] + rng.uniform(-0.05, 0.05), centre[1] + rng.uniform(-0.05, 0.05),
                     rng.uniform(*depth_range)])
    trans = base + curves[:, 3:] * np.array([drift, drift, 0.12])
    return angles, trans


def frame_coeffs(identity: Identity, exp: np.ndarray, angles: np.ndarray, trans: np.ndarray) -> np.ndarray:
    """Stack per-frame ``(T, 257)`` float32 coefficients in the Deep3D layout."""
    coeffs = np.zeros((exp.shape[0], NUM_COEFFS), dtype=np.float64)
    coeffs[:, ID], coeffs[:, TEX], coeffs[:, GAMMA] = identity.id_coeffs, identity.tex_coeffs, identity.gamma
    coeffs[:, EXP], coeffs[:, ANGLE], coeffs[:, TRANS] = exp, angles, trans
    return coeffs.astype(np.float32)


# ---------------------------------------------------------------------------------------------------- layouts
def chunk_layout(rng: np.random.Generator, preset: Preset, two_chunks: bool) -> tuple[int, tuple[tuple[int, int], ...]]:
    """(video length, chunks): a short lead-in, one or two chunks separated by a small gap, a short tail."""
    lo, hi = preset.double_chunk_frames if two_chunks else preset.single_chunk_frames
    lengths = rng.integers(lo, hi + 1, size=2 if two_chunks else 1)
    start, chunks = int(rng.integers(0, 4)), []
    for length in lengths:
        chunks.append((start, start + int(length)))
        start += int(length) + int(rng.integers(2, 6))
    return chunks[-1][1] + int(rng.integers(0, 4)), tuple(chunks)


def sample_bbox(rng: np.random.Generator, preset: Preset) -> tuple[int, int, int, int]:
    """A square crop box inside the 640x360 frame, the head in the upper part (shoulders show below)."""
    side = int(rng.integers(preset.bbox_side[0], preset.bbox_side[1] + 1))
    left = int(rng.integers(40, VIDEO_WIDTH - side - 40 + 1))
    top = int(rng.integers(0, min(30, VIDEO_HEIGHT - side) + 1))
    return left, top, left + side, top + side


def sample_vox_video(seed: int, index: int, identity: Identity, preset: Preset) -> Sequence:
    rng = item_rng(seed, preset, _KIND_VIDEO, index)
    video_id = youtube_like_id(rng)
    two = index == 0 or rng.random() < preset.two_chunk_fraction
    num_frames, chunks = chunk_layout(rng, preset, two)
    bbox = sample_bbox(rng, preset)
    angles, trans = sample_pose(rng, num_frames, preset.yaw_max_deg)
    coeffs = frame_coeffs(identity, sample_expression(rng, num_frames), angles, trans)
    return Sequence(video_id=video_id, identity=identity, camera=vox_camera(bbox), coeffs=coeffs, chunks=chunks,
                    bbox=bbox, seed=int(rng.integers(2**31)))


def sample_celebv(seed: int, index: int, preset: Preset) -> Sequence:
    """One CelebV identity: ``celebv_images`` frames, every ``celebv_step``-th of a smooth 25 fps sequence."""
    name = CELEBV_NAMES[index]
    rng = item_rng(seed, preset, _KIND_CELEBV, index)
    identity = sample_identity(rng, name, "test")
    lo, hi = preset.celebv_size
    width, height = (int(rng.integers(lo // 8, hi // 8 + 1)) * 8 for _ in range(2))
    length = preset.celebv_images * preset.celebv_step
    angles, trans = sample_pose(rng, length, min(preset.yaw_max_deg, 35.0), depth_range=(-6.5, -4.5),
                                centre=(rng.uniform(-0.35, 0.35), rng.uniform(-0.25, 0.35)), drift=0.12)
    coeffs = frame_coeffs(identity, sample_expression(rng, length), angles, trans)[::preset.celebv_step]
    return Sequence(video_id=name, identity=identity, camera=celebv_camera(width, height), coeffs=coeffs, chunks=(),
                    bbox=None, seed=int(rng.integers(2**31)), dataset="celebv")


def sample_world(preset: Preset | str, seed: int = 0) -> World:
    """The whole world of ``preset`` for ``seed``: identities, VoxCeleb-style videos, CelebV sequences."""
    preset = get_preset(preset) if isinstance(preset, str) else preset
    if preset.train_identities < 1 or preset.test_identities < 1 or preset.videos < 2:
        raise ValueError(f"a preset needs train and test identities and at least 2 videos, got {preset}")
    train, test = person_ids(item_rng(seed, preset, _KIND_NAMES), preset.train_identities,
                             preset.test_identities)
    identities = tuple(sample_identity(item_rng(seed, preset, _KIND_IDENTITY, i), pid, part)
                       for i, (pid, part) in enumerate([(p, "train") for p in train] + [(p, "test") for p in test]))
    videos = tuple(sample_vox_video(seed, i, identities[i % len(identities)], preset) for i in range(preset.videos))
    celebv = tuple(sample_celebv(seed, i, preset) for i in range(len(CELEBV_NAMES)))
    return World(preset=preset, seed=seed, identities=identities, videos=videos, celebv=celebv)


def yaw_degrees(seq: Sequence) -> np.ndarray:
    """``(T,)`` yaw of each frame in degrees (for reports)."""
    return np.rad2deg(seq.coeffs[:, ANGLE.start + 1].astype(np.float64))

