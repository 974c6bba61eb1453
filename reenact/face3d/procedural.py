"""A procedural morphable model with the structure of Deep3DFaceRecon's BFM (80 id, 64 exp, 80 tex components).

BFM09 is licence-gated, so the suite ships a face model built by code. It is a triangulated grid over an
egg-shaped face mask (``u, v`` in the unit disc, v up), lifted to a dome with a nose, eye sockets, brows, lips and
chin, in decimetres like the BFM. Its bases are smooth displacement / colour fields; the first components are
semantic so the synthetic world can animate them:

* expression 0 ``jaw_open`` (lower lip and chin move down, opening the dark mouth slit), 1 ``smile``,
  2 ``blink`` (upper eyelids close over the dark eyes), 3 ``brow_raise``, 4 ``pucker``; the rest are random
  local fields of decreasing magnitude.
* identity 0-3: face width, face length, depth, nose size; then random low-frequency fields in mirror pairs
  (symmetric part, smaller antisymmetric part), so ``N(0, I)`` identities are as likely as their mirror images.
* texture 0-4: skin brightness, redness, tan, brow darkness, lip colour; then 55 luminance cosine fields
  (lowest spatial frequency first) and 2 x 10 chroma ones: a full-rank basis of smooth colour fields.

Coefficients are meant to be roughly N(0, 1), like Deep3D's. Landmarks sit at the iBUG-68 semantic places
(jaw outline, brows, nose, eyes, mouth). The model is deterministic: it depends on nothing but ``size``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from reenact.face3d.morphable import NUM_EXP, NUM_ID, NUM_TEX, MorphableModel, adjacent_triangles, recenter

#: grid side per size: full ~ 35.7k vertices / 70.7k triangles (like the BFM front face), small for tests.
GRID_SIDES = {"full": 189, "small": 41, "tiny": 17}
HALF_WIDTH, HALF_HEIGHT, DEPTH = 0.78, 1.05, 0.62
EXPRESSION_NAMES = ("jaw_open", "smile", "blink", "brow_raise", "pucker")
EYE_CENTERS = ((-0.36, 0.22), (0.36, 0.22))
#: texture components after the 5 semantic ones: luminance cosine fields, then two chroma directions of the
#: lowest ones (5 + 55 + 2 x 10 = 80)
TEX_CHROMA = 10
TEX_LUMA = NUM_TEX - 5 - 2 * TEX_CHROMA
MOUTH_V = -0.45


def _gauss(u, v, cu, cv, su, sv):
    return np.exp(-(((u - cu) / su) ** 2) - (((v - cv) / sv) ** 2))


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60, 60)))


def grid_uv(side: int) -> np.ndarray:
    """``(side*side, 2)`` (u, v) points in the unit disc, row-major from the top-left (v = +1) of the square."""
    t, s = np.meshgrid(np.linspace(1, -1, side), np.linspace(-1, 1, side), indexing="ij")
    u = s * np.sqrt(1 - t**2 / 2)   # square -> disc (elliptical grid mapping)
    v = t * np.sqrt(1 - s**2 / 2)
    return np.stack([u.ravel(), v.ravel()], -1) * 0.985


def grid_triangles(side: int) -> np.ndarray:
    """Two counter-clockwise (seen from +z) triangles per grid cell: ``(2 (side-1)^2, 3)``."""
    r, c = np.meshgrid(np.arange(side - 1), np.arange(side - 1), indexing="ij")
    a, b = r * side + c, r * side + c + 1
    cc, d = a + side, b + side
    return np.concatenate([np.stack([a, cc, b], -1).reshape(-1, 3), np.stack([b, cc, d], -1).reshape(-1, 3)])


def _ridge_nose(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Height of the nose over the dome: a narrow ridge as high at the brows as at the tip, and the tip."""
    return (0.2 * np.exp(-((u / 0.07) ** 2)) * _sigmoid((0.32 - v) / 0.05) * _sigmoid((v + 0.2) / 0.03)
            + 0.1 * _gauss(u, v, 0, -0.14, 0.11, 0.08))


