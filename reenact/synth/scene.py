"""The synthetic scene: the 3DMM face plus the regions it does not model, rendered in one z-buffer.

Model space as in :mod:`reenact.face3d.camera` (x right, y up, z towards the camera, decimetres). Besides the face
mask of the morphable model, each identity gets three (super)ellipsoid meshes built in model space:

* a head shell (hair on top / at the back, skin on the lower sides), placed behind the face mask and pushed behind
  the identity's neutral face wherever it falls inside the face's footprint, so it frames the face without covering
  it;
* a neck and shoulders (clothes) below.

Every frame poses all of them with the frame's rotation and translation (the same ``V @ R^T + t`` as the face, so
they move rigidly with the head; the face itself through the one face renderer :func:`reenact.face3d.face.build_face`),
lights them with the frame's SH ``gamma`` (:func:`reenact.face3d.shading.shade`),
rasterizes face and body together (:func:`reenact.face3d.raster.rasterize`, one z-buffer; triangle ids below the
face's triangle count are the face) and composites the result over a static textured background.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import Coeffs
from reenact.face3d.face import FaceMesh, build_face
from reenact.face3d.morphable import MorphableModel
from reenact.face3d.raster import RasterSettings, interpolate, rasterize
from reenact.face3d.shading import shade
from reenact.face3d.transforms import rigid_transform


@dataclass(frozen=True, eq=False)
class Mesh:
    """A static mesh in model space: verts / normals ``(V, 3)`` float32, faces ``(F, 3)`` int64 (outward,
    counter-clockwise seen from outside), albedo ``(V, 3)`` in [0, 1]."""

    verts: torch.Tensor
    normals: torch.Tensor
    faces: torch.Tensor
    albedo: torch.Tensor

    @property
    def num_vertices(self) -> int:
        return self.verts.shape[0]


def concat_meshes(meshes: list[Mesh]) -> Mesh:
    offsets = np.cumsum([0] + [m.num_vertices for m in meshes[:-1]])
    return Mesh(verts=torch.cat([m.verts for m in meshes]), normals=torch.cat([m.normals for m in meshes]),
                faces=torch.cat([m.faces + int(o) for m, o in zip(meshes, offsets)]),
                albedo=torch.cat([m.albedo for m in meshes]))


# ---------------------------------------------------------------------------------------------------- primitives
def _signed_power(x: np.ndarray, e: float) -> np.ndarray:
    return np.sign(x) * np.abs(x) ** e


def _arc_uniform(curve, lo: float, hi: float, spacing: float) -> np.ndarray:
    """Parameters in [lo, hi] whose points on ``curve(t) -> (n, 2)`` are about ``spacing`` apart (ends included)."""
    t = np.linspace(lo, hi, 4001)
    length = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(curve(t), axis=0), axis=1))])
    count = max(2, int(np.ceil(length[-1] / spacing)) + 1)
    return np.interp(np.linspace(0, length[-1], count), length, t)


def superellipsoid(center, radii, exponent: float = 2.0, spacing: float = 0.035,
                   lat_range: tuple[float, float] = (-90.0, 90.0), lon_range: tuple[float, float] = (-180.0, 180.0)
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A latitude-longitude patch of the superellipsoid ``|x/a|^p + |y/b|^p + |z/c|^p = 1`` (p = ``exponent``).

    Latitude (degrees, +90 = top) and longitude (degrees, 0 faces +z, the camera; +90 is +x) are sampled so that
    neighbouring vertices are about ``spacing`` dm apart on the widest ring / profile (0.035 dm is ~4 px at the
    synthetic cameras' largest scale, ~125 px/dm: finer meshes cost more triangles than they save). A full
    longitude range wraps around; a latitude range reaching +-90 closes with a pole vertex. Returns (verts
    ``(V, 3)``, outward normals ``(V, 3)``, faces ``(F, 3)``, (latitude, longitude) in radians ``(V, 2)``).
    """
    e, (a, b, c) = 2.0 / exponent, np.asarray(radii, float)
    width = max(a, c)
    lat = _arc_uniform(lambda t: np.stack([width * _signed_power(np.cos(t), e), b * _signed_power(np.sin(t), e)],
                                          -1), *np.deg2rad(lat_range), spacing)
    lon = _arc_uniform(lambda t: np.stack([a * _signed_power(np.sin(t), e), c * _signed_power(np.cos(t), e)], -1),
                       *np.deg2rad(lon_range), spacing)
    wrap = lon_range[1] - lon_range[0] >= 360.0
    lon = lon[:-1] if wrap else lon
    poles = (lat[0] <= -np.pi / 2 + 1e-9, lat[-1] >= np.pi / 2 - 1e-9)
    rings = lat[int(poles[0]):len(lat) - int(poles[1])]
    la, lo = np.meshgrid(rings, lon, indexing="ij")                                # rows x cols
    angles = np.stack([la.ravel(), lo.ravel()], -1)
    angles = np.concatenate([angles] + [[[sign * np.pi / 2, 0.0]] for sign, pole in zip((-1, 1), poles) if pole])
    c_la, s_la, c_lo, s_lo = np.cos(angles[:, 0]), np.sin(angles[:, 0]), np.cos(angles[:, 1]), np.sin(angles[:, 1])
    unit = np.stack([_signed_power(c_la, e) * _signed_power(s_lo, e), _signed_power(s_la, e),
                     _signed_power(c_la, e) * _signed_power(c_lo, e)], -1)
    verts = np.asarray(center, float) + unit * (a, b, c)
    normals = np.sign(unit) * np.abs(unit) ** (exponent - 1) / (a, b, c)         # gradient of the implicit
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    return verts, normals, _grid_faces(len(rings), len(lon), wrap, poles), angles


