"""The ``landmarks`` extractor: analytic Jacobians, closed-form pose init, pose recovery on synthetic sequences drawn
from the procedural model (yaw up to +-45 degrees, 1 px landmark noise), and the Ray-ready class."""
from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipelines.extractors.landmark_fit import LandmarksExtractor
from reenact.data.codec import uint8_to_tensor
from reenact.data.schema import COEFFS
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, GAMMA, ID, TEX, TRANS
from reenact.face3d.face import project_landmarks
from reenact.face3d.procedural import procedural_model
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between
from reenact.faces import landmark_fit as lf
from reenact.faces.landmarks68 import landmarks68
from reenact.synth import world as synth_world
from reenact.synth import writer
from tests.conftest import fixture_path

SIZE = 256
#: truth landmarks of these tests are projections of the model's own (fixed) landmark vertices, so they are fitted
#: with fixed jaw vertices; the default (jaw points on the silhouette) is for detected points (dlib's)
FIXED = lf.FitConfig(jaw_contour=False, landmark_offsets=False)   # landmarks that are the model's own vertices


def sample_chunk(rng: np.random.Generator, frames: int, yaw_max: float = 45.0, exp_std: float = 0.7,
                 id_std: float = 1.0) -> np.ndarray:
    """Ground-truth ``(T, 257)`` coefficients of one chunk: one identity, random expressions and poses."""
    c = np.zeros((frames, 257), np.float64)
    c[:, ID] = rng.normal(0, id_std, 80)
    c[:, EXP] = rng.normal(0, exp_std, (frames, 64))
    c[:, ANGLE] = np.deg2rad(np.stack([rng.uniform(-15, 15, frames), rng.uniform(-yaw_max, yaw_max, frames),
                                       rng.uniform(-10, 10, frames)], -1))
    c[:, TRANS] = np.stack([rng.uniform(-0.1, 0.1, frames), rng.uniform(-0.05, 0.15, frames),
                            rng.uniform(-3.6, -2.4, frames)], -1)
    return c


def stills(frames: int) -> np.ndarray:
    """Links for frames of :func:`sample_chunk`: their poses are independent draws, not neighbouring video frames."""
    return np.zeros(frames - 1, dtype=bool)


def truth_landmarks(model, coeffs: np.ndarray, size: int = SIZE) -> np.ndarray:
    points = project_landmarks(model, torch.from_numpy(coeffs).float(), PerspectiveCamera.deep3d(size))
    return points.numpy().astype(np.float64)


def rotation_errors_deg(truth: np.ndarray, fitted: np.ndarray) -> np.ndarray:
    r1, r2 = (euler_to_matrix(torch.as_tensor(c[:, ANGLE], dtype=torch.float64)) for c in (truth, fitted))
    return np.rad2deg(rotation_angle_between(r1, r2).numpy())


@pytest.fixture(scope="module")
def full_model():
    return procedural_model("full")


@pytest.fixture(scope="module")
def small_model():
    return procedural_model("small")


def _problem(model, coeffs, landmarks):
    bases = lf.landmark_bases(model)
    camera = PerspectiveCamera.deep3d(SIZE)
    target = torch.as_tensor(landmarks, dtype=torch.float64)
    sqrt_w = torch.linspace(0.5, 1.5, 68, dtype=torch.float64)
    depth = torch.full((len(coeffs),), -3.0, dtype=torch.float64)
    # the mirror-symmetric identity prior (a full matrix) and a scaled expression prior
    return lf._Problem(bases, camera, target, sqrt_w, bases.id_prior, 2.0 * bases.exp_prior, depth,
                       torch.ones_like(depth))


def dense_system(h_aa, h_af, h_ff, coupling=None) -> torch.Tensor:
    """The whole LM system as one dense matrix: identity block ``h_aa``, per-frame blocks ``h_ff`` (70 unknowns
    each), their coupling ``h_af``, and (given) the temporal term's ``-diag(coupling[t])`` between frames t, t + 1."""
    frames = len(h_ff)
    dense = torch.zeros(80 + 70 * frames, 80 + 70 * frames, dtype=torch.float64)
    dense[:80, :80] = h_aa
    for t in range(frames):
        block = slice(80 + 70 * t, 80 + 70 * (t + 1))
        dense[:80, block], dense[block, :80], dense[block, block] = h_af[t], h_af[t].T, h_ff[t]
        if coupling is not None and t < frames - 1:
            nxt = slice(80 + 70 * (t + 1), 80 + 70 * (t + 2))
            dense[block, nxt] = dense[nxt, block] = -torch.diag(coupling[t])
    return dense


