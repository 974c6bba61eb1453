"""The ``landmarks`` coefficient extractor: fit the morphable model to 68 2D landmarks, one optimisation per chunk.

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
Texture and lighting are not observable from landmarks: ``tex`` and ``gamma`` are written as zeros.

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

import io
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, ID, NUM_COEFFS, TRANS
from reenact.face3d.morphable import NUM_EXP, NUM_ID, NUM_LANDMARKS, MorphableModel
from reenact.face3d.transforms import matrix_to_euler
from pipelines.extractors.rows import empty_rows, fail, to_batch
from reenact.data.schema import Status

NAME = "landmarks"
REFERENCE_SIZE = 256           # sizes in FitConfig are pixels of a 256^2 image, scaled to the actual image size
JAW = slice(0, 17)             # iBUG-68 jaw outline (silhouette points on real faces)
NUM_POSE = 6                   # per-frame w (3) + t (3)
NUM_FRAME = NUM_EXP + NUM_POSE  # per-frame unknowns: beta (64), w (3), t (3)


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
                                                          "are written with status fit_error"})


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


def landmark_bases(model: MorphableModel) -> LandmarkBases:
    """Slice the landmark vertices' rows out of the model's bases (no full mesh is evaluated)."""
    index = model.landmark_indices.cpu()
    rows = (3 * index[:, None] + torch.arange(3)).reshape(-1)                  # 204 rows of the (3V, k) bases
    as64 = lambda t: t.detach().cpu().to(torch.float64)  # noqa: E731
    return LandmarkBases(mean=as64(model.mean_shape[index]),
                         id=as64(model.id_base[rows]).reshape(NUM_LANDMARKS, 3, NUM_ID),       # 68 x 3 x 80
                         exp=as64(model.exp_base[rows]).reshape(NUM_LANDMARKS, 3, NUM_EXP))    # 68 x 3 x 64


# ---------------------------------------------------------------- geometry
def skew(v: torch.Tensor) -> torch.Tensor:
    """``(..., 3)`` -> cross-product matrices ``(..., 3, 3)`` with ``skew(a) @ b = a x b``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).unflatten(-1, (3, 3))


def axis_angle_to_matrix(w: torch.Tensor) -> torch.Tensor:
    """Rodrigues: rotation vectors ``(..., 3)`` -> ``(..., 3, 3)``."""
    return torch.linalg.matrix_exp(skew(w))


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
        return bases.mean + bases.id @ self.alpha + torch.einsum("kcn,tn->tkc", bases.exp, self.beta)

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
    sqrt_w: torch.Tensor         # 68, sqrt(w_k) / sigma
    id_precision: float          # 1 / s_id^2
    exp_precision: float         # 1 / s_exp^2
    depth_mean: torch.Tensor     # T, prior mean of trans z
    depth_precision: torch.Tensor  # T, 1 / (prior std of trans z)^2 (0: flat)

    def residuals(self, state: _State) -> torch.Tensor:
        """Whitened residuals ``(T, 68, 2)``."""
        return (project(state.posed(self.bases), self.camera) - self.target) * self.sqrt_w[:, None]

    def frame_costs(self, state: _State) -> torch.Tensor:
        """Per-frame data + expression prior cost ``(T,)`` (the identity prior is added by :meth:`cost`)."""
        return (self.residuals(state).square().sum((1, 2)) + self.exp_precision * state.beta.square().sum(1)
                + self.depth_precision * (state.trans[:, 2] - self.depth_mean).square())

    def cost(self, state: _State) -> torch.Tensor:
        return self.frame_costs(state).sum() + self.id_precision * state.alpha.square().sum()

    def linearise(self, state: _State) -> "_Linearisation":
        b, cam = self.bases, self.camera
        rotated = state.shapes(b) @ state.rotation.transpose(1, 2)                    # T x 68 x 3 (R P)
        q = rotated + state.trans[:, None]
        depth = cam.distance - q[..., 2]
        zero = torch.zeros_like(depth)
        d_proj = torch.stack([cam.focal / depth, zero, cam.focal * q[..., 0] / depth**2,
                              zero, -cam.focal / depth, -cam.focal * q[..., 1] / depth**2], -1)
        d_proj = d_proj.unflatten(-1, (2, 3)) * self.sqrt_w[:, None, None]           # T x 68 x 2 x 3
        residuals = (project(q, cam) - self.target) * self.sqrt_w[:, None]
        return _Linearisation(residuals, d_proj, d_proj @ state.rotation[:, None], rotated)


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
        return torch.cat([_per_landmark(self.d_shape, bases.exp), self.pose_jacobian()], -1)

    def alpha_jacobian(self, bases: LandmarkBases) -> torch.Tensor:
        """d r / d alpha ``(T, 136, 80)``."""
        return _per_landmark(self.d_shape, bases.id)