def _grid_faces(rows: int, cols: int, wrap: bool, poles: tuple[bool, bool]) -> np.ndarray:
    """Triangles of a rows x cols latitude-longitude grid (wrapping in longitude if ``wrap``), plus fans to the
    (bottom, top) pole vertices that follow the grid when ``poles`` says so."""
    span = cols if wrap else cols - 1
    r, c = np.meshgrid(np.arange(rows - 1), np.arange(span), indexing="ij")
    a, b = r * cols + c, r * cols + (c + 1) % cols
    up_a, up_b = a + cols, b + cols
    faces = [np.stack([a, b, up_a], -1).reshape(-1, 3), np.stack([b, up_b, up_a], -1).reshape(-1, 3)]
    ring, pole = np.arange(span), rows * cols
    if poles[0]:
        faces.append(np.stack([np.full(span, pole), (ring + 1) % cols, ring], -1))
        pole += 1
    if poles[1]:
        top = (rows - 1) * cols
        faces.append(np.stack([np.full(span, pole), top + ring, top + (ring + 1) % cols], -1))
    return np.concatenate(faces).astype(np.int64)


def orient_outward(verts: np.ndarray, faces: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Flip triangles whose geometric normal disagrees with their vertices' mean normal."""
    v0, v1, v2 = (verts[faces[:, k]] for k in range(3))
    flip = (np.cross(v1 - v0, v2 - v0) * normals[faces].sum(1)).sum(1) < 0
    out = faces.copy()
    out[flip] = out[flip][:, [0, 2, 1]]
    return out


def _mesh(verts, normals, faces, albedo) -> Mesh:
    faces = orient_outward(verts, faces, normals)
    as_f = lambda a: torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)  # noqa: E731
    return Mesh(verts=as_f(verts), normals=as_f(normals), faces=torch.as_tensor(faces, dtype=torch.int64),
                albedo=as_f(np.clip(albedo, 0, 1)))


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


# ---------------------------------------------------------------------------------------------------- the body
#: Longitudes (degrees) the body meshes keep: with |yaw| <= 45 deg the camera sees at most +-(90 + 45 + 5).
VISIBLE_LONGITUDES = (-145.0, 145.0)
@dataclass(frozen=True)
class FaceFrame:
    """Extents of a neutral face in model space: half width, top, bottom, rim depth (dm)."""

    half_width: float
    top: float
    bottom: float
    rim_z: float