def _mean_shape(u: np.ndarray, v: np.ndarray, nose=_ridge_nose) -> np.ndarray:
    width = HALF_WIDTH * (1 - 0.2 * np.clip(-v, 0, 1) ** 2)
    dome = DEPTH * np.clip(1 - u**2 - v**2, 0, 1) ** 0.45
    sockets = sum(-0.07 * _gauss(u, v, cu, cv, 0.14, 0.09) for cu, cv in EYE_CENTERS)
    brows = sum(0.035 * _gauss(u, v, cu, 0.37, 0.2, 0.05) for cu, _ in EYE_CENTERS)
    lips = 0.04 * _gauss(u, v, 0, MOUTH_V, 0.22, 0.09) + 0.05 * _gauss(u, v, 0, -0.85, 0.25, 0.12)
    cheeks = sum(0.04 * _gauss(u, v, cu, -0.05, 0.2, 0.15) for cu in (-0.5, 0.5))
    z = dome + nose(u, v) + sockets + brows + lips + cheeks
    return np.stack([width * u, HALF_HEIGHT * v, z], -1)


def _eye_weight(u, v):
    return sum(_gauss(u, v, cu, cv, 0.15, 0.08) for cu, cv in EYE_CENTERS)


def _expression_fields(u: np.ndarray, v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``(64, V, 3)`` displacements per unit coefficient (decimetres)."""
    zero = np.zeros_like(u)
    below_mouth = _sigmoid((MOUTH_V - v) / 0.012) * np.exp(-(u / 0.55) ** 2)
    jaw = np.stack([zero, -0.05 * below_mouth, -0.015 * below_mouth], -1)
    corners = [_gauss(u, v, cu, MOUTH_V, 0.12, 0.09) for cu in (-0.28, 0.28)]
    smile = np.stack([0.02 * (corners[1] - corners[0]), 0.022 * (corners[0] + corners[1]), zero], -1)
    upper_lid = _eye_weight(u, v) * _sigmoid((v - 0.2) / 0.012)
    blink = np.stack([zero, -0.045 * upper_lid, zero], -1)
    brow = sum(_gauss(u, v, cu, 0.4, 0.22, 0.1) for cu, _ in EYE_CENTERS)
    brow_raise = np.stack([zero, 0.025 * brow, 0.004 * brow], -1)
    mouth = _gauss(u, v, 0, MOUTH_V, 0.3, 0.12)
    pucker = np.stack([-0.05 * u * mouth, zero, 0.02 * mouth], -1)
    fields = [jaw, smile, blink, brow_raise, pucker]
    for k in range(len(fields), NUM_EXP):
        cu, cv = rng.uniform(-0.6, 0.6), rng.uniform(-0.7, 0.5)
        w = _gauss(u, v, cu, cv, rng.uniform(0.1, 0.3), rng.uniform(0.1, 0.3))
        fields.append(0.012 * (k + 1) ** -0.5 * w[..., None] * rng.normal(size=3))
    return np.stack(fields)


MAX_FREQ = 3
#: amplitude of the identity's antisymmetric random fields relative to the symmetric ones (faces are nearly
#: symmetric). With 1, short chunks of real clips traded asymmetric identity for yaw: 8-frame chunks of tpsmm_driving
#: differed from the whole clip by p90 3.5 deg (2.96 with 0.5, 2.35 with 0.3); the tiny world's oracle-landmark
#: rotation error stays 0.67-0.70 deg.
ASYMMETRY = 0.3
SMOOTH_FREQS = [(a, b) for a in range(MAX_FREQ + 1) for b in range(MAX_FREQ + 1)]


def _cosines(u: np.ndarray, v: np.ndarray, freqs) -> np.ndarray:
    """``(F, V)`` the cosine fields ``cos(pi a (u + 1) / 2) cos(pi b (v + 1) / 2)`` over the face's square, one per
    frequency ``(a, b)``; the mirror ``u -> -u`` multiplies field ``(a, b)`` by ``(-1)^a``."""
    return np.stack([np.cos(np.pi * a * (u + 1) / 2) * np.cos(np.pi * b * (v + 1) / 2) for a, b in freqs])


def _mirror_paired_fields(u: np.ndarray, v: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """``(count, V, 3)`` (count even) random low-frequency displacement fields in mirror pairs: from ``count / 2``
    random fields ``d``, the symmetric and antisymmetric parts ``(d +- mirror(d)) / sqrt(2)``, where
    ``mirror(d)(u, v) = (-d_x, d_y, d_z)(-u, v)``, the antisymmetric one scaled by :data:`ASYMMETRY`. The mirror
    image of a face then has the same coefficients with the antisymmetric ones negated, so ``N(0, I)`` over them is
    a mirror-symmetric population and ``|alpha|^2`` a mirror-symmetric prior. (``count`` fields are drawn, as
    before the pairing, so later draws of the generator are unchanged.)"""
    weights = rng.normal(size=(count, len(SMOOTH_FREQS), 3))[: count // 2] / np.sqrt(len(SMOOTH_FREQS))
    parity = np.array([(-1.0) ** a for a, _ in SMOOTH_FREQS])[:, None] * np.array([-1.0, 1.0, 1.0])
    mirrored = weights * parity                                                  # weights of mirror(d)
    pairs = np.stack([weights + mirrored, (weights - mirrored) * ASYMMETRY], 1).reshape(count, len(SMOOTH_FREQS), 3)
    return np.einsum("fv,kfc->kvc", _cosines(u, v, SMOOTH_FREQS), pairs / np.sqrt(2))


def _identity_fields(u, v, xyz, rng) -> np.ndarray:
    """``(80, V, 3)`` identity displacements per unit coefficient: four symmetric semantic fields, then random
    low-frequency fields in mirror pairs (:func:`_mirror_paired_fields`: symmetric, antisymmetric, ...)."""
    zero = np.zeros_like(u)
    nose = np.exp(-((u / 0.12) ** 2)) * _sigmoid((0.3 - v) / 0.05) * _sigmoid((v + 0.25) / 0.03)
    semantic = [np.stack([0.06 * xyz[:, 0], zero, zero], -1),        # width
                np.stack([zero, 0.06 * xyz[:, 1], zero], -1),        # length
                np.stack([zero, zero, 0.12 * xyz[:, 2]], -1),        # depth
                np.stack([zero, zero, 0.06 * nose], -1)]             # nose size
    rest = _mirror_paired_fields(u, v, rng, NUM_ID - len(semantic))
    scale = 0.03 * (np.arange(len(rest)) // 2 * 2 + 2.0) ** -0.7      # the same scale for both fields of a pair
    return np.concatenate([np.stack(semantic), rest * scale[:, None, None]])


def _paint_oval_eye(u, v, cu, cv, paint, skin):
    """Paint one eye at ``(cu, cv)`` with ``paint(weight, colour)``: a white oval, a small dark iris, a lid line."""
    eye = ((u - cu) / 0.15) ** 2 + ((v - cv) / 0.055) ** 2
    paint(_sigmoid((1 - eye) / 0.08), (235, 232, 225))                                               # sclera
    paint(_sigmoid((1 - ((u - cu) ** 2 + (v - cv) ** 2) / 0.045**2) / 0.1), (40, 28, 22))            # iris
    paint(0.6 * _sigmoid((1.25 - eye) / 0.05) * _sigmoid((eye - 0.95) / 0.05), (95, 60, 50))         # lid line


def _mean_texture(u: np.ndarray, v: np.ndarray, paint_eye=_paint_oval_eye) -> np.ndarray:
    """``(V, 3)`` albedo in [0, 255]: skin, dark brows, eyes (``paint_eye``), red lips, dark mouth slit."""
    skin = np.array([200.0, 150.0, 122.0])
    tex = np.tile(skin, (len(u), 1))

    def paint(weight, colour):
        nonlocal tex
        w = np.clip(weight, 0, 1)[:, None]
        tex = tex * (1 - w) + np.asarray(colour, float) * w

    paint(0.25 * sum(_gauss(u, v, cu, -0.12, 0.16, 0.12) for cu in (-0.45, 0.45)), (215, 120, 110))   # cheeks
    for cu, cv in EYE_CENTERS:
        paint(1.6 * _gauss(u, v, cu, 0.385, 0.17, 0.03) * (np.abs(u - cu) < 0.2), (45, 30, 25))      # brows
        paint_eye(u, v, cu, cv, paint, skin)
    lips = ((u / 0.3) ** 2 + ((v - MOUTH_V) / 0.1) ** 2)
    paint(_sigmoid((1 - lips) / 0.1), (175, 75, 78))
    paint(_sigmoid((1 - ((u / 0.26) ** 2 + ((v - MOUTH_V) / 0.014) ** 2)) / 0.1), (45, 12, 14))       # slit
    paint(sum(0.8 * _gauss(u, v, cu, -0.2, 0.035, 0.025) for cu in (-0.07, 0.07)), (80, 45, 40))      # nostrils
    return tex


def _texture_fields(u, v) -> np.ndarray:
    """``(80, V, 3)`` albedo offsets per unit coefficient, in [0, 255] units."""
    one = np.ones_like(u)
    brows = sum(_gauss(u, v, cu, 0.385, 0.17, 0.03) for cu, _ in EYE_CENTERS)
    lips = _gauss(u, v, 0, MOUTH_V, 0.25, 0.08)
    semantic = [np.stack([one, one, one], -1) * 25, np.stack([one, -0.3 * one, -0.3 * one], -1) * 12,
                np.stack([one, 0.4 * one, -0.6 * one], -1) * 12, -brows[:, None] * np.array([20.0, 14, 10]),
                lips[:, None] * np.array([25.0, -10, -5])]
    grey, red_green, yellow_blue = np.ones(3) / np.sqrt(3), np.array([1.0, -1, 0]) / np.sqrt(2), np.array(
        [1.0, 1, -2]) / np.sqrt(6)
    rest = [12.0 * _decaying(_cosine_fields(u, v, TEX_LUMA))[..., None] * grey]
    rest += [8.0 * _decaying(_cosine_fields(u, v, TEX_CHROMA))[..., None] * direction
             for direction in (red_green, yellow_blue)]
    return np.concatenate([np.stack(semantic), *rest])


def _decaying(fields: np.ndarray) -> np.ndarray:
    """``fields`` ``(n, V)`` scaled by ``(k + 2)^-0.6``: higher-frequency components vary less."""
    return fields * (np.arange(len(fields)) + 2.0)[:, None] ** -0.6


def _cosine_fields(u: np.ndarray, v: np.ndarray, count: int) -> np.ndarray:
    """``(count, V)`` :func:`_cosines`, lowest frequency ``a^2 + b^2`` first, the constant left out: an orthogonal
    basis of the smooth fields (like a DCT)."""
    side = int(np.ceil(np.sqrt(count + 1))) + 2
    freqs = sorted(((a, b) for a in range(side) for b in range(side)), key=lambda f: (f[0] ** 2 + f[1] ** 2, f))
    return _cosines(u, v, freqs[1:count + 1])


def _flat(fields: np.ndarray) -> torch.Tensor:
    """``(k, V, 3)`` -> Deep3D's interleaved ``(3V, k)`` float32, subnormals flushed to zero.

    The Gaussian tails of the fields underflow to float32 subnormals (165k entries of the full model's expression
    basis). x86 CPUs multiply those through microcode assists, which made every product with the bases several
    times slower (Eq. 1's expression part 5x at 16 rows); a measured model's PCA bases have none. Each contributes
    under 1e-37 to a vertex: zero is the same model.
    """
    flat = np.ascontiguousarray(fields.reshape(fields.shape[0], -1).T, dtype=np.float32)
    flat[np.abs(flat) < np.finfo(np.float32).tiny] = 0.0
    return torch.from_numpy(flat)


#: ``(68, 2)`` (u, v) of the iBUG-68 landmarks on the face mask (each maps to the nearest grid vertex), in dlib's
#: order (reenact/faces/landmarks68.py: "left" = image left). Calibrated against dlib's
#: ``shape_predictor_68_face_landmarks`` by perf/calibrate_landmarks.py (defaults: 8 identities x 4 renders of the
#: synthetic world in the vox crop camera, |yaw| <= 15 deg, neutral-ish expressions; the mean (u, v) under dlib's
#: points, mirror-symmetrised, rounded): dlib's jaw line runs up the mask border to about eye level and its eye
#: points sit a little above the painted eyes.
LANDMARKS_UV = np.array([
    # jaw 0-16
    (-0.924, 0.250), (-0.940, 0.070), (-0.925, -0.125), (-0.887, -0.314), (-0.811, -0.493), (-0.689, -0.653),
    (-0.511, -0.790), (-0.288, -0.898), (0.000, -0.925), (0.288, -0.898), (0.511, -0.790), (0.689, -0.653),
    (0.811, -0.493), (0.887, -0.314), (0.925, -0.125), (0.940, 0.070), (0.924, 0.250),
    # brows 17-26
    (-0.642, 0.386), (-0.514, 0.426), (-0.384, 0.439), (-0.253, 0.425), (-0.131, 0.392), (0.131, 0.392),
    (0.253, 0.425), (0.384, 0.439), (0.514, 0.426), (0.642, 0.386),
    # nose 27-35
    (0.000, 0.245), (0.000, 0.132), (0.000, 0.019), (0.000, -0.102), (-0.132, -0.193), (-0.069, -0.214),
    (0.000, -0.229), (0.069, -0.214), (0.132, -0.193),
    # eyes 36-47
    (-0.489, 0.255), (-0.404, 0.316), (-0.278, 0.309), (-0.204, 0.226), (-0.298, 0.198), (-0.416, 0.205),
    (0.204, 0.226), (0.278, 0.309), (0.404, 0.316), (0.489, 0.255), (0.416, 0.205), (0.298, 0.198),
    # mouth 48-67
    (-0.285, -0.468), (-0.191, -0.392), (-0.077, -0.353), (0.000, -0.365), (0.077, -0.353), (0.191, -0.392),
    (0.285, -0.468), (0.203, -0.548), (0.092, -0.584), (0.000, -0.590), (-0.092, -0.584), (-0.203, -0.548),
    (-0.231, -0.466), (-0.079, -0.428), (0.000, -0.430), (0.079, -0.428), (0.231, -0.466), (0.082, -0.496),
    (0.000, -0.501), (-0.082, -0.496),
])


#: ``(68, 3)`` where dlib puts its points relative to the landmark vertices, in the model frame (decimetres; the
#: landmark fit adds them, :class:`reenact.faces.landmark_fit.FitConfig` ``landmark_offsets``). Triangulated by
#: ``perf/calibrate_landmarks.py --offsets`` from dlib's points on the tiny synthetic world's videos of seeds 0, 2-11
#: (1,030 frames, |yaw| up to 45 deg, true poses known; linear least squares per landmark, symmetrised). Only the
#: nose is kept: dlib's nose-ridge points sit ~1.2 cm behind the procedural ridge (they move ~25 % less sideways with
#: yaw). Held out (seed 1 / seeds 12-19) the fit's rotation error median goes 6.88 -> 6.73 / 6.22 -> 6.12 deg. The
#: other groups' offsets did not help the held-out median (every group: seed 1 6.88 -> 6.80, p90 27.6 -> 17.6, better
#: at large yaw) and did not carry over to real clips: the jaw's (dlib's jaw on renders follows the head shell or the
#: backdrop) moved tpsmm_driving's 64-frame chunks by p90 3.55 deg from the whole clip, beyond issue 12's 3.
LANDMARK_OFFSETS = np.zeros((68, 3))
LANDMARK_OFFSETS[27:36] = [   # nose
    (0.000, 0.014, -0.123), (0.000, -0.001, -0.122), (0.000, -0.006, -0.091), (0.000, -0.002, -0.119),
    (-0.013, 0.012, 0.019), (-0.006, -0.004, 0.000), (0.000, -0.001, -0.006), (0.006, -0.004, 0.000),
    (0.013, 0.012, 0.019),
]


@lru_cache(maxsize=4)
def procedural_model(size: str = "full") -> MorphableModel:
    """Build the procedural model: ``full`` (189^2 = 35,721 vertices, 70,688 triangles), ``small`` or ``tiny``."""
    if size not in GRID_SIDES:
        raise ValueError(f"unknown procedural model size {size!r}; choose from {sorted(GRID_SIDES)}")
    side = GRID_SIDES[size]
    rng = np.random.default_rng(20230207)
    uv = grid_uv(side)
    u, v = uv[:, 0], uv[:, 1]
    xyz = _mean_shape(u, v)
    triangles = grid_triangles(side)
    landmark_ids = np.argmin(((uv[None] - LANDMARKS_UV[:, None]) ** 2).sum(-1), axis=1)
    return MorphableModel(
        mean_shape=torch.from_numpy(recenter(xyz)),
        id_base=_flat(_identity_fields(u, v, xyz, rng)),
        exp_base=_flat(_expression_fields(u, v, rng)),
        mean_tex=torch.from_numpy(_mean_texture(u, v).astype(np.float32)),
        tex_base=_flat(_texture_fields(u, v)),
        triangles=torch.from_numpy(triangles.astype(np.int64)),
        vertex_triangles=torch.from_numpy(adjacent_triangles(triangles, len(uv))),
        landmark_indices=torch.from_numpy(landmark_ids.astype(np.int64)),
        name=f"procedural-{size}", landmark_offsets=torch.from_numpy(LANDMARK_OFFSETS.astype(np.float32)))
