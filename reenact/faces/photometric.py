"""Texture and lighting from pixels: fit delta (texture, 80) and gamma (SH light, 27), and refine expression and
pose, against the frames inside the face mask by differentiable rendering with the suite's rasterizer (issue 12
item 3).

The landmark fit gives the starting geometry. Visibility comes from :func:`reenact.face3d.raster.rasterize`, redone
every ``rasterize_every`` steps; in between, the barycentrics of the masked pixels are recomputed in torch from the
current screen vertices, so the colour at a pixel is differentiable in the lit vertex colours
(:func:`reenact.face3d.shading.shade` of :meth:`MorphableModel.albedo` under the SH light), like
:func:`reenact.face3d.raster.interpolate`, and also in the geometry. Energy, minimised with Adam from a start by
alternating least squares (the colours are linear in delta given gamma and in gamma given delta)::

    E = mean_{pixels in M} |I_r - I| (per channel) + w_tex |delta|^2 / 80 + w_gamma |gamma|^2 / 27
        + w_lm mean_k |p_k - q_k|^2 / s^2 + w_exp |beta - beta_0|^2 / 64 + w_rot |theta - theta_0|^2 / 3

with one delta for all frames (one face), one gamma per frame (light may change), and per frame an expression beta
and a pose refined from the landmark fit's (beta_0, theta_0), held to dlib's inner 51 points q_k (p_k the model's, s
the face size; the 17 jaw points slide along the silhouette and are left out) and to the fitted rotation (without
that term the light's gradient turns a near-frontal head by up to 7 degrees, pitch with a compensating shift, which
the inner points hardly see).

The face mask M is where the data says the face is: pixels the rendered face covers, inside the outline of dlib's
points (the 17 jaw points, closed along the 10 brow points). The model's mesh reaches past the brows into the
hairline and, on a turned head or a head the landmark fit made a little too wide, past the cheek contour onto
background or hair; neither is face the model describes, so both are left out. The brow cut alone
(:func:`below_brows`) is the earlier mask, kept to report the figure on it. Within the outline, hair falling over
the cheeks (or background past a cheek the outline overshoots) is left out too where the frame's colours say it is
not skin (:func:`occluders`, a skin-colour model measured on the frame's inner face, which is itself never left
out); the result reports the error with and without that trim.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, TEX, TRANS, Coeffs
from reenact.face3d.face import build_face
from reenact.face3d.morphable import vertex_rows
from reenact.face3d.raster import Fragments, RasterSettings, interpolate, rasterize
from reenact.face3d.shading import INIT_LIGHT, sh_basis, shade
from reenact.face3d.transforms import euler_to_matrix, rigid_transform
from reenact.faces.gates import face_size
from reenact.faces.images import frame_camera

BROWS = slice(17, 27)
INNER = slice(17, 68)
#: dlib's face outline: the jaw from the image-left ear to the right, back along the brows.
OUTLINE = list(range(0, 17)) + list(range(26, 16, -1))


@dataclass(frozen=True)
class PhotometricConfig:
    """Settings of :func:`photometric_fit`."""

    steps: int = 300             # Adam steps
    lr: float = 0.05             # Adam learning rate of delta and gamma
    tex_weight: float = 1e-5     # prior weight on delta (per coefficient); 1e-4 held lp_d10's error at 0.057 (the
    #                              basis's fine components are small; texture RMS 4.8 -> 7.5)
    gamma_weight: float = 1e-4   # prior weight on gamma (per coefficient)
    refine_geometry: bool = True  # refine expression and pose per frame (else the landmark fit's stays)
    geometry_lr: float = 1e-2    # Adam learning rate of the expression (coefficients) and pose (rad, decimetres)
    landmark_weight: float = 10.0  # weight of the inner 51 points' squared error relative to the face size
    exp_weight: float = 1e-3     # prior weight on the expression's change (per coefficient)
    rotation_weight: float = 3.0  # prior weight on the rotation's change (per angle, radians^2): all three 1 deg: 9e-4
    rasterize_every: int = 20    # steps between two visibility updates while the geometry moves (< 1 deg)
    outline: bool = True         # the mask stops at dlib's face outline (else only at the brows)
    occlusion: bool = True       # the mask leaves out pixels of another colour than the face's outside the inner
    #                              face (:func:`occluders`: hair over the cheeks, background past them)
    warm_start: int = 3          # rounds of alternating least squares for delta and gamma before Adam (0: zeros)
    threads: int = 1             # torch intra-op threads during the fit (0: keep the caller's); its tensors are
    #                              small, so on a busy machine more threads cost more CPU than they save
    fit_size: int = 128          # fit on the frames area-averaged to this short side (0: full size); the result,
    #                              its render and its error are at full size (texture and light are smooth: from
    #                              256^2 it halves the cost for 0.0005-0.002 more error on the real clips)


@dataclass(frozen=True)
class PhotometricResult:
    """coeffs: ``(B, 257)`` with the fitted tex (shared), gamma (per frame) and the refined expression and pose;
    render: ``(B, 3, H, W)`` I_r; mask: ``(B, 1, H, W)`` the face mask used (occluders left out); error / flat_error:
    mean absolute RGB error inside the mask of the fitted render and of the flat one (tex and gamma zero; the same
    geometry and mask); face_error: the fitted render's inside ``face_mask`` ``(B, 1, H, W)``, the face mask with the
    occluders kept."""

    coeffs: torch.Tensor
    render: torch.Tensor
    mask: torch.Tensor
    error: float
    flat_error: float
    face_error: float
    face_mask: torch.Tensor


def below_brows(landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H, W)`` bool: pixel centres below the polyline through the 10 brow points of ``(B, 68, 2)`` landmarks
    (flat beyond its ends); all True for a frame without finite landmarks."""
    out = torch.ones(len(landmarks), height, width, dtype=torch.bool)
    xs = np.arange(width) + 0.5
    ys = torch.arange(height, dtype=torch.float64)[:, None] + 0.5
    for b, points in enumerate(landmarks):
        brows = points[BROWS].double().numpy()
        if not np.isfinite(brows).all():
            continue
        order = np.argsort(brows[:, 0])
        line = np.interp(xs, brows[order, 0], brows[order, 1])
        out[b] = ys > torch.from_numpy(line)[None]
    return out