def face_frame(neutral: np.ndarray) -> FaceFrame:
    """Measure a neutral face ``(V, 3)``: the rim depth is the mean z of its outermost 5 % (in x-y)."""
    xy = neutral[:, :2]
    radius = np.hypot(xy[:, 0] / np.abs(xy[:, 0]).max(), xy[:, 1] / np.abs(xy[:, 1]).max())
    rim = radius >= np.quantile(radius, 0.95)
    return FaceFrame(half_width=float(np.abs(xy[:, 0]).max()), top=float(xy[:, 1].max()),
                     bottom=float(xy[:, 1].min()), rim_z=float(neutral[rim, 2].mean()))


def push_behind_face(verts: np.ndarray, neutral: np.ndarray, margin: float = 0.05, slope: float = 0.7
                     ) -> np.ndarray:
    """Move ``verts (N, 3)`` behind the face ``neutral (V, 3)``: below the envelope ``z_n - margin - slope * d``,
    where ``z_n`` is the depth of the nearest face vertex in x-y and ``d`` its x-y distance. Inside the footprint
    that is the face surface; outside it falls away from the rim, so the result stays a smooth height field as
    seen from the front (no folds)."""
    from scipy.spatial import cKDTree

    dist, nearest = cKDTree(neutral[:, :2]).query(verts[:, :2])
    out = verts.copy()
    out[:, 2] = np.minimum(verts[:, 2], neutral[nearest, 2] - margin - slope * dist)
    return out


def head_shell(neutral: np.ndarray, hair_rgb, skin_rgb, hairline: float, hair_length: float, volume: float,
               seed: int) -> Mesh:
    """The head behind the face mask: an ellipsoid meeting the face rim, hair above the hairline, skin below."""
    ff = face_frame(neutral)
    a, b, c = ff.half_width * 1.18 + volume, 1.24 + volume, ff.half_width * 1.3 + volume
    yc = 0.18 + 0.5 * volume
    side = np.sqrt(max(1 - (ff.half_width / a) ** 2 - (yc / b) ** 2, 0.05))        # ellipsoid depth at the rim
    zc = ff.rim_z - 0.03 - c * side
    verts, normals, faces, angles = superellipsoid((0.0, yc, zc), (a, b, c), 2.0, lon_range=VISIBLE_LONGITUDES)
    verts[:, 0] *= 1 - 0.3 * _smoothstep((yc - verts[:, 1]) / b)                  # narrower towards the jaw
    verts = push_behind_face(verts, neutral)
    around = np.abs(angles[:, 1]) / np.pi                                          # 0 in front, 1 at the back
    hair_edge = np.interp(around, [0.0, 0.25, 0.5, 1.0], [hairline, hairline - 0.3, -0.25 - 0.45 * hair_length,
                                                         -0.5 - 0.6 * hair_length])
    hair = _smoothstep((verts[:, 1] - hair_edge) / 0.08 + 0.5)[:, None]
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi)
    lon = angles[:, 1:2]
    strands = 1 + 0.15 * np.sin(37 * lon + 5 * np.sin(9 * lon) + phase)
    albedo = hair * np.asarray(hair_rgb) * strands + (1 - hair) * np.asarray(skin_rgb)
    return _mesh(verts, normals, faces, albedo)