def _per_landmark(d_shape: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``d_shape (T, 68, 2, 3)`` times each landmark's basis rows ``(68, 3, n)`` -> ``(T, 136, n)``."""
    t = d_shape.shape[0]
    per_k = d_shape.permute(1, 0, 2, 3).reshape(NUM_LANDMARKS, 2 * t, 3) @ basis        # 68 x 2T x n
    return per_k.reshape(NUM_LANDMARKS, t, 2, -1).permute(1, 0, 2, 3).reshape(t, 2 * NUM_LANDMARKS, -1)


def _frame_priors(problem: _Problem, state: _State) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame prior precisions and offsets from the prior means, both ``(T, 70)`` (beta, then w, t)."""
    precision = torch.zeros(len(state.beta), NUM_FRAME, dtype=state.beta.dtype)
    precision[:, :NUM_EXP] = problem.exp_precision
    precision[:, -1] = problem.depth_precision
    offsets = torch.zeros_like(precision)
    offsets[:, :NUM_EXP] = state.beta
    offsets[:, -1] = state.trans[:, 2] - problem.depth_mean
    return precision, offsets


def _normal_equations(problem: _Problem, state: _State, pose_only: bool = False):
    """Gradient and Gauss-Newton blocks of the energy (factor 2 dropped): g_a, g_f, H_aa, H_af, H_ff.

    With ``pose_only`` the per-frame blocks are the 6 pose unknowns and the alpha blocks are None.
    H_aa and g_a sum over frames before touching the 80 columns: H_aa = sum_k A_k^T (sum_t G_tk^T G_tk) A_k with
    G_tk = d r_tk / d P_tk, so they cost O(T) 3x3 products plus one 80 x 204 x 80 product.
    """
    lin = problem.linearise(state)
    r = lin.r.flatten(1)                                                              # T x 136
    precision, offsets = _frame_priors(problem, state)
    jf = lin.pose_jacobian() if pose_only else lin.frame_jacobian(problem.bases)      # T x 136 x {6, 70}
    if pose_only:
        precision, offsets = precision[:, NUM_EXP:], offsets[:, NUM_EXP:]
    g_f = (jf.transpose(1, 2) @ r[..., None])[..., 0] + precision * offsets
    h_ff = jf.transpose(1, 2) @ jf + torch.diag_embed(precision)                      # T x n x n
    if pose_only:
        return None, g_f, None, None, h_ff
    ids = problem.bases.id                                                            # 68 x 3 x 80
    gram = torch.einsum("tkai,tkaj->kij", lin.d_shape, lin.d_shape)                   # 68 x 3 x 3
    h_aa = ids.flatten(0, 1).T @ (gram @ ids).flatten(0, 1) + problem.id_precision * torch.eye(NUM_ID, dtype=r.dtype)
    g_a = ids.flatten(0, 1).T @ torch.einsum("tkai,tka->ki", lin.d_shape, lin.r).reshape(-1) \
        + problem.id_precision * state.alpha                                          # 80
    h_af = lin.alpha_jacobian(problem.bases).transpose(1, 2) @ jf                     # T x 80 x 70
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


def _pose_stage(problem: _Problem, state: _State, config: FitConfig) -> tuple[_State, int]:
    """LM on the per-frame poses only (alpha, beta fixed): frames are independent, each with its own damping."""
    mu = torch.full((len(problem.target),), config.damping, dtype=torch.float64)
    costs = problem.frame_costs(state)
    for it in range(config.pose_iterations):
        _, g_p, _, _, h_pp = _normal_equations(problem, state, pose_only=True)   # cheap: 6 unknowns per frame
        d_pose = -torch.linalg.solve(_damped(h_pp, mu), g_p)                         # T x 6
        trial = state.step(torch.zeros_like(state.alpha), torch.cat([torch.zeros_like(state.beta), d_pose], 1))
        new = problem.frame_costs(trial)
        better = new < costs
        keep = better[:, None]
        state = _State(state.alpha, state.beta, torch.where(keep[..., None], trial.rotation, state.rotation),
                       torch.where(keep, trial.trans, state.trans))
        converged = bool(((costs - new) <= config.tolerance * costs).all())   # rejected frames count as converged
        costs = torch.where(better, new, costs)
        mu = torch.where(better, (mu / 3).clamp_min(1e-9), mu * 4)
        if converged:
            return state, it + 1
    return state, config.pose_iterations


def _joint_stage(problem: _Problem, state: _State, config: FitConfig) -> tuple[_State, int]:
    """LM on alpha (shared) and every frame's beta and pose, via the Schur complement of the alpha block."""
    mask = _frame_mask(config)
    mu, cost = config.damping, problem.cost(state)
    blocks = _normal_equations(problem, state)
    for it in range(config.iterations):
        d_alpha, d_frame = _joint_step(*blocks, mu, mask, config.fit_identity)
        trial = state.step(d_alpha, d_frame)
        new = problem.cost(trial)
        if new >= cost:                      # rejected: more damping, same linearisation
            mu *= 4
            continue
        converged = bool(cost - new <= config.tolerance * cost)
        state, cost, mu = trial, new, max(mu / 3, 1e-9)
        if converged:
            return state, it + 1
        blocks = _normal_equations(problem, state)
    return state, config.iterations


def _joint_step(g_a, g_f, h_aa, h_af, h_ff, mu: float, mask: torch.Tensor, fit_identity: bool):
    """The damped Gauss-Newton step (d_alpha ``(80,)``, d_frame ``(T, 70)``) by block elimination:
    d_f = H_ff^-1 (-g_f - H_fa d_a) and (H_aa - sum_t H_af H_ff^-1 H_fa) d_a = -g_a + sum_t H_af H_ff^-1 g_f."""
    h_ff = _damped(h_ff, mu)
    if not fit_identity:
        return torch.zeros_like(g_a), -_solve_frames(h_ff, g_f[..., None], mask)[..., 0]
    solved = _solve_frames(h_ff, torch.cat([h_af.transpose(1, 2), g_f[..., None]], -1), mask)   # T x 70 x 81
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
                  config: FitConfig = FitConfig(), camera: PerspectiveCamera | None = None) -> FitResult:
    """Fit shared identity, per-frame expression and pose to 68 landmarks of T frames of one chunk.

    Args:
        landmarks: ``(T, 68, 2)`` pixels (x, y down, pixel centres at +0.5), iBUG-68 order; all finite.
        image_size: side of the square image the landmarks are in; the camera is ``PerspectiveCamera.deep3d``
            of it unless ``camera`` is given. Pixel settings of ``config`` scale by ``image_size / 256``.
        model: the morphable model, or its :func:`landmark_bases` (precomputed once per actor).
        config: :class:`FitConfig`.
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
    camera = camera or PerspectiveCamera.deep3d(int(image_size))
    with torch_threads(config.threads):
        return _fit(target, int(image_size), bases, config, camera)


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


def _fit(target: torch.Tensor, image_size: int, bases: LandmarkBases, config: FitConfig,
         camera: PerspectiveCamera) -> FitResult:
    sigma = config.landmark_sigma * image_size / REFERENCE_SIZE
    weights = landmark_weights(config)
    rotation, trans = weak_perspective_pose(target, bases.mean, camera, weights)
    depth_std = config.depth_prior * (camera.distance - trans[:, 2])
    problem = _Problem(bases, camera, target, weights.sqrt() / sigma,
                       id_precision=1.0 / config.id_prior**2, exp_precision=1.0 / config.exp_prior**2,
                       depth_mean=trans[:, 2].clone(),
                       depth_precision=depth_std.pow(-2) if config.depth_prior > 0 else torch.zeros_like(depth_std))
    num = len(target)
    state = _State(torch.zeros(NUM_ID, dtype=torch.float64), torch.zeros(num, NUM_EXP, dtype=torch.float64),
                   rotation, trans)
    state, pose_its = _pose_stage(problem, state, config)
    joint_its = 0
    if config.fit_identity or config.fit_expression:
        state, joint_its = _joint_stage(problem, state, config)
    return _result(problem, state, pose_its + joint_its)


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


# ---------------------------------------------------------------- the extractor (a Ray actor)
def frame_camera(width: int, height: int) -> PerspectiveCamera:
    """Deep3D's camera of a ``width`` x ``height`` frame: ``PerspectiveCamera.deep3d(S)`` for square S x S frames,
    else focal ``1015 min(W, H) / 224`` at the frame centre (the convention of ``pipelines.extractors.deep3d``)."""
    if width == height:
        return PerspectiveCamera.deep3d(int(width))
    reference = PerspectiveCamera.deep3d(min(width, height))
    return PerspectiveCamera(width=width, height=height, focal=reference.focal, cx=width / 2, cy=height / 2)


class LandmarksExtractor:
    """Frame rows -> coefficient rows (``reenact.data.schema.COEFFS``, extractor ``landmarks``), one per input row.

    A class with ``__init__`` (loads the model and, when needed, dlib) and ``__call__(batch) -> batch``, so Ray Data
    runs it as an actor with ``map_batches``; a bad row becomes a status row, never an exception.

    Input columns: ``chunk_id``, ``frame_index``; ``image`` (encoded bytes) when landmarks are detected;
    optionally ``landmarks`` (136 floats, x/y pairs in the frame's pixels, e.g. the synthetic world's
    ``crop_landmarks``), ``width`` / ``height`` (frame size; else read from the image, else ``default_size``),
    ``status`` / ``error`` (rows not ``ok`` upstream keep their status).
    Rows of one chunk in the batch are fitted together (one shared identity); give the extractor whole chunks per
    batch (e.g. ``groupby("chunk_id").map_groups``) so that the identity is shared over the whole chunk.
    Output ``landmarks`` are the observed 68 points the fit used; ``fit_error`` is the landmark RMSE in pixels.

    Args:
        model: morphable model spec for :func:`reenact.face3d.io.load_morphable_model`.
        config: :class:`FitConfig`.
        landmark_source: ``auto`` (the ``landmarks`` column when present and not null, else dlib on ``image``),
            ``column`` or ``dlib``.
        mtcnn_fallback: when dlib's HOG detector finds no face (it is a frontal detector), take the face box from
            MTCNN (facenet-pytorch) and run the 68-point predictor in it.
        default_size: frame side assumed for column landmarks without ``width`` / ``height`` / ``image``.
    """

    name = NAME

    def __init__(self, model: str = "procedural-full", config: FitConfig = FitConfig(), *,
                 landmark_source: str = "auto", mtcnn_fallback: bool = True, default_size: int = 256,
                 assets: str | None = None):
        from reenact.face3d.io import load_morphable_model

        if landmark_source not in ("auto", "column", "dlib"):
            raise ValueError(f"landmark_source must be auto, column or dlib, got {landmark_source!r}")
        self.model_name = model
        self.bases = landmark_bases(load_morphable_model(model, assets))
        self.config = config
        self.landmark_source = landmark_source
        self.mtcnn_fallback = mtcnn_fallback
        self.default_size = int(default_size)
        self._dlib = None
        self._mtcnn = None

    def __call__(self, batch: Mapping[str, Sequence[Any]]) -> dict[str, list]:
        n = len(batch["chunk_id"])
        rows = empty_rows(batch, NAME)
        found = {i: self._landmarks(batch, i, rows[i]) for i in range(n) if rows[i]["status"] == Status.OK.value}
        groups: dict[tuple, list[int]] = {}
        for i, item in found.items():
            if item is not None:
                groups.setdefault((rows[i]["chunk_id"], item[1]), []).append(i)
        for (_, size), members in groups.items():
            self._fit_group([found[i][0] for i in members], size, [rows[i] for i in members])
        return to_batch(rows)

    # -------------------------------------------------------- per row
    def _landmarks(self, batch, i: int, row: dict) -> tuple[np.ndarray, tuple[int, int]] | None:
        """(68 x 2 landmarks, (width, height)) of row i, or None after marking the row failed."""
        given = batch["landmarks"][i] if "landmarks" in batch and self.landmark_source != "dlib" else None
        if given is not None:
            points = np.asarray(given, dtype=np.float64)
            if points.size != 2 * NUM_LANDMARKS or not np.isfinite(points).all():
                return fail(row, Status.FIT_ERROR, f"landmarks column must hold 136 finite values, got {points.size}")
            return points.reshape(NUM_LANDMARKS, 2), self._size(batch, i, None)
        if self.landmark_source == "column":
            return fail(row, Status.NO_FACE, "no landmarks in the frame row (landmark_source=column)")
        image = self._decode(batch, i, row)
        if image is None:
            return None
        points = self._detect(image)
        if points is None:
            return fail(row, Status.NO_FACE, f"dlib found no face in the {image.width}x{image.height} frame")
        return points, image.size

    def _size(self, batch, i: int, image) -> tuple[int, int]:
        if "width" in batch and "height" in batch and batch["width"][i] and batch["height"][i]:
            return int(batch["width"][i]), int(batch["height"][i])
        if "image" in batch and batch["image"][i] is not None:
            from PIL import Image

            try:
                return Image.open(io.BytesIO(bytes(batch["image"][i]))).size
            except Exception:  # an undecodable image with given landmarks: fall back to the default size
                pass
        return self.default_size, self.default_size

    def _decode(self, batch, i: int, row: dict):
        from PIL import Image

        data = batch["image"][i] if "image" in batch else None
        if data is None:
            return fail(row, Status.DECODE_ERROR, "no image bytes in the frame row")
        try:
            image = Image.open(io.BytesIO(bytes(data)))
            image.load()
            return image.convert("RGB")
        except Exception as exc:  # a corrupt frame is a row, not a crash
            return fail(row, Status.DECODE_ERROR, f"cannot decode frame image: {exc}")

    def _detect(self, image) -> np.ndarray | None:
        if self._dlib is None:
            from reenact.faces.landmarks68 import Landmarks68

            self._dlib = Landmarks68()
        points = self._dlib(image)
        if points is None and self.mtcnn_fallback:
            if self._mtcnn is None:
                from reenact.faces.landmarks5 import Landmarks5

                self._mtcnn = Landmarks5()
            detection = self._mtcnn([image])[0]
            points = None if detection is None else self._dlib(image, box=detection.box)
        return points

    # -------------------------------------------------------- per chunk
    def _fit_group(self, landmarks: list[np.ndarray], size: tuple[int, int], rows: list[dict]) -> None:
        width, height = size
        side = min(width, height)
        try:
            result = fit_landmarks(np.stack(landmarks), side, self.bases, self.config, frame_camera(width, height))
        except (ValueError, RuntimeError) as exc:   # e.g. a singular system: the chunk's rows fail, the run goes on
            for row in rows:
                fail(row, Status.FIT_ERROR, f"landmark fit failed: {exc}")
            return
        limit = self.config.max_rmse * side / REFERENCE_SIZE
        for row, points, coeffs, rmse in zip(rows, landmarks, result.coeffs, result.rmse):
            row.update(coeffs=coeffs.tolist(), landmarks=points.reshape(-1).tolist(), fit_error=float(rmse))
            if not np.isfinite(rmse) or rmse > limit:
                fail(row, Status.FIT_ERROR, f"landmark RMSE {rmse:.2f} px exceeds {limit:.2f} px")