def inside_outline(landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(B, H, W)`` bool: pixel centres inside dlib's face outline (:data:`OUTLINE`: jaw, closed along the brows)
    of ``(B, 68, 2)`` landmarks; all True for a frame without finite landmarks."""
    from skimage.draw import polygon2mask

    out = torch.ones(len(landmarks), height, width, dtype=torch.bool)
    for b, points in enumerate(landmarks):
        outline = points[OUTLINE].double().numpy()
        if np.isfinite(outline).all():    # skimage: (row, col), pixel centres at integers
            out[b] = torch.from_numpy(polygon2mask((height, width), outline[:, ::-1] - 0.5))
    return out


def occluders(images: torch.Tensor, landmarks: torch.Tensor, chroma_limit: float = 5.0,
              dark_limit: float = 0.4) -> torch.Tensor:
    """``(B, H, W)`` bool: pixels whose colour is not the face's, outside the inner face: hair, a scarf, background
    over the face's sides (hands are skin-coloured and stay).

    The skin's colour is measured on the frame itself, robustly (median and MAD) over the inner face (the convex hull
    of dlib's 51 inner points: brows, nose, eyes, mouth; eyes and lips are a minority there). A pixel outside that
    hull (grown by 3 % of the face size) is an occluder when its chromaticity ``(R, G) / (R + G + B)`` is more than
    ``chroma_limit`` MADs (scaled to sigmas) from the skin's, or its brightness is under ``dark_limit`` times the
    skin's (dark hair; shaded skin keeps its chromaticity and more light than that). The inner face itself is never
    left out, so eyes, brows and the mouth stay whatever their colour and however badly they are fitted. All False
    for a frame without finite landmarks.

    Args:
        images: RGB ``(B, 3, H, W)`` in [0, 1]; landmarks: ``(B, 68, 2)`` pixels.
    """
    from scipy import ndimage
    from scipy.spatial import ConvexHull
    from skimage.draw import polygon2mask

    batch, _, height, width = images.shape
    out = torch.zeros(batch, height, width, dtype=torch.bool)
    brightness = images.double().sum(1)                                                   # B x H x W
    chroma = images.double()[:, :2] / brightness[:, None].clamp_min(1e-6)                 # B x 2 x H x W
    for b, points in enumerate(landmarks):
        inner = points[INNER].double().numpy()
        if not np.isfinite(inner).all():
            continue
        hull = inner[ConvexHull(inner).vertices]
        face = polygon2mask((height, width), hull[:, ::-1] - 0.5)
        margin = round(0.03 * float(face_size(points[INNER].double())))                # the lips' edge, the lids
        face = torch.from_numpy(ndimage.binary_dilation(face, iterations=margin) if margin else face)
        skin_chroma, skin_brightness = chroma[b][:, face], brightness[b][face]              # 2 x N, N
        centre = skin_chroma.median(1).values
        spread = 1.4826 * (skin_chroma - centre[:, None]).abs().median(1).values.clamp_min(1e-3)
        distance = ((chroma[b] - centre[:, None, None]) / spread[:, None, None]).square().sum(0).sqrt()
        unlike = (distance > chroma_limit) | (brightness[b] < dark_limit * skin_brightness.median())
        out[b] = unlike & ~face
    return out


def face_mask(fragments: Fragments, landmarks: torch.Tensor | None, outline: bool = True) -> torch.Tensor:
    """``(B, H, W)`` bool: the rendered face, below the brows and (``outline``) inside dlib's face outline."""
    mask = fragments.mask
    if landmarks is None:
        return mask
    height, width = mask.shape[1:]
    mask = mask & below_brows(landmarks, height, width)
    return mask & inside_outline(landmarks, height, width) if outline else mask


def photometric_fit(images: torch.Tensor, coeffs: torch.Tensor, landmarks: torch.Tensor | None = None,
                    model="procedural-full", config: PhotometricConfig = PhotometricConfig(), *,
                    assets: str | None = None) -> PhotometricResult:
    """Fit texture (shared) and light (per frame) of B frames of one face, refining expression and pose.

    Args:
        images: RGB float ``(B, 3, H, W)`` in [0, 1].
        coeffs: ``(B, 257)`` fitted geometry in the frame's Deep3D camera (:func:`reenact.faces.images.frame_camera`).
        landmarks: ``(B, 68, 2)`` the frames' 68 points (the mask's cuts and the geometry's anchor), or None (whole
            rendered face, no geometry refinement).
        model: a :class:`reenact.face3d.morphable.MorphableModel` or its spec.
    """
    if images.ndim != 4 or images.shape[1] != 3 or coeffs.shape != (len(images), 257):
        raise ValueError(f"expected images (B, 3, H, W) and coeffs (B, 257), got {tuple(images.shape)} and "
                         f"{tuple(coeffs.shape)}")
    if isinstance(model, str):
        from reenact.face3d.io import load_morphable_model

        model = load_morphable_model(model, assets)
    from reenact.faces.landmark_fit import torch_threads

    with torch_threads(config.threads):
        return _fit(images, coeffs.to(model.mean_shape.dtype), landmarks, model, config)


def _fit(images, coeffs, landmarks, model, config: PhotometricConfig) -> PhotometricResult:
    small, small_landmarks = _downsampled(images, landmarks, config.fit_size)
    scene = _Scene(model, small, coeffs, small_landmarks, config)
    tex, gamma = scene.least_squares(config.warm_start)
    tex, gamma = tex.requires_grad_(), gamma.requires_grad_()
    pose = torch.zeros(len(images), 3 + 3 + 64, dtype=scene.dtype, requires_grad=True)   # angle, trans, beta
    groups = [{"params": [tex, gamma], "lr": config.lr}]
    if scene.refine:
        groups.append({"params": [pose], "lr": config.geometry_lr})
    optimiser = torch.optim.Adam(groups)
    for step in range(config.steps):
        if scene.refine and step and step % config.rasterize_every == 0:
            scene.rasterize(pose.detach())
        optimiser.zero_grad()
        scene.energy(tex, gamma, pose).backward()
        optimiser.step()
    with torch.no_grad():
        if small is not images:
            scene = _Scene(model, images, coeffs, landmarks, config)
        scene.rasterize(pose)
        fitted = scene.coeffs(pose, tex, gamma)
        flat = fitted.clone()
        flat[:, TEX], flat[:, GAMMA] = 0.0, 0.0
        render, mask = scene.render(fitted), scene.mask
        flat_error = scene.error(scene.render(flat))
        return PhotometricResult(fitted.float(), render.permute(0, 3, 1, 2).float(), mask[:, None].float(),
                                 scene.error(render), flat_error, scene.error(render, scene.face),
                                 scene.face[:, None].float())


def _downsampled(images: torch.Tensor, landmarks: torch.Tensor | None, size: int):
    """The frames area-averaged to ``size`` pixels on the short side, and their landmarks (unchanged when the frames
    are not larger). The Deep3D camera scales with the frame, so the coefficients mean the same at both sizes."""
    height, width = images.shape[2:]
    scale = size / min(height, width)
    if not size or scale >= 1:
        return images, landmarks
    shape = (round(height * scale), round(width * scale))
    small = torch.nn.functional.interpolate(images, size=shape, mode="area")
    return small, None if landmarks is None else landmarks * torch.tensor([shape[1] / width, shape[0] / height],
                                                                           dtype=landmarks.dtype)


class _Scene:
    """The frames, the starting coefficients and the current visibility of one :func:`photometric_fit`.

    Between two rasterizations only the n vertices the masked pixels read (and the 68 landmarks) are posed, from
    the rows of the bases that belong to them (Eq. 1 on a vertex subset, the identity's part computed once); their
    normals are taken from the full mesh at the last rasterization (in model space, rotated by the current pose)."""

    def __init__(self, model, images, coeffs, landmarks, config: PhotometricConfig):
        self.model, self.config, self.start, self.landmarks = model, config, coeffs, landmarks
        self.dtype = coeffs.dtype
        self.height, self.width = images.shape[2:]
        self.camera = frame_camera(self.width, self.height)
        self.target = images.permute(0, 2, 3, 1).to(self.dtype)                         # B x H x W x 3
        self.refine = config.refine_geometry and landmarks is not None
        self.occluders = occluders(images, landmarks) if config.occlusion and landmarks is not None else None
        if landmarks is not None:
            points = landmarks.to(self.dtype)
            extent = points.amax(1) - points.amin(1)
            self.points, self.size = points[:, INNER], (extent[:, 0] * extent[:, 1]).sqrt()   # B x 51 x 2, B
        self.rasterize(torch.zeros(len(images), 70, dtype=self.dtype))

    def coeffs(self, pose: torch.Tensor, tex: torch.Tensor | None = None, gamma: torch.Tensor | None = None):
        out = self.start.clone()
        out[:, ANGLE] = out[:, ANGLE] + pose[:, 0:3]
        out[:, TRANS] = out[:, TRANS] + pose[:, 3:6]
        out[:, EXP] = out[:, EXP] + pose[:, 6:]
        if tex is not None:
            out[:, TEX], out[:, GAMMA] = tex.expand(len(out), -1), gamma
        return out

    def rasterize(self, pose: torch.Tensor) -> None:
        """Visibility and the face mask for the current geometry; the masked pixels' batch, centre and corners."""
        m = self.model
        with torch.no_grad():
            mesh = build_face(m, self.coeffs(pose), self.camera, with_colors=False)
            self.fragments = rasterize(mesh.screen, m.triangles, RasterSettings((self.height, self.width)))
            self.face = face_mask(self.fragments, self.landmarks, self.config.outline)
            self.mask = self.face if self.occluders is None else self.face & ~self.occluders
            b, y, x = self.mask.nonzero(as_tuple=True)
            corners = m.triangles[self.fragments.triangle_id[b, y, x]]                      # P x 3 vertex ids
            used = torch.cat([corners.reshape(-1), m.landmark_indices])
            self.vertices, local = torch.unique(used, return_inverse=True)                 # n vertices
            self.pixel_corners, self.landmark_local = local[:corners.numel()].view(-1, 3), local[corners.numel():]
            self.pixel_batch = b
            self.pixel_xy = torch.stack([x, y], -1).to(self.dtype) + 0.5                   # P x 2, pixel centres
            self.pixel_target = self.target[b, y, x]                                         # P x 3
            self.exp_rows = vertex_rows(m.exp_base, self.vertices).T.to(self.dtype)          # 64 x 3n
            identity = self.start[:, ID] @ vertex_rows(m.id_base, self.vertices).T.to(self.dtype)   # B x 3n (alpha)
            self.neutral = m.mean_shape[self.vertices].reshape(1, -1).to(self.dtype) + identity
            self.tex_rows = vertex_rows(m.tex_base, self.vertices).T.to(self.dtype)          # 80 x 3n
            self.mean_tex = m.mean_tex[self.vertices].to(self.dtype)                         # n x 3
            self.normals = m.vertex_normals(mesh.rest, self.vertices).to(self.dtype)       # B x n x 3, model space

    def least_squares(self, rounds: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A start for delta ``(1, 80)`` and gamma ``(B, 27)``: the pixel colours are linear in each given the other,
        so ``rounds`` alternating ridge least-squares solves (squared error, the priors' weights as ridge) at the
        landmark fit's geometry; zeros for 0 rounds."""
        batch = len(self.start)
        tex, gamma = torch.zeros(1, 80, dtype=self.dtype), torch.zeros(batch, 27, dtype=self.dtype)
        if rounds <= 0:
            return tex, gamma
        with torch.no_grad():
            rotation = euler_to_matrix(self.start[:, ANGLE])
            screen = self.camera.project(rigid_transform(self.neutral.unflatten(1, (-1, 3)) + (
                self.start[:, EXP] @ self.exp_rows).unflatten(1, (-1, 3)), rotation, self.start[:, TRANS]))
            weights = _barycentrics(screen[self.pixel_batch[:, None], self.pixel_corners, :2], self.pixel_xy)
            sh = sh_basis(self.normals @ rotation.transpose(-1, -2))                           # B x n x 9
            def at(values: torch.Tensor) -> torch.Tensor:     # (B, n, ...) per vertex -> (P, ...) per pixel
                picked = values[self.pixel_batch[:, None], self.pixel_corners]                 # P x 3 x ...
                return (weights.view(*weights.shape, *[1] * (picked.dim() - 2)) * picked).sum(1)

            basis = self.tex_rows.T.unflatten(0, (-1, 3)) / 255.0                               # n x 3 x 80
            for _ in range(rounds):
                gamma = self._light_given_texture(at, sh, tex)
                tex = self._texture_given_light(at, sh, gamma, basis)
        return tex, gamma

    def _light_given_texture(self, at, sh: torch.Tensor, tex: torch.Tensor) -> torch.Tensor:
        albedo = (self.mean_tex + (tex @ self.tex_rows).unflatten(-1, (-1, 3)))[0] / 255.0  # n x 3
        gamma = torch.zeros(len(sh), 3, 9, dtype=self.dtype)
        for ch in range(3):
            design = at(sh * albedo[:, ch, None])                                            # P x 9
            target = self.pixel_target[:, ch] - INIT_LIGHT * design[:, 0]
            for b in range(len(sh)):
                rows = self.pixel_batch == b
                gamma[b, ch] = _ridge(design[rows], target[rows], self.config.gamma_weight * rows.sum() / 27)
        return gamma.flatten(1)

    def _texture_given_light(self, at, sh: torch.Tensor, gamma: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
        light = gamma.unflatten(-1, (3, 9)) + gamma.new_tensor([INIT_LIGHT] + [0.0] * 8)      # B x 3 x 9
        irradiance = sh @ light.transpose(-1, -2)                                             # B x n x 3
        offset = at(irradiance * self.mean_tex / 255.0)                                       # P x 3
        design = at(irradiance.unsqueeze(-1) * basis)                                         # P x 3 x 80
        ridge = self.config.tex_weight * design.shape[0] * 3 / 80
        return _ridge(design.flatten(0, 1), (self.pixel_target - offset).flatten(), ridge)[None]

    def energy(self, tex: torch.Tensor, gamma: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        c = self.config
        coeffs = self.coeffs(pose)
        rotation = euler_to_matrix(coeffs[:, ANGLE])
        shape = self.neutral + coeffs[:, EXP] @ self.exp_rows                              # Eq. 1, B x 3n
        verts = rigid_transform(shape.unflatten(1, (-1, 3)), rotation, coeffs[:, TRANS])   # B x n x 3
        screen = self.camera.project(verts)
        albedo = (self.mean_tex + (tex @ self.tex_rows).unflatten(-1, (-1, 3))) / 255.0   # 1 x n x 3
        colors = shade(albedo.expand(len(gamma), -1, -1), self.normals @ rotation.transpose(-1, -2), gamma)
        loss = ((self._at_pixels(colors, screen) - self.pixel_target).abs().mean()
                + c.tex_weight * tex.square().mean() + c.gamma_weight * gamma.square().mean())
        if self.refine:
            points = screen[:, self.landmark_local, :2][:, INNER]
            landmark = ((points - self.points).square().sum(-1) / self.size[:, None].square()).mean()
            loss = (loss + c.landmark_weight * landmark + c.exp_weight * pose[:, 6:].square().mean()
                    + c.rotation_weight * pose[:, :3].square().mean())
        return loss

    def _at_pixels(self, colors: torch.Tensor, screen: torch.Tensor) -> torch.Tensor:
        """``(P, 3)`` colours at the masked pixels, with barycentrics of the current screen vertices."""
        corners = screen[self.pixel_batch[:, None], self.pixel_corners, :2]              # P x 3 x 2
        weights = _barycentrics(corners, self.pixel_xy)                                    # P x 3
        values = colors[self.pixel_batch[:, None], self.pixel_corners]                    # P x 3 x 3
        return (weights[..., None] * values).sum(1)

    def render(self, coeffs: torch.Tensor) -> torch.Tensor:
        """``(B, H, W, 3)`` I_r of ``coeffs`` in the current visibility."""
        mesh = build_face(self.model, coeffs, self.camera, with_colors=False)
        c = Coeffs.from_vector(coeffs)
        normals = self.model.vertex_normals(mesh.rest) @ mesh.rotation.transpose(-1, -2)     # B x V x 3, camera
        colors = shade(self.model.albedo(c.tex), normals, c.gamma)
        return interpolate(self.fragments, self.model.triangles, colors)

    def error(self, render: torch.Tensor, mask: torch.Tensor | None = None) -> float:
        return float((render - self.target).abs()[self.mask if mask is None else mask].mean())


def _ridge(design: torch.Tensor, target: torch.Tensor, weight) -> torch.Tensor:
    """``argmin_x |design x - target|^2 + weight |x|^2`` by the normal equations (float64)."""
    a = design.double()
    gram = a.T @ a + float(weight) * torch.eye(a.shape[1], dtype=torch.float64)
    return torch.linalg.solve(gram, a.T @ target.double()).to(design.dtype)


def _barycentrics(corners: torch.Tensor, xy: torch.Tensor) -> torch.Tensor:
    """Screen-space barycentrics ``(P, 3)`` of points ``xy (P, 2)`` in triangles ``corners (P, 3, 2)``."""
    a, b, c = corners.unbind(1)
    ab, ac, ap = b - a, c - a, xy - a
    area = ab[:, 0] * ac[:, 1] - ab[:, 1] * ac[:, 0]
    w1 = (ap[:, 0] * ac[:, 1] - ap[:, 1] * ac[:, 0]) / area
    w2 = (ab[:, 0] * ap[:, 1] - ab[:, 1] * ap[:, 0]) / area
    return torch.stack([1 - w1 - w2, w1, w2], -1)


def render_error(images: torch.Tensor, coeffs: torch.Tensor, landmarks: torch.Tensor | None = None,
                 model="procedural-full", *, outline: bool = True, occlusion: bool = True,
                 assets: str | None = None) -> tuple[float, torch.Tensor]:
    """Mean absolute RGB error inside the face mask (:func:`face_mask`, with ``occlusion`` the :func:`occluders` left
    out) between I_r of ``coeffs (B, 257)`` (their texture, light and pose) and ``images (B, 3, H, W)``, and the mask
    ``(B, H, W)``: e.g. for coefficients as an estimator stores them, whose geometry is the landmark fit's."""
    if isinstance(model, str):
        from reenact.face3d.io import load_morphable_model

        model = load_morphable_model(model, assets)
    coeffs = coeffs.to(model.mean_shape.dtype)
    with torch.no_grad():
        scene = _Scene(model, images, coeffs, landmarks, PhotometricConfig(outline=outline, occlusion=occlusion))
        return scene.error(scene.render(coeffs)), scene.mask