def neck_and_shoulders(ff: FaceFrame, zc: float, skin_rgb, cloth_rgb) -> Mesh:
    """A neck (upright ellipsoid under the chin) and shoulders in clothes (the upper front of a flat
    superellipsoid: its lower half is always below the frame, its back always hidden)."""
    neck_v, neck_n, neck_f, _ = superellipsoid((0.0, ff.bottom - 0.45, zc + 0.12),
                                               (0.6 * ff.half_width, 0.85, 0.55 * ff.half_width), 2.0,
                                               lon_range=VISIBLE_LONGITUDES)
    body_v, body_n, body_f, _ = superellipsoid((0.0, ff.bottom - 1.45, zc - 0.05), (2.6 * ff.half_width, 0.8, 1.0),
                                               3.0, lat_range=(-25.0, 90.0), lon_range=VISIBLE_LONGITUDES)
    neck = _mesh(neck_v, neck_n, neck_f, np.tile(np.asarray(skin_rgb) * 0.95, (len(neck_v), 1)))
    body = _mesh(body_v, body_n, body_f, np.tile(np.asarray(cloth_rgb), (len(body_v), 1)))
    return concat_meshes([neck, body])


def body_mesh(model: MorphableModel, id_coeffs: torch.Tensor, tex_coeffs: torch.Tensor, hair_rgb, cloth_rgb,
              hairline: float, hair_length: float, volume: float, seed: int) -> Mesh:
    """Head shell + neck + shoulders of one identity (``id_coeffs``, ``tex_coeffs`` of shape ``(80,)``)."""
    with torch.no_grad():
        neutral = model.shape(id_coeffs.float(), torch.zeros(model.exp_base.shape[1])).double().numpy()
        skin = np.median(model.albedo(tex_coeffs.float()).numpy(), axis=0)
    shell = head_shell(neutral, hair_rgb, skin, hairline, hair_length, volume, seed)
    ff = face_frame(neutral)
    zc = float(shell.verts[:, 2].min() + shell.verts[:, 2].max()) / 2
    return concat_meshes([shell, neck_and_shoulders(ff, zc, skin, cloth_rgb)])


# ---------------------------------------------------------------------------------------------------- background
def _upsampled_noise(rng: np.random.Generator, channels: int, grid: tuple[int, int], size: tuple[int, int]
                     ) -> torch.Tensor:
    """``(channels, H, W)`` smooth noise: a random ``grid`` bicubically upsampled to ``size``."""
    coarse = torch.from_numpy(rng.normal(size=(1, channels, *grid)).astype(np.float32))
    return F.interpolate(coarse, size=size, mode="bicubic", align_corners=False)[0]


def background(rng: np.random.Generator, height: int, width: int) -> torch.Tensor:
    """A static textured background ``(H, W, 3)`` in [0, 1]: a muted colour with a gradient, soft colour blobs,
    a few soft-edged panels (shelves, windows) and fine grain."""
    grey = rng.uniform(0.25, 0.7)
    base = torch.from_numpy((grey + rng.uniform(-0.12, 0.12, 3)).clip(0.05, 0.95).astype(np.float32))
    img = base[:, None, None] * (1 + 0.12 * _upsampled_noise(rng, 3, (3, 5), (height, width)))
    ys = torch.linspace(-1, 1, height)[:, None]
    img = img + float(rng.uniform(-0.12, 0.12)) * ys
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10, width // 2), rng.integers(height // 10, height // 2)
        panel = torch.zeros(height, width)
        panel[y0:y0 + h, x0:x0 + w] = 1
        panel = F.avg_pool2d(panel[None, None], 5, 1, 2)[0, 0]
        colour = torch.from_numpy(np.clip(base.numpy() * rng.uniform(0.5, 1.5, 3), 0, 1).astype(np.float32))
        img = img * (1 - 0.8 * panel) + 0.8 * panel * colour[:, None, None]
    img = img * (1 + 0.08 * _upsampled_noise(rng, 1, (24, 40), (height, width)))
    img = img + torch.from_numpy(rng.normal(0, 0.012, (1, height, width)).astype(np.float32))
    return img.clamp(0, 1).permute(1, 2, 0).contiguous()                           # H x W x 3


# ---------------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Frames:
    """Rendered frames: images ``(B, H, W, 3)`` in [0, 1]; face_mask ``(B, H, W)`` bool (the face mesh is the
    visible surface); foreground ``(B, H, W)`` bool (face or body, not background); face_screen ``(B, V, 3)`` the
    face vertices on screen (x, y_down, depth)."""

    images: torch.Tensor
    face_mask: torch.Tensor
    foreground: torch.Tensor
    face_screen: torch.Tensor


