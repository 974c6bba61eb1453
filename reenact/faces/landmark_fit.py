"""The ``landmarks`` coefficient estimator: fit the morphable model to 68 2D landmarks, one optimisation per chunk.

Model (paper Eq. 1 restricted to the 68 landmark vertices; the full mesh is never built). For frame t and
landmark k, with the landmark rows of the bases (``m_k`` ``(3,)``, ``A_k`` ``(3, 80)``, ``E_k`` ``(3, 64)``)::

    P_tk = m_k + A_k alpha + E_k beta_t          (model space, decimetres)
    Q_tk = R_t P_tk + t_t                        (R_t = euler_to_matrix(angle_t), posed as V @ R.T + t)
    pi(Q) = (cx + f Qx / (d - Qz), cy - f Qy / (d - Qz))   (reenact.face3d.camera, y down, pixel centres at +0.5)

Energy (a MAP estimate: landmark noise N(0, sigma^2) per coordinate; priors alpha ~ N(0, s_id^2 I) and
beta_t ~ N(0, s_exp^2 I), the Deep3D/BFM coefficients being roughly unit-variance; rotation and x/y translation flat)::

    E = sum_t sum_k w_k |pi(Q_tk) - x_tk|^2 / sigma^2 + |alpha|^2 / s_id^2 + sum_t |beta_t|^2 / s_exp^2
        + sum_t (t_t,z - z0_t)^2 / (s_z (d - z0_t))^2

The last term is a depth prior. From landmarks, face size and camera depth trade off through alpha; with one shared
alpha and T per-frame betas, the joint MAP otherwise slides the head towards the camera while alpha shrinks it (the
betas' prior gets cheaper as their pixel effect grows), degenerating at large T. ``z0_t`` is the depth at which the
mean face fits frame t (the closed-form init below) and ``s_z`` = 0.05: the spread of face sizes under the identity
prior (4.7 % rms for the procedural model). Expect depth errors of a few percent: landmarks cannot tell a small
face near the camera from a large one further away.

``alpha`` is shared by all frames of a chunk (one identity per video), ``beta_t`` and the pose are per frame.
Issue 12 changed three things. The identity prior's weight grows with the number of frames beyond
``id_prior_frames`` (it no longer fades against the data as frames are added, so long chunks keep alpha inside the
prior).
A temporal term joins neighbouring frames (``rotation_step``, ``trans_step``, ``exp_step``: Gaussian steps between
frames whose indices differ by one); its Gauss-Newton Hessian couples neighbouring frames' blocks, so the per-frame
system of the joint stage is block-tridiagonal and is solved exactly (block Thomas algorithm, :func:`_solve_chain`;
a Jacobi-style diagonal bound converged too slowly on long chunks). And every frame
passes the plausibility gates of :mod:`reenact.faces.gates`.
The identity prior is mirror-symmetric (:func:`mirror_prior`): a face and its mirror image are equally likely, so
the fit of a mirrored image is the mirror of the fit. (The procedural identity basis comes in mirror pairs, so
there the plain ``|alpha|^2`` already is and :func:`mirror_prior` reduces to it; before the pairing it was not,
moved yaw by ~3 degrees between real frames and their mirrors, and its symmetrised form, far from ``|alpha|^2``,
cost the oracle-landmark benchmark 0.4 degrees.) The 17 jaw points are silhouette points
(``FitConfig.jaw_contour``, landmark marching as in 3DDFA): each slides along a line of candidate vertices to the
visible contour for the current pose (:func:`select_contour`), re-selected between LM iterations. A model may say
where a detector puts its points relative to the landmark vertices (``MorphableModel.landmark_offsets``, model
frame, e.g. dlib's nose-ridge points deeper than the procedural ridge): the fit adds them to the landmark rows of the
mean shape (``FitConfig.landmark_offsets``; the id and exp rows stay). Texture and lighting are not observable from
landmarks:
:func:`fit_landmarks` writes zeros; :class:`LandmarkFitEstimator` fits them to the pixels
(:mod:`reenact.faces.photometric`).

Solver: Levenberg-Marquardt (Gauss-Newton with Marquardt damping) in float64 with analytic Jacobians. Rotations are
updated on SO(3) (``R <- exp([w]x) R``) and written as Euler angles at the end (:func:`matrix_to_euler`; yaw must stay
inside (-90, 90) degrees). The normal equations have one shared block (alpha, 80) and T independent per-frame blocks
(beta, w, t: 70 each), so each step solves the T 70x70 blocks in a batch and the 80x80 Schur complement of alpha:
cost linear in T. Initialisation: a closed-form weak-perspective (affine) fit of the mean shape's landmarks per frame,
which needs no yaw search and is within a few degrees even at +-45 degrees yaw; then a pose-only stage (alpha, beta
fixed at 0, per-frame damping) and the joint stage.

Coefficients are expressed for the image the landmarks come from with ``PerspectiveCamera.deep3d(image_size)``
(a 256^2 crop for VoxCeleb), or with an explicit camera.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from reenact.data.schema import Status
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, NUM_COEFFS, TEX, TRANS
from reenact.face3d.morphable import NUM_EXP, NUM_ID, NUM_LANDMARKS, MorphableModel, vertex_rows
from reenact.face3d.transforms import euler_to_matrix, matrix_to_euler
from reenact.faces.estimate import CoeffEstimate
from reenact.faces.images import ImageBatch, frame_camera, image_list, nan_rows

NAME = "landmarks"
REFERENCE_SIZE = 256           # sizes in FitConfig are pixels of a 256^2 image, scaled to the actual image size
JAW = slice(0, 17)             # iBUG-68 jaw outline (silhouette points on real faces)
CONTOUR_SAMPLES = 24           # candidate vertices per jaw line (contour_lines)
CONTOUR_INNER = 0.5            # the jaw lines reach inwards to this fraction of the landmark's distance from the axis
NUM_POSE = 6                   # per-frame w (3) + t (3)
NUM_FRAME = NUM_EXP + NUM_POSE  # per-frame unknowns: beta (64), w (3), t (3)
#: prior weight of the identity's antisymmetric part relative to its symmetric part (:func:`mirror_prior`; 1: the
#: model's prior averaged with its mirror image). Measured (lp_d0 / tpsmm_driving 8-frame chunks: pose p90 vs the
#: whole clip, max identity RMS; oracle sequences / tiny world: median rotation error): 1.0: 1.58 / 4.24 deg,
#: 1.39 / 1.30, oracle 1.92 / 0.80 deg; 0.5: 1.63 / 4.09, 1.42 / 1.46, 1.66 / 0.74; 0.3: 1.66 / 4.28,
#: 1.44 / 1.63 (over issue 12's 1.5), 1.49 / 0.72; 0.1 is unstable (8-frame p90 23 deg on lp_d0).
#: (Measured with the earlier Jacobi temporal solver, before FitConfig.id_prior_min and before the procedural
#: identity basis came in mirror pairs: since then it matters only for the expression basis, and for other models.)
ANTISYMMETRIC_PRIOR = 1.0


@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_landmarks`. Pixel quantities are for a 256^2 image and scale with the image size."""

    landmark_sigma: float = field(default=1.0, metadata={"help": "landmark noise std (px at 256^2), weighs the priors"})
    id_prior: float = field(default=1.0, metadata={"help": "prior std of the identity coefficients alpha"})
    exp_prior: float = field(default=1.0, metadata={"help": "prior std of the expression coefficients beta"})
    fit_identity: bool = field(default=True, metadata={"help": "fit the shared identity (else alpha = 0)"})
    fit_expression: bool = field(default=True, metadata={"help": "fit per-frame expressions (else beta = 0)"})
    depth_prior: float = field(default=0.05, metadata={"help": "prior std of the head's camera depth, relative to the "
                                                             "mean face's weak-perspective depth (0: flat prior)"})
    jaw_weight: float = field(default=1.0, metadata={"help": "weight of the 17 jaw-outline points"})
    pose_iterations: int = field(default=8, metadata={"help": "LM iterations of the pose-only stage"})
    iterations: int = field(default=25, metadata={"help": "LM iterations of the joint stage"})
    tolerance: float = field(default=1e-5, metadata={"help": "stop when the relative cost decrease is below this"})
    damping: float = field(default=1e-3, metadata={"help": "initial Marquardt damping"})
    threads: int = field(default=1, metadata={"help": "torch intra-op threads during the fit; its matrices are small, "
                                                      "so one thread is fastest on a busy machine (0: keep the "
                                                      "caller's setting)"})
    max_rmse: float = field(default=6.0, metadata={"help": "frames whose landmark RMSE (px at 256^2) exceeds this "
                                                          "are written with status implausible"})
    id_prior_frames: float = field(default=4.0, metadata={
        "help": "the identity prior weighs max(id_prior_min, T / id_prior_frames) times for T frames, so beyond "
                "this many frames its weight no longer fades against the data (0: once per chunk, the plain MAP "
                "whose identity leaves the prior on long real clips)"})
    id_prior_min: float = field(default=4.0, metadata={
        "help": "the identity prior weighs at least this many times (that of a chunk of id_prior_min * "
                "id_prior_frames frames): a few frames cannot tell the identity from the pose, and their own "
                "identity moved the pose of 8-frame chunks of a real clip by p90 3.8 deg from the whole clip's "
                "(2.7 with 4; 1: the plain prior for short chunks). Costs the tiny world's oracle-landmark chunks "
                "(~21 frames) 0.55 -> 0.70 deg median rotation error"})
    rotation_step: float = field(default=2.0, metadata={
        "help": "temporal term: std of the head rotation between neighbouring frames, degrees (0: off)"})
    trans_step: float = field(default=0.05, metadata={
        "help": "temporal term: std of the translation change between neighbouring frames, decimetres (0: off)"})
    estimate_sigma: bool = field(default=True, metadata={
        "help": "estimate the landmark noise from the residuals of a first joint fit and refit with it (never below "
                "landmark_sigma): real faces, whose dlib points and model landmarks disagree by ~2 px, then weigh "
                "the priors as they should"})
    jaw_contour: bool = field(default=True, metadata={
        "help": "the 17 jaw points are silhouette points: each slides along a line of candidate vertices to the "
                "visible contour for the current pose, re-selected between iterations (landmark marching, as in "
                "3DDFA); off: fixed landmark vertices (landmarks that are projections of the model's own landmark "
                "vertices, e.g. the synthetic world's ground truth)"})
    outlier_frames: float = field(default=3.0, metadata={
        "help": "in the refit after the noise estimate, frames whose landmark RMSE exceeds this many times the "
                "chunk's median weigh (this * median / RMSE)^4, so one garbage frame cannot drag the shared identity "
                "(0: off)"})
    exp_step: float = field(default=0.5, metadata={
        "help": "temporal term: std of the expression change between neighbouring frames (0: off)"})
    id_rms_bound: float = field(default=1.3, metadata={
        "help": "when the fitted identity's RMS exceeds this, the identity prior is made stronger (by (RMS / bound)^4, "
                "at most id_bound_steps times) and the chunk refitted: a face the model can only reach from outside "
                "its prior (a real clip needed RMS 1.67 for 448 frames) is held at the prior's edge instead of being "
                "written implausible. Faces drawn from the prior (RMS ~1) never trigger it (0: off)"})
    id_bound_steps: int = field(default=3, metadata={"help": "at most this many refits for id_rms_bound"})
    landmark_offsets: bool = field(default=True, metadata={
        "help": "fit the detector's points: the model's landmark_offsets (where dlib puts its points relative to the "
                "landmark vertices, e.g. deeper than the nose's surface; procedural.LANDMARK_OFFSETS) added to the "
                "landmark vertices; off: the vertices themselves (landmarks that are projections of the model's own "
                "landmark vertices, e.g. the synthetic world's ground truth; turn jaw_contour off too)"})