def _state(coeffs):
    c = torch.as_tensor(coeffs, dtype=torch.float64)
    return lf._State(c[0, ID].clone(), c[:, EXP].clone(), euler_to_matrix(c[:, ANGLE]), c[:, TRANS].clone())


# ---------------------------------------------------------------- building blocks
def test_landmark_bases_equal_the_full_mesh_landmarks(small_model):
    rng = np.random.default_rng(1)
    c = sample_chunk(rng, 3)
    bases = lf.landmark_bases(small_model)
    state = _state(c)
    full = small_model.landmarks(small_model.shape(torch.as_tensor(c[:, ID]).float(),
                                                   torch.as_tensor(c[:, EXP]).float()))
    torch.testing.assert_close(state.shapes(bases), full.double(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lf.project(state.posed(bases), PerspectiveCamera.deep3d(SIZE)),
                               torch.from_numpy(truth_landmarks(small_model, c)), atol=1e-3, rtol=0)


def test_analytic_jacobians_match_autograd(small_model):
    rng = np.random.default_rng(2)
    c = sample_chunk(rng, 2, exp_std=0.5)
    problem = _problem(small_model, c, truth_landmarks(small_model, c) + rng.normal(0, 2, (2, 68, 2)))
    state = _state(c)
    lin = problem.linearise(state)

    def residuals(alpha, frame):   # frame: T x 70 update (beta, w, t) applied as in _State.step
        return problem.residuals(lf._State(alpha, state.beta, state.rotation, state.trans).step(
            torch.zeros_like(alpha), frame)).flatten(1)

    frame0 = torch.zeros(2, 70, dtype=torch.float64)
    # T x 136 x 80 and T x 136 x T x 70
    j_alpha, j_frame = torch.autograd.functional.jacobian(residuals, (state.alpha, frame0), vectorize=True)
    j_frame = torch.stack([j_frame[t, :, t] for t in range(2)])                               # T x 136 x 70
    torch.testing.assert_close(lin.alpha_jacobian(problem.bases), j_alpha, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(lin.frame_jacobian(problem.bases), j_frame, atol=1e-7, rtol=1e-6)
    torch.testing.assert_close(lin.pose_jacobian(), j_frame[..., 64:], atol=1e-7, rtol=1e-6)


def test_normal_equations_gradient_is_half_the_energy_gradient(small_model):
    rng = np.random.default_rng(3)
    c = sample_chunk(rng, 3, exp_std=0.5)
    problem = _problem(small_model, c, truth_landmarks(small_model, c) + rng.normal(0, 2, (3, 68, 2)))
    state = _state(c)
    g_a, g_f, h_aa, h_af, h_ff = lf._normal_equations(problem, state)

    alpha = state.alpha.clone().requires_grad_()
    frame = torch.zeros(3, 70, dtype=torch.float64, requires_grad=True)
    problem.cost(lf._State(alpha, state.beta, state.rotation, state.trans).step(torch.zeros_like(alpha), frame)
                 ).backward()
    torch.testing.assert_close(g_a, alpha.grad / 2)
    torch.testing.assert_close(g_f, frame.grad / 2)
    lin = problem.linearise(state)
    ja, jf = lin.alpha_jacobian(problem.bases), lin.frame_jacobian(problem.bases)
    torch.testing.assert_close(h_aa, torch.einsum("tmn,tmp->np", ja, ja) + problem.id_precision)
    torch.testing.assert_close(h_ff, jf.transpose(1, 2) @ jf + torch.block_diag(problem.exp_precision,
                                                                               torch.zeros(6, 6, dtype=torch.float64))
                               + torch.diag_embed(lf._frame_priors(problem, state)[0]))
    torch.testing.assert_close(h_af, ja.transpose(1, 2) @ jf)


def test_identity_basis_is_closed_under_mirroring_and_its_prior_is_symmetric(small_model):
    bases = lf.landmark_bases(small_model)
    t, outside = lf.mirror_map(bases.id)
    assert outside < 1e-6
    flat = bases.id.reshape(-1, 80)
    torch.testing.assert_close(flat @ t, lf.mirror_basis(bases.id).reshape(-1, 80), atol=1e-8, rtol=0)
    observed = torch.linalg.pinv(flat, rtol=1e-8) @ flat                 # T^2 = identity on observed directions
    torch.testing.assert_close(t @ t, observed, atol=1e-8, rtol=0)
    prior = bases.id_prior
    torch.testing.assert_close(t.T @ prior @ t, observed @ prior @ observed, atol=1e-7, rtol=1e-7)
    # the random fields come in mirror pairs (symmetric, antisymmetric): T is orthogonal, so the plain prior |c|^2
    # is mirror-symmetric as well and the symmetrised prior is the plain one on the observed directions
    torch.testing.assert_close(t.T @ t, observed, atol=1e-8, rtol=0)
    torch.testing.assert_close(observed @ prior @ observed, observed, atol=1e-8, rtol=0)


def test_fit_of_mirrored_landmarks_is_the_mirrored_fit(small_model):
    """x -> 256 - x with the iBUG permutation: yaw and roll change sign, pitch stays (issue 12's mirror check); an
    identity prior that is not mirror-symmetric moves the yaw (the plain |alpha|^2 of the old, unpaired procedural
    identity basis did by ~3 deg on real clips). Expression is not fitted:
    the procedural expression basis is not closed under mirroring (its random local fields), the identity's is."""
    from dataclasses import replace

    from reenact.faces.landmarks68 import mirror_points

    rng = np.random.default_rng(11)
    c = sample_chunk(rng, 6, yaw_max=30, exp_std=0.0)
    points = truth_landmarks(small_model, c) + rng.normal(0, 1.5, (6, 68, 2))
    config = lf.FitConfig(fit_expression=False)
    sign = np.array([1, -1, -1])

    def mirror_gap(bases):
        a = lf.fit_landmarks(points, SIZE, bases, config, links=stills(6)).coeffs[:, ANGLE]
        m = lf.fit_landmarks(mirror_points(points, SIZE), SIZE, bases, config, links=stills(6)).coeffs[:, ANGLE]
        return np.rad2deg(np.abs(a - sign * m)).max()

    bases = lf.landmark_bases(small_model)
    assert mirror_gap(bases) < 0.02
    assert mirror_gap(replace(bases, id_prior=torch.eye(80, dtype=torch.float64))) < 0.02   # |c|^2: symmetric too
    mix = torch.from_numpy(np.random.default_rng(0).normal(size=(80, 80)))
    lopsided = mix @ mix.T / 80 + 0.5 * torch.eye(80, dtype=torch.float64)   # couples symmetric and antisymmetric
    assert mirror_gap(replace(bases, id_prior=lopsided)) > 0.1


def test_jaw_points_march_to_the_far_side_contour_and_mirror(full_model):
    """Frontal: every jaw point on its landmark vertex. Turned: the far side's points move inwards along their lines
    (the visible contour), the near side's stay; a mirrored pose picks the mirrored vertices."""
    bases = lf.landmark_bases(full_model)
    camera = PerspectiveCamera.deep3d(SIZE)

    def picks(yaw_deg):
        c = np.zeros((1, 257))
        c[0, ANGLE.start + 1], c[0, TRANS.start + 2] = np.deg2rad(yaw_deg), -3.0
        selected = lf.select_contour(bases, _state(c), camera).jaw[0][0]                  # 17 x 3 (mean rows)
        return ((bases.contour.mean[:, None] - selected[:, None, None]).norm(dim=-1) < 1e-12).nonzero()[:, 2]

    assert (picks(0.0) == 0).all()
    turned = picks(45.0)
    far = turned[:6] if turned[:6].sum() > turned[11:].sum() else turned[11:]
    assert far.max() >= 2 and (turned[6:11] <= 1).all(), turned
    assert torch.equal(picks(-45.0), turned.flip(0))


def test_contour_points_recover_pose_better_than_fixed_vertices(small_model):
    """Landmarks whose jaw points lie on the silhouette (as a detector places them), noise free, yaw 30-45 deg:
    the fit with marching jaw points recovers the rotation closely, the fit with fixed jaw vertices does not."""
    from dataclasses import replace

    rng = np.random.default_rng(12)
    c = sample_chunk(rng, 6, exp_std=0.3)
    c[:, ANGLE.start + 1] = np.deg2rad(rng.choice([-1, 1], 6) * rng.uniform(30, 45, 6))
    bases = lf.landmark_bases(small_model)
    state = _state(c)
    jaw = lf.select_contour(bases, state, PerspectiveCamera.deep3d(SIZE))
    points = lf.project(state.posed(jaw), PerspectiveCamera.deep3d(SIZE)).numpy()
    plain = lf.FitConfig(id_prior_min=1.0, landmark_offsets=False)   # 6 frames: the plain prior, not masking it
    marching = lf.fit_landmarks(points, SIZE, bases, plain, links=stills(6))
    fixed = lf.fit_landmarks(points, SIZE, bases, replace(plain, jaw_contour=False), links=stills(6))
    assert np.median(marching.rmse) < 0.8 * np.median(fixed.rmse), (marching.rmse, fixed.rmse)
    assert np.median(rotation_errors_deg(c, marching.coeffs)) < np.median(rotation_errors_deg(c, fixed.coeffs))


def test_schur_step_equals_the_dense_solve(small_model):
    rng = np.random.default_rng(4)
    c = sample_chunk(rng, 3, exp_std=0.5)
    problem = _problem(small_model, c, truth_landmarks(small_model, c) + rng.normal(0, 2, (3, 68, 2)))
    g_a, g_f, h_aa, h_af, h_ff = lf._normal_equations(problem, _state(c))
    d_alpha, d_frame = lf._joint_step(g_a, g_f, h_aa, h_af, h_ff, 0.0, torch.ones(70, dtype=torch.bool), True)
    dense = dense_system(h_aa, h_af, h_ff)
    expected = torch.linalg.solve(dense, -torch.cat([g_a, g_f.reshape(-1)]))
    torch.testing.assert_close(torch.cat([d_alpha, d_frame.reshape(-1)]), expected, atol=1e-6, rtol=1e-6)


def test_temporal_chain_step_equals_the_dense_solve(small_model):
    """With neighbouring frames linked, the per-frame system is block-tridiagonal: the block Thomas solve inside the
    Schur step equals a dense solve of the whole system, whose off-diagonal blocks are the temporal term's Hessian
    (checked against autograd's for the expression and translation steps)."""
    from dataclasses import replace

    rng = np.random.default_rng(14)
    c = sample_chunk(rng, 4, exp_std=0.5)
    problem = _problem(small_model, c, truth_landmarks(small_model, c) + rng.normal(0, 2, (4, 68, 2)))
    problem = replace(problem, links=torch.tensor([True, False, True]), step_precision=(50.0, 3.0, 2.0))
    state = _state(c)
    g_a, g_f, h_aa, h_af, h_ff = lf._normal_equations(problem, state)
    coupling = lf.temporal_coupling(problem)
    assert coupling[1].abs().max() == 0 and coupling[0].abs().min() > 0
    dense = dense_system(h_aa, h_af, h_ff, coupling)
    frame = torch.zeros(4, 70, dtype=torch.float64)
    temporal = lambda f: problem.temporal_cost(state.step(torch.zeros(80, dtype=torch.float64), f))  # noqa: E731
    hessian = torch.autograd.functional.hessian(temporal, frame, vectorize=True).reshape(280, 280) / 2
    linear = torch.cat([torch.arange(64), torch.arange(67, 70)])   # beta, t (log's derivative is singular at 0)
    torch.testing.assert_close(hessian[:70, 70:140][linear][:, linear], -torch.diag(coupling[0][linear]))
    torch.testing.assert_close(hessian[70:140, 140:210][linear][:, linear], torch.zeros(67, 67, dtype=torch.float64))
    mask = torch.ones(70, dtype=torch.bool)
    d_alpha, d_frame = lf._joint_step(g_a, g_f, h_aa, h_af, h_ff, 0.0, mask, True, coupling)
    expected = torch.linalg.solve(dense, -torch.cat([g_a, g_f.reshape(-1)]))
    torch.testing.assert_close(torch.cat([d_alpha, d_frame.reshape(-1)]), expected, atol=1e-6, rtol=1e-6)
    mask[:64] = False                                                       # expression fixed: pose blocks only
    d_frame = lf._joint_step(g_a, g_f, h_aa, h_af, h_ff, 0.0, mask, False, coupling)[1]
    keep = torch.cat([torch.zeros(80, dtype=torch.bool), mask.repeat(4)])
    expected = torch.linalg.solve(dense[keep][:, keep], -g_f[:, mask].reshape(-1))
    torch.testing.assert_close(d_frame[:, mask].reshape(-1), expected, atol=1e-6, rtol=1e-6)
    assert not d_frame[:, :64].any()


def test_weak_perspective_init_is_close_at_large_yaw(small_model):
    """Mean face, no noise, yaw up to 45 degrees: the closed-form init is within a few degrees of the truth."""
    rng = np.random.default_rng(5)
    c = sample_chunk(rng, 32, id_std=0.0, exp_std=0.0)
    c[:8, ANGLE.start + 1] = np.deg2rad([-45, -40, -35, 35, 40, 45, 30, -30])
    bases = lf.landmark_bases(small_model)
    rotation, trans = lf.weak_perspective_pose(torch.from_numpy(truth_landmarks(small_model, c)), bases.mean,
                                               PerspectiveCamera.deep3d(SIZE), torch.ones(68, dtype=torch.float64))
    errors = np.rad2deg(rotation_angle_between(rotation, euler_to_matrix(torch.from_numpy(c[:, ANGLE]))).numpy())
    assert errors.max() < 6.0, errors
    assert np.abs(trans.numpy() - c[:, TRANS]).max() < 0.5


def test_noise_free_mean_face_is_recovered_exactly(small_model):
    rng = np.random.default_rng(6)
    c = sample_chunk(rng, 16, id_std=0.0, exp_std=0.0)
    config = lf.FitConfig(fit_identity=False, fit_expression=False, depth_prior=0.0,    # a flat prior: exact
                          jaw_contour=False, landmark_offsets=False)
    result = lf.fit_landmarks(truth_landmarks(small_model, c), SIZE, small_model, config)
    assert rotation_errors_deg(c, result.coeffs).max() < 1e-3
    np.testing.assert_allclose(result.coeffs[:, TRANS], c[:, TRANS], atol=1e-4)
    assert result.rmse.max() < 1e-3


def test_noise_free_fit_reaches_subpixel_residuals(small_model):
    rng = np.random.default_rng(7)
    c = sample_chunk(rng, 8, exp_std=0.5)
    config = replace(FIXED, id_prior_min=1.0)     # 8 frames: the plain prior, so its pull does not mask the residual
    result = lf.fit_landmarks(truth_landmarks(small_model, c), SIZE, small_model, config, links=stills(8))
    assert np.median(result.rmse) < 0.3, result.rmse
    assert rotation_errors_deg(c, result.coeffs).max() < 1.5


# ---------------------------------------------------------------- the acceptance figure
def test_recovers_head_pose_on_synthetic_sequences(full_model, capsys):
    """Two chunks of 32 frames, yaw up to +-45 degrees, 1 px landmark noise, full-size procedural model."""
    rng = np.random.default_rng(20230207)
    errors, trans_errors, depth_errors = [], [], []
    for _ in range(2):
        c = sample_chunk(rng, 32)
        landmarks = truth_landmarks(full_model, c) + rng.normal(0, 1.0, (32, 68, 2))
        result = lf.fit_landmarks(landmarks, SIZE, full_model, FIXED, links=stills(32))
        assert (result.coeffs[:, ID] == result.coeffs[:1, ID]).all()          # one identity per chunk
        assert not result.coeffs[:, TEX].any() and not result.coeffs[:, GAMMA].any()
        errors.append(rotation_errors_deg(c, result.coeffs))
        trans_errors.append(np.linalg.norm(result.coeffs[:, TRANS] - c[:, TRANS], axis=1))
        z, z_true = result.coeffs[:, TRANS.start + 2], c[:, TRANS.start + 2]
        depth_errors.append(np.abs(z - z_true) / (10 - z_true))
        assert np.median(result.rmse) < 1.5     # 2D RMS of 1 px per-axis noise is sqrt(2)
    errors, trans_errors, depth_errors = map(np.concatenate, (errors, trans_errors, depth_errors))
    with capsys.disabled():
        print(f"\nlandmark fit, 64 frames, yaw <= 45 deg, 1 px noise: rotation error median {np.median(errors):.2f} "
              f"deg, p90 {np.percentile(errors, 90):.2f}, max {errors.max():.2f}; translation error median "
              f"{np.median(trans_errors):.3f} dm (relative depth error median {np.median(depth_errors):.3f})")
    # measured here with fixed jaw vertices (the truth's): median 0.88 deg, p90 1.28 since the procedural identity
    # basis comes in mirror pairs (N(0, I) is then a mirror-symmetric population, and the mirror-symmetric prior is
    # |alpha|^2); 1.92 / 2.42 before, when the symmetrised prior disagreed with the asymmetric N(0, I) the truth
    # is drawn from; 0.75 / 1.38 with the once-per-chunk prior before issue 12. About 1.5x
    assert np.median(errors) <= 1.3
    assert np.percentile(errors, 90) <= 2.0
    assert np.median(depth_errors) < 0.08    # depth and face size trade off through identity: a few percent


def test_a_given_identity_makes_the_pose_independent_of_chunking(small_model):
    """Chunks of a clip fitted with the clip's identity fixed give the poses of the whole-clip fit (the temporal
    term across the chunk borders is all that differs); each chunk fitting its own identity does not."""
    rng = np.random.default_rng(13)
    c = sample_chunk(rng, 16, yaw_max=30)
    c[:, ANGLE] = np.cumsum(rng.normal(0, np.deg2rad(1.5), (16, 3)), 0)              # a smooth head motion
    points = truth_landmarks(small_model, c) + rng.normal(0, 2.0, (16, 68, 2))
    whole = lf.fit_landmarks(points, SIZE, small_model).coeffs

    def chunked(identity):
        return np.concatenate([lf.fit_landmarks(points[s:s + 4], SIZE, small_model, identity=identity).coeffs
                               for s in range(0, 16, 4)])

    given = chunked(whole[0, ID])
    assert (given[:, ID] == whole[0, ID]).all()
    assert np.percentile(rotation_errors_deg(whole, given), 90) < 0.6
    assert np.percentile(rotation_errors_deg(whole, chunked(None)), 90) > 2 * np.percentile(
        rotation_errors_deg(whole, given), 90)
    with pytest.raises(ValueError, match="identity"):
        lf.fit_landmarks(points, SIZE, small_model, identity=np.zeros(5))


def test_fit_landmarks_rejects_bad_input(small_model):
    with pytest.raises(ValueError, match=r"\(T, 68, 2\)"):
        lf.fit_landmarks(np.zeros((4, 5, 2)), SIZE, small_model)
    bad = np.full((2, 68, 2), 100.0)
    bad[1, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lf.fit_landmarks(bad, SIZE, small_model)


# ---------------------------------------------------------------- the extractor
def test_frame_camera_is_deep3d_scaled_to_the_short_side():
    """The convention of pipelines.extractors.deep3d.frame_camera: coefficients for the frame they describe."""
    assert lf.frame_camera(256, 256) == PerspectiveCamera.deep3d(256)
    assert lf.frame_camera(640, 360) == PerspectiveCamera(640, 360, focal=1015 * 360 / 224, cx=320, cy=180)


@pytest.fixture(scope="module")
def extractor():
    return LandmarksExtractor(model="procedural-small")


def test_extractor_rows_per_chunk_and_status(extractor, small_model):
    rng = np.random.default_rng(8)
    chunks = {"id10001#aaaaaaaaaaa#000000#000010": sample_chunk(rng, 6),
              "id10002#bbbbbbbbbbb#000000#000010": sample_chunk(rng, 5)}
    batch = {k: [] for k in ("chunk_id", "frame_index", "landmarks", "status", "error", "image")}
    for chunk_id, c in chunks.items():
        for i, points in enumerate(truth_landmarks(small_model, c) + rng.normal(0, 0.5, (len(c), 68, 2))):
            # frame indices two apart: independent poses, not neighbouring frames (no temporal term, no pose-step gate)
            for key, value in zip(batch, (chunk_id, 2 * i, points.reshape(-1).tolist(), "ok", "", None)):
                batch[key].append(value)
    # a row failed upstream, a row with neither landmarks nor image, a row with garbage image bytes
    for key, values in (("status", ["decode_error", "ok", "ok"]), ("error", ["truncated", "", ""]),
                        ("image", [None, None, b"not an image"])):
        batch[key] += values
    batch["chunk_id"] += ["id10003#ccccccccccc#000000#000010"] * 3
    batch["frame_index"] += [0, 1, 2]
    batch["landmarks"] += [None] * 3

    out = extractor(batch)
    table = pa.Table.from_pydict(out, schema=COEFFS)          # the output fits the schema
    assert table.num_rows == len(batch["chunk_id"])
    assert out["status"][-3:] == ["decode_error", "decode_error", "decode_error"]
    assert out["error"][-3] == "truncated" and "no image" in out["error"][-2] and "decode" in out["error"][-1]
    assert set(out["extractor"]) == {"landmarks"}
    coeffs = np.array([c for c in out["coeffs"][:11]])
    assert out["status"][:11] == ["ok"] * 11
    assert (coeffs[:6, ID] == coeffs[0, ID]).all() and (coeffs[6:, ID] == coeffs[6, ID]).all()
    assert not np.allclose(coeffs[0, ID], coeffs[6, ID])        # each chunk its own identity
    truth = np.concatenate(list(chunks.values()))
    assert np.median(rotation_errors_deg(truth, coeffs)) < 3.0
    assert max(out["fit_error"][:11]) < 1.5
    np.testing.assert_allclose(out["landmarks"][0], batch["landmarks"][0], rtol=1e-6)


def test_extractor_marks_bad_fits(small_model):
    rng = np.random.default_rng(9)
    c = sample_chunk(rng, 4)
    points = truth_landmarks(small_model, c)
    points[2] = rng.uniform(0, SIZE, (68, 2))              # not a face
    strict = LandmarksExtractor(model="procedural-small", config=lf.FitConfig(max_rmse=4.0))
    out = strict({"chunk_id": ["x#y#000000#000004"] * 4, "frame_index": [0, 2, 4, 6],
                  "landmarks": [p.reshape(-1) for p in points]})
    assert out["status"][2] == "implausible" and "RMSE" in out["error"][2]
    assert out["fit_error"][2] > 4.0 and out["coeffs"][2] is not None
    column_only = LandmarksExtractor(model="procedural-small", landmark_source="column")
    assert column_only({"chunk_id": ["x#y#000000#000004"], "frame_index": [0], "landmarks": [None]})["status"] == \
        ["no_face"]


def test_extractor_on_a_real_photo_with_dlib(extractor):
    """dlib's 68 points on a real (non-square) photo: the fit runs in the frame's Deep3D camera."""
    from PIL import Image

    path = fixture_path("deep3d", "examples", "000033.jpg")
    data = path.read_bytes()
    out = extractor({"chunk_id": ["p#v#000000#000001"], "frame_index": [0], "image": [data]})
    assert out["status"] == ["ok"], out["error"]
    image = uint8_to_tensor(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    expected = landmarks68([image], symmetric=True)[0].numpy()     # the extractor's points: mirror-averaged dlib
    np.testing.assert_allclose(np.reshape(out["landmarks"][0], (68, 2)), expected, atol=1e-4)
    # the procedural face is not a real face: a few pixels of residual on a 250x262 photo
    assert out["fit_error"][0] < 8.0
    yaw = np.rad2deg(out["coeffs"][0][ANGLE.start + 1])
    assert abs(yaw) < 30                                     # a roughly frontal portrait


# ---------------------------------------------------------------- the synthetic world (tiny preset)
@pytest.fixture(scope="module")
def tiny_world_truth():
    """The tiny world's ground truth without rendering: SYNTH_TRUTH rows of every VoxCeleb-style video."""
    world = synth_world.sample_world("tiny", seed=0)
    model = procedural_model(world.preset.model)
    rows = [row for seq in world.videos for row in writer.truth_rows(seq, writer.frame_truth(model, seq.coeffs,
                                                                                             seq.camera))]
    return world, pa.Table.from_pylist([r for r in rows if r["chunk_id"] is not None])


def test_recovers_head_pose_on_the_tiny_synthetic_world(tiny_world_truth, capsys):
    """Fit every chunk of the tiny world from its crop landmarks (+0.5 px noise) through the extractor; the rotation
    error vs the ground truth stays near what was measured (median 0.70 deg, p90 1.38; 0.65 / 1.05 when the bounds
    were set)."""
    world, truth = tiny_world_truth
    rng = np.random.default_rng(0)
    landmarks = np.asarray(truth["crop_landmarks"].to_pylist()) + rng.normal(0, 0.5, (truth.num_rows, 136))
    extractor = LandmarksExtractor(model=f"procedural-{world.preset.model}", config=FIXED, landmark_source="column")
    out = extractor({"chunk_id": truth["chunk_id"].to_pylist(), "frame_index": truth["frame_index"].to_pylist(),
                     "landmarks": list(landmarks), "width": [256] * truth.num_rows, "height": [256] * truth.num_rows})
    assert out["status"] == ["ok"] * truth.num_rows
    fitted, expected = np.asarray(out["coeffs"]), np.asarray(truth["crop_coeffs"].to_pylist())
    errors = rotation_errors_deg(expected, fitted)
    yaw = np.abs(np.rad2deg(expected[:, ANGLE.start + 1]))
    depth = np.abs(fitted[:, TRANS.start + 2] - expected[:, TRANS.start + 2]) / (10 - expected[:, TRANS.start + 2])
    with capsys.disabled():
        print(f"\ntiny synthetic world, {truth.num_rows} frames in {len(set(out['chunk_id']))} chunks (|yaw| up to "
              f"{yaw.max():.0f} deg), truth landmarks + 0.5 px: rotation error median {np.median(errors):.2f} deg, "
              f"p90 {np.percentile(errors, 90):.2f}, max {errors.max():.2f}; relative depth error median "
              f"{np.median(depth):.3f}; landmark RMSE median {np.median(out['fit_error']):.2f} px")
    # about 1.5x the figures measured here with fixed jaw vertices (the truth's): median 0.65 deg, p90 1.05 (0.80 /
    # 1.39 with the temporal term solved Jacobi-style in 25 iterations, 0.89 / 1.39 with the plain identity prior
    # too, 0.59 / 1.00 before issue 12's identity prior, temporal term and noise estimate), so that a constant 2 deg
    # yaw or pitch bias fails (issue 15: it gives a median near 2 deg)
    assert np.median(errors) <= 1.0
    assert np.percentile(errors, 90) <= 1.6


def test_extractor_runs_as_a_ray_actor(ray_session, small_model):
    """One chunk as one numpy batch through ``map_batches`` with an actor pool, as the runner drives extractors."""
    import ray.data

    rng = np.random.default_rng(10)
    c = sample_chunk(rng, 6)
    points = truth_landmarks(small_model, c)
    items = [{"chunk_id": "id10001#aaaaaaaaaaa#000000#000006", "frame_index": 2 * i, "status": "ok", "error": "",
              "landmarks": points[i].reshape(-1).astype(np.float32)} for i in range(6)]
    ds = ray.data.from_items(items).map_batches(
        LandmarksExtractor, fn_constructor_kwargs={"model": "procedural-small", "landmark_source": "column"},
        batch_size=6, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    rows = sorted(ds.take_all(), key=lambda r: r["frame_index"])
    assert [r["status"] for r in rows] == ["ok"] * 6 and {r["extractor"] for r in rows} == {"landmarks"}
    coeffs = np.stack([np.asarray(r["coeffs"]) for r in rows])
    assert (coeffs[:, ID] == coeffs[0, ID]).all()
    assert np.median(rotation_errors_deg(c, coeffs)) < 2.0


def test_an_identity_outside_the_prior_is_held_at_its_edge(small_model):
    """A face the model reaches only with identity RMS ~5 (far outside alpha ~ N(0, 1)): with the bound the fit's
    identity stays within id_rms_bound (plus the last refit's overshoot), without it (id_rms_bound 0) it leaves the
    prior; a face drawn from the prior is fitted the same either way."""
    from dataclasses import replace

    rng = np.random.default_rng(21)
    outside = sample_chunk(rng, 24, yaw_max=30)
    outside[:, ID] = 5.0 * rng.standard_normal(80)
    points = truth_landmarks(small_model, outside) + rng.normal(0, 0.5, (24, 68, 2))
    rms = lambda fit: float(np.sqrt(np.mean(fit.coeffs[0, ID] ** 2)))   # noqa: E731
    bounded = lf.fit_landmarks(points, SIZE, small_model, FIXED)
    free = lf.fit_landmarks(points, SIZE, small_model, replace(FIXED, id_rms_bound=0.0))
    assert rms(free) > 1.5 and rms(bounded) <= FIXED.id_rms_bound + 0.1, (rms(free), rms(bounded))
    inside = sample_chunk(rng, 24, yaw_max=30)
    points = truth_landmarks(small_model, inside) + rng.normal(0, 0.5, (24, 68, 2))
    assert np.array_equal(lf.fit_landmarks(points, SIZE, small_model, FIXED).coeffs,
                          lf.fit_landmarks(points, SIZE, small_model, replace(FIXED, id_rms_bound=0.0)).coeffs)


def test_detector_offsets_are_fitted_as_shifted_landmarks(small_model):
    """Landmarks made with model-frame offsets (the detector's points) are fitted exactly with the model's
    landmark_offsets (FitConfig.landmark_offsets, the default) and not without them; zero offsets change nothing."""
    from reenact.face3d.transforms import euler_to_matrix

    rng = np.random.default_rng(21)
    c = sample_chunk(rng, 8, id_std=0.0, exp_std=0.0)
    offsets = torch.from_numpy(rng.normal(0, 0.04, (68, 3)))
    model = replace(small_model, landmark_offsets=offsets)
    bases = lf.landmark_bases(model)
    shapes = lf.landmark_points(bases.with_offsets(), c, PerspectiveCamera.deep3d(SIZE), contour=False)
    posed = shapes @ euler_to_matrix(torch.from_numpy(c[:, ANGLE])).transpose(1, 2) + torch.from_numpy(c[:, None, TRANS])
    points = lf.project(posed, PerspectiveCamera.deep3d(SIZE)).numpy()
    config = lf.FitConfig(fit_identity=False, fit_expression=False, depth_prior=0.0, jaw_contour=False)
    shifted = lf.fit_landmarks(points, SIZE, bases, config, links=stills(8))
    assert rotation_errors_deg(c, shifted.coeffs).max() < 1e-3
    vertices = lf.fit_landmarks(points, SIZE, bases, replace(config, landmark_offsets=False), links=stills(8))
    assert np.median(rotation_errors_deg(c, vertices.coeffs)) > 0.5
    zero = lf.landmark_bases(replace(small_model, landmark_offsets=torch.zeros(68, 3)))
    assert zero.with_offsets() is zero