def posed_body(face: FaceMesh, coeffs: torch.Tensor, body: Mesh) -> torch.Tensor:
    """Pose the body like the face (Eq. 1's ``V R^T + t`` with the frame's rotation and trans): ``(B, Vb, 3)``."""
    return rigid_transform(body.verts, face.rotation, Coeffs.from_vector(coeffs).trans)


def posed_scene(model: MorphableModel, coeffs: torch.Tensor, body: Mesh, camera: PerspectiveCamera | None = None):
    """Pose face and body alike.

    Returns (rest face ``(B, V, 3)``, posed face ``(B, V, 3)``, posed body ``(B, Vb, 3)``, rotation ``(B, 3, 3)``).
    """
    face = build_face(model, coeffs, camera or PerspectiveCamera(), with_colors=False)
    return face.rest, face.verts, posed_body(face, coeffs, body), face.rotation


def render_frames(model: MorphableModel, coeffs: torch.Tensor, camera: PerspectiveCamera, body: Mesh,
                  backdrop: torch.Tensor) -> Frames:
    """Render ``coeffs (B, 257)`` (face + body posed alike) over ``backdrop (H, W, 3)`` for ``camera``."""
    if tuple(backdrop.shape) != (camera.height, camera.width, 3):
        raise ValueError(f"backdrop must be ({camera.height}, {camera.width}, 3), got {tuple(backdrop.shape)}")
    face = build_face(model, coeffs, camera)                                       # checks the coefficients
    rotation = face.rotation
    body_colors = shade(body.albedo, body.normals @ rotation.transpose(-1, -2), Coeffs.from_vector(coeffs).gamma)
    faces = torch.cat([model.triangles, body.faces + model.num_vertices])
    screen = torch.cat([face.screen, camera.project(posed_body(face, coeffs, body))], 1)   # B x (V + Vb) x 3
    x0, y0, x1, y1 = covered_window(screen, camera.height, camera.width)
    frags = rasterize(screen - screen.new_tensor([x0, y0, 0.0]), faces,
                      RasterSettings(image_size=(y1 - y0, x1 - x0), cull_backfaces=True))
    colors = interpolate(frags, faces, torch.cat([face.colors, body_colors], 1)).clamp(0, 1)
    images = backdrop.expand(coeffs.shape[0], -1, -1, -1).clone()
    images[:, y0:y1, x0:x1] = torch.where(frags.mask.unsqueeze(-1), colors, backdrop[y0:y1, x0:x1])
    face_mask, foreground = (torch.zeros(images.shape[:3], dtype=torch.bool) for _ in range(2))
    face_mask[:, y0:y1, x0:x1] = frags.mask & (frags.triangle_id < model.num_triangles)
    foreground[:, y0:y1, x0:x1] = frags.mask
    return Frames(images=images, face_mask=face_mask, foreground=foreground,
                  face_screen=screen[:, :model.num_vertices])


def covered_window(screen: torch.Tensor, height: int, width: int) -> tuple[int, int, int, int]:
    """Integer pixel window ``(x0, y0, x1, y1)`` holding every projected vertex of ``screen (B, V, 3)``, clipped
    to the image (at least one pixel). Rasterizing inside it (shifted by whole pixels) gives the same fragments."""
    lo, hi = screen[..., :2].reshape(-1, 2).amin(0), screen[..., :2].reshape(-1, 2).amax(0)
    x0, y0 = (max(0, min(int(np.floor(v)), n - 1)) for v, n in zip(lo.tolist(), (width, height)))
    x1, y1 = (min(n, max(int(np.ceil(v)), o + 1)) for v, n, o in zip(hi.tolist(), (width, height), (x0, y0)))
    return x0, y0, x1, y1


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(..., 3)`` floats in [0, 1] -> uint8, rounding to nearest."""
    return (images.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