@dataclass(frozen=True)
class FitResult:
    """Per-frame fit of one chunk (T frames).

    coeffs: ``(T, 257)`` float32, Deep3D layout; id shared by all frames, tex and gamma zero.
    rmse: ``(T,)`` float64 landmark RMSE in pixels, ``sqrt(mean_k |pi(Q_tk) - x_tk|^2)``.
    fitted: ``(T, 68, 2)`` float64 projected model landmarks.
    iterations: LM iterations run (pose stage + joint stage).
    """

    coeffs: np.ndarray
    rmse: np.ndarray
    fitted: np.ndarray
    iterations: int


@dataclass(frozen=True)
class LandmarkBases:
    """The 68 landmark rows of a morphable model, float64: mean ``(68, 3)``, id ``(68, 3, 80)``, exp ``(68, 3, 64)``."""

    mean: torch.Tensor
    id: torch.Tensor
    exp: torch.Tensor
    id_prior: torch.Tensor = None    # 80 x 80 unit prior precision of alpha (mirror-symmetric, see mirror_prior)
    exp_prior: torch.Tensor = None   # 64 x 64 unit prior precision of beta (likewise)
    contour: "ContourLines | None" = None   # candidate vertices of the jaw points (silhouette points)
    jaw: "tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None" = None   # per-frame jaw rows (select_contour)
    offsets: torch.Tensor = None     # 68 x 3 detector offsets (MorphableModel.landmark_offsets), not yet applied

    def __post_init__(self):
        if self.id_prior is None:
            object.__setattr__(self, "id_prior", torch.eye(self.id.shape[-1], dtype=self.id.dtype))
        if self.exp_prior is None:
            object.__setattr__(self, "exp_prior", torch.eye(self.exp.shape[-1], dtype=self.exp.dtype))
        if self.offsets is None:
            object.__setattr__(self, "offsets", torch.zeros_like(self.mean))

    def with_offsets(self) -> "LandmarkBases":
        """The bases of the detector's points: the offsets added to the landmark rows of the mean shape (and to every
        candidate of a jaw point's contour line), the id and exp rows unchanged (a constant offset moves with the
        head, not with identity or expression)."""
        if not bool(self.offsets.any()):
            return self
        contour = self.contour and replace(self.contour, mean=self.contour.mean + self.offsets[JAW, None])
        return replace(self, mean=self.mean + self.offsets, contour=contour, offsets=torch.zeros_like(self.offsets))


def mirror_basis(basis: torch.Tensor) -> torch.Tensor:
    """Landmark rows of a basis ``(68, 3, n)`` -> those of the mirrored faces (x -> -x, iBUG order permuted by
    :data:`reenact.faces.landmarks68.MIRROR_68`)."""
    from reenact.faces.landmarks68 import MIRROR_68

    flip = torch.tensor([-1.0, 1.0, 1.0], dtype=basis.dtype)
    return basis[MIRROR_68] * flip[:, None]


def mirror_map(basis: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The coefficient map of the mirror: ``T`` ``(n, n)`` with ``basis @ (T c)`` = mirror of ``basis @ c`` for
    ``basis`` ``(68, 3, n)`` (least squares), and the relative part of the mirrored basis outside its span (0 when
    the basis is closed under mirroring)."""
    flat, mirrored = basis.reshape(-1, basis.shape[-1]), mirror_basis(basis).reshape(-1, basis.shape[-1])
    t = torch.linalg.pinv(flat, rtol=1e-8) @ mirrored
    outside = float((flat @ t - mirrored).norm() / mirrored.norm().clamp_min(1e-30))
    return t, outside


def mirror_prior(basis: torch.Tensor, antisymmetric: float = ANTISYMMETRIC_PRIOR) -> torch.Tensor:
    """Unit prior precision ``(n, n)`` of the coefficients ``c`` of ``basis`` ``(68, 3, n)`` under which a face and
    its mirror image are equally likely: ``|c+|^2 + antisymmetric |c-|^2`` with ``c+- = (c +- T c) / 2`` the
    coefficients of the face's symmetric and antisymmetric parts (``T`` = :func:`mirror_map`: the mirror image of
    the face with coefficients ``c`` has ``T c``, which keeps ``c+`` and negates ``c-``). With ``antisymmetric`` 1
    this is ``(|c|^2 + |T c|^2) / 2``, the model's prior averaged with its mirror image.

    The plain prior ``|c|^2 = |c+|^2 + |c-|^2 + 2 c+ . c-`` is not mirror-symmetric when the components are not
    mirror pairs (``T`` not orthogonal; the procedural model's random identity fields before they were paired): its
    cross term favours some asymmetric shapes over their mirror images, which moved the fitted yaw by ~3 degrees
    between real frames and their mirrors. With mirror-paired components (``T`` orthogonal on the observed
    directions, the procedural identity basis) this prior is ``|c|^2`` there. With
    a basis closed under mirroring, the fit of a mirrored image under this prior is exactly the mirror of the fit
    (the procedural identity basis is; its expression basis is not quite, ~7 % of the mirrored landmark motion lies
    outside it: there ``T`` is a least-squares map, and the symmetrised expression prior took the real clips' mirror
    roll gap from ~0.4 to ~0.02 degrees). Directions that do not move the landmarks keep the unit prior."""
    t, _ = mirror_map(basis)
    flat = basis.reshape(-1, basis.shape[-1])
    eye = torch.eye(len(t), dtype=t.dtype)
    even, odd = (eye + t) / 2, (eye - t) / 2
    unobserved = eye - torch.linalg.pinv(flat, rtol=1e-8) @ flat          # projector onto the unobserved directions
    return even.T @ even + antisymmetric * odd.T @ odd + unobserved


@dataclass(frozen=True)
class ContourLines:
    """Per jaw landmark a line of C candidate vertices, from the landmark vertex (c = 0) inwards: rows of the mean
    ``(17, C, 3)``, id ``(17, C, 3, 80)`` and exp ``(17, C, 3, 64)`` bases, and the model-space outward direction
    of each line ``(17, 3)`` (z = 0)."""

    mean: torch.Tensor
    id: torch.Tensor
    exp: torch.Tensor
    outward: torch.Tensor


def contour_lines(model: MorphableModel, samples: int = CONTOUR_SAMPLES, inner: float = CONTOUR_INNER
                  ) -> ContourLines:
    """The jaw points' candidate lines (landmark marching, Zhu et al. 2015 / 3DDFA): per jaw landmark, the mesh
    vertices under ``samples`` points of the segment from its vertex towards the face's centre line (the model's
    x = 0, y = 0 in the frontal view), down to ``inner`` of its distance, each the vertex nearest in (x, y) among the
    front-facing ones (z above the landmark's). In a frontal view the landmark vertex is the outermost of its line;
    as the head turns, the visible contour on the far side moves inwards along the line (:func:`select_contour`)."""
    index = model.landmark_indices[JAW].cpu()
    mean = model.mean_shape.detach().cpu().to(torch.float64)
    start = mean[index]                                                            # 17 x 3
    fractions = torch.linspace(1.0, inner, samples, dtype=torch.float64)
    targets = start[:, None, :2] * fractions[:, None]                             # 17 x C x 2
    front = mean[:, 2][None, None] >= start[:, 2][:, None, None] - 1e-9            # 17 x 1 x V
    distance = torch.cdist(targets, mean[None, :, :2].expand(len(start), -1, -1))  # 17 x C x V
    ids = torch.where(front, distance, torch.inf).argmin(-1)                       # 17 x C
    ids[:, 0] = index
    outward = torch.cat([start[:, :2], torch.zeros(len(start), 1, dtype=torch.float64)], 1)
    return ContourLines(mean=mean[ids], id=_vertex_rows(model.id_base, ids), exp=_vertex_rows(model.exp_base, ids),
                        outward=outward / outward.norm(dim=1, keepdim=True))


def _as64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().cpu().to(torch.float64)


def _vertex_rows(basis: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """The rows of vertices ``ids`` (any shape) of a Deep3D-layout ``(3V, k)`` basis: ``(*ids.shape, 3, k)``
    float64 on the CPU."""
    return _as64(vertex_rows(basis, ids)).reshape(*ids.shape, 3, basis.shape[-1])


def landmark_bases(model: MorphableModel) -> LandmarkBases:
    """Slice the landmark vertices' rows out of the model's bases (no full mesh is evaluated)."""
    index = model.landmark_indices.cpu()
    bases = LandmarkBases(mean=_as64(model.mean_shape[index]), id=_vertex_rows(model.id_base, index),   # 68 x 3 x 80
                          exp=_vertex_rows(model.exp_base, index))                                      # 68 x 3 x 64
    offsets = None if model.landmark_offsets is None else _as64(model.landmark_offsets)
    return replace(bases, id_prior=mirror_prior(bases.id), exp_prior=mirror_prior(bases.exp),
                   contour=contour_lines(model), offsets=offsets)


def landmark_points(bases: LandmarkBases, coeffs, camera: PerspectiveCamera, contour: bool = True) -> torch.Tensor:
    """The fit's 68 landmarks of ``coeffs`` ``(T, 257)`` in the model frame, before pose ``(T, 68, 3)`` float64
    (pose them as ``P @ R.T + t``): ``bases`` as given (apply :meth:`LandmarkBases.with_offsets` first for the
    detector's points), the jaw points on the visible contour for the coefficients' pose in ``camera`` when
    ``contour`` (:func:`select_contour`), else the landmark vertices."""
    c = torch.as_tensor(np.asarray(coeffs), dtype=torch.float64)
    state = _State(c[0, ID], c[:, EXP], euler_to_matrix(c[:, ANGLE]), c[:, TRANS])
    if len(c) > 1 and not torch.equal(c[:, ID], c[:1, ID].expand_as(c[:, ID])):
        return torch.cat([landmark_points(bases, row[None], camera, contour) for row in c])
    return state.shapes(select_contour(bases, state, camera) if contour and bases.contour is not None else bases)


# ---------------------------------------------------------------- geometry
def skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` -> cross-product matrices ``(..., 3, 3)`` with ``skew(a) @ b = a x b``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vectors ``(..., 3)`` -> ``(..., 3, 3)``."""
    return torch.linalg.matrix_exp(skew(w))


def matrix_to_axis_angle(rotation: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` (angle below 180 degrees) -> rotation vectors ``(..., 3)``."""
    cos = ((rotation.diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    angle = torch.acos(cos)
    v = torch.stack([rotation[..., 2, 1] - rotation[..., 1, 2], rotation[..., 0, 2] - rotation[..., 2, 0],
                     rotation[..., 1, 0] - rotation[..., 0, 1]], -1) / 2          # sin(angle) * axis
    sin = torch.sin(angle)
    scale = torch.where(sin > 1e-8, angle / sin.clamp_min(1e-8), 1.0 + angle.square() / 6)
    return v * scale[..., None]


def weak_perspective_pose(landmarks: torch.Tensor, points: torch.Tensor, camera: PerspectiveCamera,
                          weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form pose of model points seen at ``landmarks``: rotation ``(T, 3, 3)`` and translation ``(T, 3)``.

    Under weak perspective at the depth ``D`` of the points' centroid ``c``, normalised image coordinates
    ``((x - cx) / f, (cy - y) / f)`` are an affine map ``M [P - c; 1]`` with ``M[:, :3] = R[:2] / D``. A weighted
    least-squares fit of ``M`` (T x 2 x 4), the nearest scaled row-orthonormal 2x3 matrix (SVD) and a cross product
    give ``R``; ``D`` and the offset give the centroid's camera position, hence ``t = C - R c``.
    """
    c = (points * weights[:, None]).sum(0) / weights.sum()                           # 3
    design = torch.cat([points - c, torch.ones_like(points[:, :1])], 1)              # 68 x 4
    normalised = torch.stack([(landmarks[..., 0] - camera.cx) / camera.focal,
                              (camera.cy - landmarks[..., 1]) / camera.focal], -1)   # T x 68 x 2
    sw = weights.sqrt()[:, None]
    solution = torch.linalg.lstsq((sw * design).expand(len(landmarks), -1, -1), sw * normalised).solution  # T x 4 x 2
    affine = solution.transpose(1, 2)                                                 # T x 2 x 4
    u, s, vh = torch.linalg.svd(affine[:, :, :3], full_matrices=False)                # T x 2 x 2, T x 2, T x 2 x 3
    rows = u @ vh                                                                     # T x 2 x 3, orthonormal rows
    rotation = torch.cat([rows, torch.linalg.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
    depth = 1.0 / s.mean(-1)                                                          # T
    centre = torch.stack([affine[:, 0, 3] * depth, affine[:, 1, 3] * depth, camera.distance - depth], -1)
    return rotation, centre - rotation @ c


def project(points: torch.Tensor, camera: PerspectiveCamera) -> torch.Tensor:
    """Camera-frame points ``(..., 3)`` -> pixels ``(..., 2)`` (x, y down)."""
    depth = camera.distance - points[..., 2]
    return torch.stack([camera.cx + camera.focal * points[..., 0] / depth,
                        camera.cy - camera.focal * points[..., 1] / depth], -1)


# ---------------------------------------------------------------- the least-squares problem
@dataclass
class _State:
    alpha: torch.Tensor      # 80
    beta: torch.Tensor       # T x 64
    rotation: torch.Tensor   # T x 3 x 3
    trans: torch.Tensor      # T x 3

    def shapes(self, bases: LandmarkBases) -> torch.Tensor:
        """Unposed landmarks P ``(T, 68, 3)``."""
        shapes = bases.mean + bases.id @ self.alpha + torch.einsum("kcn,tn->tkc", bases.exp, self.beta)
        if bases.jaw is not None:                                  # the jaw points' per-frame vertices
            mean, ids, exp = bases.jaw
            jaw = mean + ids @ self.alpha + torch.einsum("tkcn,tn->tkc", exp, self.beta)
            shapes = torch.cat([jaw, shapes[:, JAW.stop:]], 1)
        return shapes

    def posed(self, bases: LandmarkBases) -> torch.Tensor:
        return self.shapes(bases) @ self.rotation.transpose(1, 2) + self.trans[:, None]   # T x 68 x 3

    def step(self, d_alpha: torch.Tensor, d_frame: torch.Tensor) -> "_State":
        """Apply an update: alpha += d_alpha, per frame beta += d[:64], R <- exp([w]x) R, t += d[67:70]."""
        return _State(self.alpha + d_alpha, self.beta + d_frame[:, :NUM_EXP],
                      axis_angle_to_matrix(d_frame[:, NUM_EXP:NUM_EXP + 3]) @ self.rotation,
                      self.trans + d_frame[:, NUM_EXP + 3:])


@dataclass(frozen=True)
class _Problem:
    bases: LandmarkBases
    camera: PerspectiveCamera
    target: torch.Tensor         # T x 68 x 2 observed landmarks
    sqrt_w: torch.Tensor         # 68 (or T x 68 with per-frame weights), sqrt(w_k) / sigma
    id_precision: torch.Tensor   # 80 x 80, prior precision of alpha (1 / s_id^2 times the unit prior matrix)
    exp_precision: torch.Tensor  # 64 x 64, prior precision of each beta_t
    depth_mean: torch.Tensor     # T, prior mean of trans z
    depth_precision: torch.Tensor  # T, 1 / (prior std of trans z)^2 (0: flat)
    links: torch.Tensor = None   # T - 1 bool: frames t and t + 1 are neighbours (temporal term)
    model_bases: LandmarkBases | None = None   # with contour lines: bases re-selected per frame (select_contour)
    step_precision: tuple[float, float, float] = (0.0, 0.0, 0.0)   # 1 / std^2 of rotation (rad), trans, exp steps

    def residuals(self, state: _State) -> torch.Tensor:
        """Whitened residuals ``(T, 68, 2)``."""
        return (project(state.posed(self.bases), self.camera) - self.target) * self.sqrt_w[..., None]

    def frame_costs(self, state: _State) -> torch.Tensor:
        """Per-frame data + expression prior cost ``(T,)`` (the identity prior is added by :meth:`cost`)."""
        return (self.residuals(state).square().sum((1, 2)) + ((state.beta @ self.exp_precision) * state.beta).sum(1)
                + self.depth_precision * (state.trans[:, 2] - self.depth_mean).square())

    def cost(self, state: _State) -> torch.Tensor:
        return (self.frame_costs(state).sum() + state.alpha @ self.id_precision @ state.alpha
                + self.temporal_cost(state))

    def step_differences(self, state: _State) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Between frames t and t + 1 ``(T - 1, .)``: rotation ``log(R_t R_t+1^T)``, translation and expression
        differences."""
        rotation = matrix_to_axis_angle(state.rotation[:-1] @ state.rotation[1:].transpose(1, 2))
        return rotation, state.trans[:-1] - state.trans[1:], state.beta[:-1] - state.beta[1:]

    def temporal_cost(self, state: _State) -> torch.Tensor:
        """sum over linked neighbours of |log(R_t R_t+1^T)|^2 / s_r^2 + |t_t - t_t+1|^2 / s_t^2 + |b_t - b_t+1|^2 / s_b^2."""
        if self.links is None or not any(self.step_precision) or len(state.beta) < 2:
            return torch.zeros((), dtype=state.beta.dtype)
        terms = [p * d.square().sum(1) for p, d in zip(self.step_precision, self.step_differences(state))]
        return (sum(terms) * self.links).sum()

    def linearise(self, state: _State) -> "_Linearisation":
        b, cam = self.bases, self.camera
        rotated = state.shapes(b) @ state.rotation.transpose(1, 2)                    # T x 68 x 3 (R P)
        q = rotated + state.trans[:, None]
        depth = cam.distance - q[..., 2]
        zero = torch.zeros_like(depth)
        d_proj = torch.stack([cam.focal / depth, zero, cam.focal * q[..., 0] / depth**2,
                              zero, -cam.focal / depth, -cam.focal * q[..., 1] / depth**2], -1)
        d_proj = d_proj.unflatten(-1, (2, 3)) * self.sqrt_w[..., None, None]         # T x 68 x 2 x 3
        residuals = (project(q, cam) - self.target) * self.sqrt_w[..., None]
        return _Linearisation(residuals, d_proj, d_proj @ state.rotation[:, None], rotated)


def select_contour(bases: LandmarkBases, state: _State, camera: PerspectiveCamera) -> LandmarkBases:
    """The bases with per-frame rows ``(T, 17, ...)`` for the jaw points, which sit on the visible contour of the face at the
    state's shape and pose: per jaw line (:class:`ContourLines`) the candidate vertex that projects outermost along
    the line's outward direction as seen in the image (the silhouette, where the line's curve turns away from the
    camera; in a frontal view the landmark vertex itself). The other 51 rows are the fixed landmark vertices."""
    lines = bases.contour
    shapes = (lines.mean + lines.id @ state.alpha
              + torch.einsum("kcdn,tn->tkcd", lines.exp, state.beta))                 # T x 17 x C x 3
    rotation = state.rotation[:, None]                                                 # T x 1 x 3 x 3
    pixels = project(shapes @ rotation.transpose(-1, -2) + state.trans[:, None, None], camera)   # T x 17 x C x 2
    outward = (lines.outward @ state.rotation.transpose(1, 2))[..., :2] * lines.outward.new_tensor([1.0, -1.0])
    pick = (pixels * outward[:, :, None]).sum(-1).argmax(-1)                           # T x 17 (y down in pixels)
    jaw = torch.arange(len(lines.mean))
    return replace(bases, jaw=(lines.mean[jaw, pick], lines.id[jaw, pick], lines.exp[jaw, pick]))


def _reselect(problem: _Problem, state: _State) -> _Problem:
    """The problem with its jaw points re-selected on the contour for ``state`` (unchanged without contour lines)."""
    if problem.model_bases is None:
        return problem
    return replace(problem, bases=select_contour(problem.model_bases, state, problem.camera))


@dataclass(frozen=True)
class _Linearisation:
    """First-order terms at a state. ``r`` whitened residuals ``(T, 68, 2)``; ``d_proj`` = d r / d Q ``(T, 68, 2, 3)``;
    ``d_shape`` = d r / d P = d_proj R ``(T, 68, 2, 3)``; ``rotated`` = R P ``(T, 68, 3)``."""

    r: torch.Tensor
    d_proj: torch.Tensor
    d_shape: torch.Tensor
    rotated: torch.Tensor

    def pose_jacobian(self) -> torch.Tensor:
        """d r / d (w, t) ``(T, 136, 6)`` for the update R <- exp([w]x) R, t <- t + dt (d Q / d w = -[R P]x)."""
        d_q = torch.cat([-skew(self.rotated), torch.eye(3, dtype=self.r.dtype).expand(*self.rotated.shape[:2], 3, 3)],
                        -1)                                                           # T x 68 x 3 x 6
        return (self.d_proj @ d_q).flatten(1, 2)                                      # T x 136 x 6

    def frame_jacobian(self, bases: LandmarkBases) -> torch.Tensor:
        """d r / d (beta, w, t) ``(T, 136, 70)``."""
        return torch.cat([_per_landmark(self.d_shape, bases.exp, bases.jaw and bases.jaw[2]),
                          self.pose_jacobian()], -1)

    def alpha_jacobian(self, bases: LandmarkBases) -> torch.Tensor:
        """d r / d alpha ``(T, 136, 80)``."""
        return _per_landmark(self.d_shape, bases.id, bases.jaw and bases.jaw[1])


def _per_landmark(d_shape: torch.Tensor, basis: torch.Tensor, jaw: torch.Tensor | None = None) -> torch.Tensor:
    """``d_shape (T, 68, 2, 3)`` times each landmark's basis rows ``(68, 3, n)`` -> ``(T, 136, n)``; ``jaw``
    ``(T, 17, 3, n)``: per-frame rows of the jaw points instead."""
    t = d_shape.shape[0]
    per_k = d_shape.permute(1, 0, 2, 3).reshape(NUM_LANDMARKS, 2 * t, 3) @ basis        # 68 x 2T x n
    out = per_k.reshape(NUM_LANDMARKS, t, 2, -1).permute(1, 0, 2, 3)                     # T x 68 x 2 x n
    if jaw is not None:
        out = torch.cat([d_shape[:, JAW] @ jaw, out[:, JAW.stop:]], 1)
    return out.reshape(t, 2 * NUM_LANDMARKS, -1)


def _frame_priors(problem: _Problem, state: _State) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame prior precisions and gradients, both ``(T, 70)`` (beta, w, t): the diagonal of the depth prior's and
    the temporal term's Hessian, and the gradient of every prior (the expression prior's full 64 x 64 precision is
    added to the Hessian by :func:`_normal_equations`)."""
    precision = torch.zeros(len(state.beta), NUM_FRAME, dtype=state.beta.dtype)
    precision[:, -1] = problem.depth_precision
    gradient = torch.zeros_like(precision)
    gradient[:, :NUM_EXP] = state.beta @ problem.exp_precision
    gradient[:, -1] = problem.depth_precision * (state.trans[:, 2] - problem.depth_mean)
    if problem.links is not None and any(problem.step_precision) and len(state.beta) > 1:
        step_precision, step_gradient = _temporal_terms(problem, state)
        precision, gradient = precision + step_precision, gradient + step_gradient
    return precision, gradient


def _temporal_terms(problem: _Problem, state: _State) -> tuple[torch.Tensor, torch.Tensor]:
    """The temporal term's per-frame diagonal ``(T, 70)`` (the number of linked neighbours times the step
    precision; :func:`temporal_coupling` gives the blocks between neighbours) and its gradient ``(T, 70)`` (factor 2
    dropped, as everywhere)."""
    rot, trans, beta = problem.step_differences(state)
    link = problem.links.to(state.beta.dtype)[:, None]
    p_rot, p_trans, p_exp = problem.step_precision
    diffs = torch.cat([p_exp * beta, p_rot * rot, p_trans * trans], 1) * link      # (T-1) x 70, order beta, w, t
    gradient = torch.zeros(len(state.beta), NUM_FRAME, dtype=state.beta.dtype)
    gradient[:-1] += diffs
    gradient[1:] -= diffs
    degree = torch.zeros(len(state.beta), dtype=state.beta.dtype)
    degree[:-1] += link[:, 0]
    degree[1:] += link[:, 0]
    return degree[:, None] * _step_weights(problem).to(degree), gradient


def _step_weights(problem: _Problem) -> torch.Tensor:
    """``(70,)`` step precisions in the per-frame order beta, w, t."""
    p_rot, p_trans, p_exp = problem.step_precision
    return torch.cat([torch.full((NUM_EXP,), p_exp), torch.full((3,), p_rot), torch.full((3,), p_trans)]
                     ).to(torch.float64)


def temporal_coupling(problem: _Problem) -> torch.Tensor | None:
    """The temporal term's Gauss-Newton blocks between frames t and t + 1: ``-diag(c_t)`` with ``c`` ``(T - 1, 70)``
    (the step precisions where linked, else 0); None without a temporal term. The rotation step's Jacobian is taken
    as the identity (exact for small steps between neighbours)."""
    if problem.links is None or not any(problem.step_precision) or len(problem.target) < 2:
        return None
    return problem.links.to(torch.float64)[:, None] * _step_weights(problem)


def _normal_equations(problem: _Problem, state: _State, pose_only: bool = False):
    """Gradient and Gauss-Newton blocks of the energy (factor 2 dropped): g_a, g_f, H_aa, H_af, H_ff.

    With ``pose_only`` the per-frame blocks are the 6 pose unknowns and the alpha blocks are None.
    The bases may be per frame (the jaw points' vertices of :func:`select_contour`).
    """
    lin = problem.linearise(state)
    r = lin.r.flatten(1)                                                              # T x 136
    precision, prior_gradient = _frame_priors(problem, state)
    jf = lin.pose_jacobian() if pose_only else lin.frame_jacobian(problem.bases)      # T x 136 x {6, 70}
    if pose_only:
        precision, prior_gradient = precision[:, NUM_EXP:], prior_gradient[:, NUM_EXP:]
    g_f = (jf.transpose(1, 2) @ r[..., None])[..., 0] + prior_gradient
    h_ff = jf.transpose(1, 2) @ jf + torch.diag_embed(precision)                      # T x n x n
    if pose_only:
        return None, g_f, None, None, h_ff
    h_ff[:, :NUM_EXP, :NUM_EXP] += problem.exp_precision
    ja = lin.alpha_jacobian(problem.bases)                                           # T x 136 x 80
    flat = ja.flatten(0, 1)                                                           # 136T x 80
    h_aa = flat.T @ flat + problem.id_precision
    g_a = flat.T @ r.reshape(-1) + problem.id_precision @ state.alpha                 # 80
    h_af = ja.transpose(1, 2) @ jf                                                    # T x 80 x 70
    return g_a, g_f, h_aa, h_af, h_ff


def _damped(h: torch.Tensor, mu: torch.Tensor | float) -> torch.Tensor:
    """Marquardt damping ``H + mu diag(H)`` (plus a tiny ridge so exactly unobserved directions stay solvable)."""
    diag = h.diagonal(dim1=-2, dim2=-1)
    mu = torch.as_tensor(mu, dtype=h.dtype).reshape(-1, 1) if h.ndim > 2 else mu     # per-block damping
    return h + torch.diag_embed(mu * diag + 1e-9)


def _frame_mask(config: FitConfig) -> torch.Tensor:
    """Which of the 70 per-frame unknowns are free in the joint stage."""
    mask = torch.ones(NUM_FRAME, dtype=torch.bool)
    mask[:NUM_EXP] = config.fit_expression
    return mask


def _solve_frames(h_ff: torch.Tensor, rhs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Solve the per-frame blocks ``H_ff x = rhs`` (``(T, 70, 70)``, ``(T, 70, n)``) on the free unknowns only."""
    if bool(mask.all()):
        return torch.linalg.solve(h_ff, rhs)
    out = torch.zeros_like(rhs)
    free = mask.nonzero()[:, 0]
    out[:, free] = torch.linalg.solve(h_ff[:, free][:, :, free], rhs[:, free])
    return out


def _pose_stage(problem: _Problem, state: _State, config: FitConfig) -> tuple[_Problem, _State, int]:
    """LM on the per-frame poses only (alpha, beta fixed): frames are independent, each with its own damping. The
    jaw points are re-selected on the contour before every step (and the problem with the last selection returned)."""
    links = problem.links
    problem = replace(problem, links=None)        # the temporal term couples frames: the joint stage adds it
    mu = torch.full((len(problem.target),), config.damping, dtype=torch.float64)
    for it in range(config.pose_iterations):
        problem = _reselect(problem, state)
        costs = problem.frame_costs(state)
        _, g_p, _, _, h_pp = _normal_equations(problem, state, pose_only=True)   # cheap: 6 unknowns per frame
        d_pose = -torch.linalg.solve(_damped(h_pp, mu), g_p)                         # T x 6
        trial = state.step(torch.zeros_like(state.alpha), torch.cat([torch.zeros_like(state.beta), d_pose], 1))
        new = problem.frame_costs(trial)
        better = new < costs
        keep = better[:, None]
        state = _State(state.alpha, state.beta, torch.where(keep[..., None], trial.rotation, state.rotation),
                       torch.where(keep, trial.trans, state.trans))
        converged = bool(((costs - new) <= config.tolerance * costs).all())   # rejected frames count as converged
        mu = torch.where(better, (mu / 3).clamp_min(1e-9), mu * 4)
        if converged:
            return replace(_reselect(problem, state), links=links), state, it + 1
    return replace(_reselect(problem, state), links=links), state, config.pose_iterations


def _joint_stage(problem: _Problem, state: _State, config: FitConfig) -> tuple[_Problem, _State, int]:
    """LM on alpha (shared) and every frame's beta and pose, via the Schur complement of the alpha block. The jaw
    points are re-selected on the contour after every accepted step (and the problem with the last selection
    returned)."""
    mask = _frame_mask(config)
    problem = _reselect(problem, state)
    mu, cost = config.damping, problem.cost(state)
    blocks = _normal_equations(problem, state)
    coupling = temporal_coupling(problem)
    for it in range(config.iterations):
        d_alpha, d_frame = _joint_step(*blocks, mu, mask, config.fit_identity, coupling)
        trial = state.step(d_alpha, d_frame)
        new = problem.cost(trial)
        if new >= cost:                      # rejected: more damping, same linearisation
            mu *= 4
            continue
        converged = bool(cost - new <= config.tolerance * cost)
        state, mu = trial, max(mu / 3, 1e-9)
        problem = _reselect(problem, state)
        if converged:
            return problem, state, it + 1
        cost = problem.cost(state)
        blocks = _normal_equations(problem, state)
    return problem, state, config.iterations


def _solve_chain(h_ff: torch.Tensor, coupling: torch.Tensor | None, rhs: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
    """Solve the block-tridiagonal system with diagonal blocks ``h_ff`` ``(T, n, n)`` and blocks ``-diag(c_t)``
    between frames t and t + 1 (``coupling`` ``(T - 1, n)``, :func:`temporal_coupling`) for ``rhs`` ``(T, n, m)``, on
    the free unknowns (``mask``) only: block Thomas algorithm, ``x_t = Y_t + Z_t x_t+1`` after a forward sweep."""
    if coupling is None or not bool(coupling.any()):
        return _solve_frames(h_ff, rhs, mask)
    free = mask.nonzero()[:, 0]
    diag, right, c = h_ff[:, free][:, :, free], rhs[:, free], coupling[:, free]
    count, n = len(diag), len(free)
    zs, ys = [], []
    block, b = diag[0], right[0]
    for t in range(count - 1):
        solved = torch.linalg.solve(block, torch.cat([torch.diag(c[t]), b], 1))      # D'^-1 [diag(c_t), b'_t]
        zs.append(solved[:, :n])
        ys.append(solved[:, n:])
        block = diag[t + 1] - c[t][:, None] * zs[-1]
        b = right[t + 1] + c[t][:, None] * ys[-1]
    x = [torch.linalg.solve(block, b)]
    for t in range(count - 2, -1, -1):
        x.append(ys[t] + zs[t] @ x[-1])
    out = torch.zeros_like(rhs)
    out[:, free] = torch.stack(x[::-1])
    return out


def _joint_step(g_a, g_f, h_aa, h_af, h_ff, mu: float, mask: torch.Tensor, fit_identity: bool,
                coupling: torch.Tensor | None = None):
    """The damped Gauss-Newton step (d_alpha ``(80,)``, d_frame ``(T, 70)``) by block elimination:
    d_f = H_ff^-1 (-g_f - H_fa d_a) and (H_aa - H_af H_ff^-1 H_fa) d_a = -g_a + H_af H_ff^-1 g_f, where H_ff is
    block-diagonal, or block-tridiagonal with the temporal term's ``coupling`` (:func:`temporal_coupling`)."""
    h_ff = _damped(h_ff, mu)
    if not fit_identity:
        return torch.zeros_like(g_a), -_solve_chain(h_ff, coupling, g_f[..., None], mask)[..., 0]
    solved = _solve_chain(h_ff, coupling, torch.cat([h_af.transpose(1, 2), g_f[..., None]], -1), mask)  # T x 70 x 81
    schur = _damped(h_aa, mu) - (h_af @ solved[..., :NUM_ID]).sum(0)                            # 80 x 80
    d_alpha = torch.linalg.solve(schur, -g_a + (h_af @ solved[..., NUM_ID:]).sum((0, 2)))
    return d_alpha, -solved[..., NUM_ID] - solved[..., :NUM_ID] @ d_alpha


# ---------------------------------------------------------------- public entry point
def landmark_weights(config: FitConfig) -> torch.Tensor:
    """Per-landmark weights ``(68,)``: ``jaw_weight`` on the jaw outline, 1 elsewhere."""
    w = torch.ones(NUM_LANDMARKS, dtype=torch.float64)
    w[JAW] = config.jaw_weight
    return w


def fit_landmarks(landmarks, image_size: int, model: MorphableModel | LandmarkBases,
                  config: FitConfig = FitConfig(), camera: PerspectiveCamera | None = None,
                  links=None, identity=None) -> FitResult:
    """Fit shared identity, per-frame expression and pose to 68 landmarks of T frames of one chunk.

    Args:
        landmarks: ``(T, 68, 2)`` pixels (x, y down, pixel centres at +0.5), iBUG-68 order; all finite.
        image_size: side of the square image the landmarks are in; the camera is ``PerspectiveCamera.deep3d``
            of it unless ``camera`` is given. Pixel settings of ``config`` scale by ``image_size / 256``.
        model: the morphable model, or its :func:`landmark_bases` (precomputed once per actor).
        config: :class:`FitConfig`.
        links: ``(T - 1,)`` bool, frames t and t + 1 are neighbours in time (the temporal term joins them);
            default: all, i.e. the frames are consecutive.
        identity: ``(80,)`` a known identity alpha (e.g. fitted once on the whole video): kept fixed, only
            expression and pose are fitted. With it, the pose no longer depends on how the video's frames are
            grouped into chunks (on real clips 8-frame chunks then agree with the whole clip to ~0.1 degrees).
    Returns:
        :class:`FitResult` with ``(T, 257)`` coefficients for that camera.
    """
    target = torch.as_tensor(np.asarray(landmarks), dtype=torch.float64)
    if target.ndim != 3 or target.shape[1:] != (NUM_LANDMARKS, 2) or len(target) == 0:
        raise ValueError(f"expected landmarks of shape (T, 68, 2) with T >= 1, got {tuple(target.shape)}")
    if not torch.isfinite(target).all():
        raise ValueError("landmarks contain NaN or inf; drop frames without a face before fitting")
    if int(image_size) <= 0:
        raise ValueError(f"expected a positive image size, got {image_size}")
    bases = model if isinstance(model, LandmarkBases) else landmark_bases(model)
    bases = bases.with_offsets() if config.landmark_offsets else bases
    camera = camera or PerspectiveCamera.deep3d(int(image_size))
    links = torch.ones(len(target) - 1, dtype=torch.bool) if links is None else torch.as_tensor(links, dtype=torch.bool)
    if links.shape != (len(target) - 1,):
        raise ValueError(f"expected links of shape ({len(target) - 1},), got {tuple(links.shape)}")
    if identity is not None:
        identity = torch.as_tensor(np.asarray(identity, dtype=np.float64))
        if identity.shape != (NUM_ID,) or not torch.isfinite(identity).all():
            raise ValueError(f"expected a finite identity of shape ({NUM_ID},), got {tuple(identity.shape)}")
        config = replace(config, fit_identity=False)
    with torch_threads(config.threads):
        return _fit(target, int(image_size), bases, config, camera, links, identity)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch with ``count`` intra-op threads (0: unchanged), restoring the previous setting."""
    previous = torch.get_num_threads()
    if count > 0:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def id_prior_weight(frames: int, config: FitConfig) -> float:
    """How many times the identity prior counts for a fit of ``frames`` frames (see ``FitConfig.id_prior_frames`` and
    ``FitConfig.id_prior_min``)."""
    return max(config.id_prior_min, frames / config.id_prior_frames if config.id_prior_frames > 0 else 1.0)


def step_precisions(config: FitConfig) -> tuple[float, float, float]:
    """``1 / std^2`` of the temporal term's rotation (radians), translation and expression steps (0 where off)."""
    def precision(std: float) -> float:
        return 1.0 / std**2 if std > 0 else 0.0
    return precision(np.deg2rad(config.rotation_step)), precision(config.trans_step), precision(config.exp_step)


def _fit(target: torch.Tensor, image_size: int, bases: LandmarkBases, config: FitConfig,
         camera: PerspectiveCamera, links: torch.Tensor | None, identity: torch.Tensor | None = None) -> FitResult:
    sigma = config.landmark_sigma * image_size / REFERENCE_SIZE
    weights = landmark_weights(config)
    rotation, trans = weak_perspective_pose(target, bases.mean, camera, weights)
    depth_std = config.depth_prior * (camera.distance - trans[:, 2])
    num = len(target)
    problem = _Problem(bases, camera, target, weights.sqrt() / sigma,
                       id_precision=bases.id_prior * (id_prior_weight(num, config) / config.id_prior**2),
                       exp_precision=bases.exp_prior / config.exp_prior**2, depth_mean=trans[:, 2].clone(),
                       depth_precision=depth_std.pow(-2) if config.depth_prior > 0 else torch.zeros_like(depth_std),
                       links=links, step_precision=step_precisions(config),
                       model_bases=bases if config.jaw_contour and bases.contour is not None else None)
    alpha = torch.zeros(NUM_ID, dtype=torch.float64) if identity is None else identity.clone()
    state = _State(alpha, torch.zeros(num, NUM_EXP, dtype=torch.float64), rotation, trans)
    problem, state, pose_its = _pose_stage(problem, state, config)
    joint_its = 0
    if config.fit_identity or config.fit_expression:
        problem, state, joint_its = _joint_stage(problem, state, config)
        frame_weights = outlier_weights(problem, state, config.outlier_frames)
        noise = residual_sigma(problem, state, frame_weights)
        if config.estimate_sigma and (noise > sigma * 1.05 or bool((frame_weights < 1).any())):
            noise = max(noise, sigma)
            problem = replace(problem, sqrt_w=weights.sqrt() * frame_weights.sqrt()[:, None] / noise)
            problem, state, more = _joint_stage(problem, state, config)
            joint_its += more
        problem, state, more = _bounded_identity(problem, state, config)
        joint_its += more
    return _result(problem, state, pose_its + joint_its)


def _bounded_identity(problem: _Problem, state: _State, config: FitConfig) -> tuple[_Problem, _State, int]:
    """Refit with a stronger identity prior while the identity's RMS exceeds ``config.id_rms_bound`` (see there)."""
    iterations = 0
    for _ in range(config.id_bound_steps if config.fit_identity and config.id_rms_bound > 0 else 0):
        rms = float(state.alpha.square().mean().sqrt())
        if rms <= config.id_rms_bound:
            break
        problem = replace(problem, id_precision=problem.id_precision * (rms / config.id_rms_bound) ** 4)
        problem, state, more = _joint_stage(problem, state, config)
        iterations += more
    return problem, state, iterations


def frame_rmse(problem: _Problem, state: _State) -> torch.Tensor:
    """``(T,)`` landmark RMSE in pixels, ``sqrt(mean_k |pi(Q_tk) - x_tk|^2)``."""
    return (project(state.posed(problem.bases), problem.camera) - problem.target).square().sum(-1).mean(-1).sqrt()


def outlier_weights(problem: _Problem, state: _State, factor: float) -> torch.Tensor:
    """``(T,)`` weights of the frames in the refit: ``min(1, (factor * median RMSE / RMSE_t)^4)``, redescending: a
    frame whose landmarks are garbage (shuffled points, a false detection) costs less the worse it fits, so it
    cannot pull the shared identity out of the prior (1 everywhere when ``factor`` is 0 or for fewer than 3
    frames). Its pose still follows its own points, weakly, and its neighbours."""
    rmse = frame_rmse(problem, state)
    if factor <= 0 or len(rmse) < 3:
        return torch.ones_like(rmse)
    limit = factor * rmse.median().clamp_min(1e-9)
    return (limit / rmse.clamp_min(1e-12)).pow(4).clamp(max=1.0)


def residual_sigma(problem: _Problem, state: _State, frame_weights: torch.Tensor | None = None) -> float:
    """Per-coordinate RMS of the landmark residuals in pixels (the noise the data show), frames weighted."""
    squares = frame_rmse(problem, state).square()
    weights = torch.ones_like(squares) if frame_weights is None else frame_weights
    return float((0.5 * (weights * squares).sum() / weights.sum()).sqrt())


def _result(problem: _Problem, state: _State, iterations: int) -> FitResult:
    fitted = project(state.posed(problem.bases), problem.camera)                     # T x 68 x 2
    rmse = (fitted - problem.target).square().sum(-1).mean(-1).sqrt()
    coeffs = torch.zeros(len(fitted), NUM_COEFFS, dtype=torch.float64)
    coeffs[:, ID] = state.alpha
    coeffs[:, EXP] = state.beta
    coeffs[:, ANGLE] = matrix_to_euler(state.rotation)
    coeffs[:, TRANS] = state.trans
    return FitResult(coeffs=coeffs.to(torch.float32).numpy(), rmse=rmse.numpy(), fitted=fitted.numpy(),
                     iterations=iterations)


# ---------------------------------------------------------------- the estimator
@dataclass(frozen=True)
class FaceLandmarks:
    """68 points of B frames and where they come from: ``points`` ``(B, 68, 2)`` and ``boxes`` ``(B, 4)`` (NaN where
    no face is trusted), ``status`` / ``reason`` of the cross-checked detection."""

    points: torch.Tensor
    boxes: torch.Tensor
    status: tuple[Status, ...]
    reason: tuple[str, ...]


def links_from_indices(frame_index) -> torch.Tensor:
    """``(T - 1,)`` bool: consecutive entries of ``frame_index`` (sorted) are neighbouring frames."""
    index = torch.as_tensor(np.asarray(frame_index, dtype=np.int64))
    return (index[1:] - index[:-1]) == 1


class LandmarkFitEstimator:
    """RGB float images of one chunk -> coefficients by fitting the morphable model to dlib's 68 points.

    All images passed to one call are fitted together (one shared identity): pass the frames of one video or chunk,
    in order. Frames of different sizes are fitted in separate groups, each in its frame's Deep3D camera. Faces are
    found by :func:`reenact.faces.detect.cross_check` (both detectors, tracked through the frames when ``track``),
    and every fitted frame passes the plausibility gates of :mod:`reenact.faces.gates` or gets ``implausible`` with
    the reason.

    Args:
        model: morphable model spec for :func:`reenact.face3d.io.load_morphable_model`.
        config: :class:`FitConfig`.
        checks: detection thresholds (:class:`reenact.faces.detect.DetectionChecks`).
        gates: plausibility thresholds (:class:`reenact.faces.gates.Gates`; default ``Gates()``); False: only
            ``config.max_rmse``.
        track: the frames of a call are a video in order (follow the face through them).
        photometric_frames: with images, fit texture and light (:mod:`reenact.faces.photometric`) on this many
            ``ok`` frames spread over the call; tex is shared and every frame gets the mean light (0, the default:
            tex and gamma stay zero, the flat render; the ``landmarks`` row adapter fits them on 4 frames per chunk).
        photometric: :class:`reenact.faces.photometric.PhotometricConfig`.
        symmetric_landmarks: average dlib's points on each frame with those on its mirror image
            (:func:`reenact.faces.landmarks68.landmarks68` ``symmetric``): dlib's predictor is not mirror-symmetric,
            which on real clips moved the fitted yaw by 1-4 degrees between a frame and its mirror.
        assets: asset folder override.
    """

    name = NAME

    def __init__(self, model: str = "procedural-full", config: FitConfig = FitConfig(), *, checks=None,
                 gates=None, track: bool = True, photometric_frames: int = 0, photometric=None,
                 symmetric_landmarks: bool = True, assets: str | None = None):
        from reenact.face3d.io import load_morphable_model
        from reenact.faces.detect import DetectionChecks
        from reenact.faces.gates import Gates
        from reenact.faces.photometric import PhotometricConfig

        self.model_name = model
        self.model = load_morphable_model(model, assets)
        self.bases = landmark_bases(self.model)
        self.photometric_frames = int(photometric_frames)
        self.symmetric_landmarks = symmetric_landmarks
        self.photometric = photometric or PhotometricConfig()
        self.config = config
        self.checks = checks or DetectionChecks()
        self.gates = Gates() if gates is None else (gates or None)
        self.track = track

    def estimate_coeffs(self, images: ImageBatch) -> torch.Tensor:
        """``(B, 257)`` float32; NaN rows where no face was found."""
        return self.estimate(images).coeffs

    def landmarks(self, images: ImageBatch, track: bool | None = None) -> torch.Tensor:
        """dlib's 68 points ``(B, 68, 2)`` (continuous pixels) in the cross-checked boxes, NaN rows where no face."""
        return self.detect_landmarks(images, track).points

    def detect_landmarks(self, images: ImageBatch, track: bool | None = None) -> FaceLandmarks:
        """Cross-checked face boxes and dlib's 68 points in them."""
        from reenact.faces.detect import cross_check
        from reenact.faces.landmarks68 import landmarks68

        images = image_list(images)
        faces = cross_check(images, self.checks, track=self.track if track is None else track)
        points = landmarks68(images, faces.boxes, symmetric=self.symmetric_landmarks)
        return FaceLandmarks(points, faces.boxes, faces.status, faces.reason)

    def estimate(self, images: ImageBatch, landmarks: torch.Tensor | None = None, *,
                 frame_index=None, identity=None) -> CoeffEstimate:
        """Detect (unless ``landmarks`` ``(B, 68, 2)`` are given) and fit B frames with one shared identity
        (``identity`` ``(80,)``: that one, fixed). ``frame_index`` (default ``0..B-1``) says which frames are
        neighbours for the temporal term."""
        images = image_list(images)
        sizes = [(int(im.shape[2]), int(im.shape[1])) for im in images]
        if landmarks is not None:
            return self.fit_points(torch.as_tensor(landmarks, dtype=torch.float64), sizes, frame_index=frame_index,
                                   identity=identity)
        found = self.detect_landmarks(images)
        estimate = self.fit_points(found.points, sizes, boxes=found.boxes, frame_index=frame_index,
                                   reasons=found.reason, statuses=found.status, identity=identity)
        return self.fit_texture(images, estimate) if self.photometric_frames > 0 else estimate

    def fit_texture(self, images: list[torch.Tensor], estimate: CoeffEstimate) -> CoeffEstimate:
        """Texture (shared) and light (mean of the picked frames) from ``photometric_frames`` ``ok`` frames of one
        size, written into every fitted frame of that size."""
        from reenact.faces.photometric import photometric_fit

        ok = [i for i in range(len(images)) if estimate.status[i] == Status.OK]
        if not ok:
            return estimate
        size = images[ok[0]].shape
        ok = [i for i in ok if images[i].shape == size]
        pick = [ok[k] for k in np.unique(np.linspace(0, len(ok) - 1, min(self.photometric_frames, len(ok))).round()
                                          .astype(int))]
        result = photometric_fit(torch.stack([images[i] for i in pick]), estimate.coeffs[pick],
                                 estimate.landmarks[pick], self.model, self.photometric)
        coeffs = estimate.coeffs.clone()
        fitted = [i for i in range(len(images)) if images[i].shape == size and torch.isfinite(coeffs[i]).all()]
        coeffs[fitted, TEX] = result.coeffs[0, TEX]
        coeffs[fitted, GAMMA] = result.coeffs[:, GAMMA].mean(0)
        return replace(estimate, coeffs=coeffs)

    def fit_points(self, landmarks: torch.Tensor, sizes: list[tuple[int, int]], *, boxes: torch.Tensor | None = None,
                   frame_index=None, reasons=None, statuses=None, identity=None) -> CoeffEstimate:
        """Fit given 68 points ``(B, 68, 2)`` of frames of ``sizes`` ``[(width, height)]``; NaN rows are ``no_face``
        or the detection's status where it is not ``ok`` (``statuses``) (``reasons``: why, per frame, e.g. the
        detection's). ``identity`` ``(80,)``: a known identity kept fixed (:func:`fit_landmarks`), e.g. the one
        fitted on the whole video when its frames come in chunks."""
        count = len(landmarks)
        frame_index = np.arange(count) if frame_index is None else np.asarray(frame_index, dtype=np.int64)
        coeffs, rmse = nan_rows(count, NUM_COEFFS).float(), nan_rows(count)
        status = [Status.OK] * count
        error = [""] * count
        groups: dict[tuple[int, int], list[int]] = {}
        for i in range(count):
            if not torch.isfinite(landmarks[i]).all():
                why = reasons[i] if reasons is not None and reasons[i] else "no face found"
                found = Status(statuses[i]) if statuses is not None and statuses[i] != Status.OK else Status.NO_FACE
                status[i], error[i] = found, f"{why} in the {sizes[i][0]}x{sizes[i][1]} frame"
            else:
                groups.setdefault(sizes[i], []).append(i)
        for size, members in groups.items():
            members = sorted(members, key=lambda i: frame_index[i])
            group_boxes = None if boxes is None else boxes[members]
            self._fit_group(landmarks[members], size, members, frame_index[members], group_boxes,
                            coeffs, rmse, status, error, identity)
        return CoeffEstimate(coeffs, tuple(status), tuple(error), landmarks=landmarks, fit_error=rmse)

    def _fit_group(self, points, size, members, frame_index, boxes, coeffs, rmse, status, error, identity) -> None:
        from reenact.faces.gates import check_fit

        width, height = size
        side = min(width, height)
        links = links_from_indices(frame_index)
        try:
            result = fit_landmarks(points.numpy(), side, self.bases, self.config, frame_camera(width, height), links,
                                   identity)
        except (ValueError, RuntimeError) as exc:   # e.g. a singular system: the group fails, the run goes on
            for i in members:
                status[i], error[i] = Status.FIT_ERROR, f"landmark fit failed: {exc}"
            return
        fitted = torch.from_numpy(result.coeffs)
        limit = self.config.max_rmse * side / REFERENCE_SIZE
        gate = check_fit(fitted, points, torch.from_numpy(result.rmse), size, boxes, links, self.gates) \
            if self.gates is not None else None
        for k, i in enumerate(members):
            coeffs[i], rmse[i] = fitted[k], float(result.rmse[k])
            if not np.isfinite(result.rmse[k]):
                status[i], error[i] = Status.FIT_ERROR, "landmark fit gave a non-finite RMSE"
                continue
            why = [f"landmark RMSE {result.rmse[k]:.2f} px exceeds {limit:.2f} px"] if result.rmse[k] > limit else []
            why += [gate.reason[k]] if gate is not None and not gate.passed[k] else []
            if why:
                status[i], error[i] = Status.IMPLAUSIBLE, "; ".join(why)
