"""Plausibility gates and cross-checked detection: every injected error gets a non-ok status with its reason, and
clean synthetic frames pass (issue 12 item 4)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from reenact.data.schema import Status
from reenact.face3d.camera import PerspectiveCamera
from reenact.face3d.coeffs import ANGLE, EXP, ID, TRANS
from reenact.face3d.face import project_landmarks
from reenact.face3d.procedural import procedural_model
from reenact.faces.detect import DetectionChecks, FaceBoxes, box_centre, box_size, resolve
from reenact.faces.gates import Gates, check_fit
from reenact.faces.landmark_fit import LandmarkFitEstimator

SIZE = 256
FRAMES = 24


@pytest.fixture(scope="module")
def model():
    return procedural_model("small")


@pytest.fixture(scope="module")
def estimator():
    return LandmarkFitEstimator(model="procedural-small")


def smooth_sequence(frames: int = FRAMES, seed: int = 0) -> np.ndarray:
    """``(T, 257)``: one identity, a slow head turn (yaw -20 -> 20 deg), small nods, smooth expressions."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, frames)
    c = np.zeros((frames, 257))
    c[:, ID] = rng.normal(0, 0.8, 80)
    c[:, EXP] = np.outer(np.sin(2 * np.pi * t), rng.normal(0, 0.4, 64))
    c[:, ANGLE] = np.deg2rad(np.stack([4 * np.sin(2 * np.pi * t), -20 + 40 * t, 3 * np.cos(2 * np.pi * t)], -1))
    c[:, TRANS] = np.stack([0.05 * t, np.full(frames, 0.05), np.full(frames, -3.0)], -1)
    return c


def landmarks_of(model, coeffs: np.ndarray, noise: float = 0.5, seed: int = 1) -> torch.Tensor:
    points = project_landmarks(model, torch.from_numpy(coeffs).float(), PerspectiveCamera.deep3d(SIZE)).double()
    return points + torch.from_numpy(np.random.default_rng(seed).normal(0, noise, points.shape))


def boxes_around(points: torch.Tensor) -> torch.Tensor:
    """dlib-like boxes around the 68 points."""
    return torch.cat([points.amin(1), points.amax(1)], -1)


def fit(estimator, points: torch.Tensor, boxes: torch.Tensor | None = None):
    return estimator.fit_points(points, [(SIZE, SIZE)] * len(points), boxes=boxes, frame_index=np.arange(len(points)))


# ---------------------------------------------------------------- gates, end to end through the fit
def test_clean_smooth_frames_pass_every_gate(model, estimator):
    points = landmarks_of(model, smooth_sequence())
    result = fit(estimator, points, boxes_around(points))
    assert all(s == Status.OK for s in result.status), result.error


def test_shuffled_landmarks_fail_the_rmse_gate(model, estimator):
    points = landmarks_of(model, smooth_sequence())
    points[9] = points[9][torch.from_numpy(np.random.default_rng(2).permutation(68))]
    result = fit(estimator, points)
    assert result.status[9] == Status.IMPLAUSIBLE and "landmark RMSE" in result.error[9], result.error[9]
    # the temporal term drags its neighbours along (measured: 5 of 24 frames fail), not the clip
    assert sum(s != Status.OK for s in result.status) <= 6


def test_a_wrong_box_fails_the_box_gate(model, estimator):
    points = landmarks_of(model, smooth_sequence())
    boxes = boxes_around(points)
    boxes[5] = torch.tensor([10.0, 10.0, 50.0, 50.0], dtype=torch.float64)           # a box on the background
    result = fit(estimator, points, boxes)
    assert result.status[5] == Status.IMPLAUSIBLE and "lie in the face box" in result.error[5], result.error[5]
    assert result.status[4] == Status.OK


def test_a_cut_off_chin_fails_the_in_frame_gate(model, estimator):
    c = smooth_sequence()
    c[12:15, TRANS.start + 1] -= 0.9                                # the head drops: the chin leaves the frame
    points = landmarks_of(model, c)
    assert (points[12:15, 8, 1] > SIZE).all()
    points = points.clamp(0.5, SIZE - 0.5)                          # where a predictor leaves the jaw: at the edge
    result = fit(estimator, points)
    for i in range(12, 15):
        assert result.status[i] == Status.IMPLAUSIBLE and "at the image border" in result.error[i], result.error[i]


def test_a_pose_jump_between_neighbours_fails_the_pose_step_gate(model, estimator):
    c = smooth_sequence()
    c[10, ANGLE.start] += np.deg2rad(24.0)                          # a 24 deg pitch jump for one frame
    result = fit(estimator, landmarks_of(model, c))
    assert result.status[10] == Status.IMPLAUSIBLE and "head rotation jumps" in result.error[10], result.error[10]


def test_identity_outside_the_prior_fails_every_frame():
    c = torch.from_numpy(smooth_sequence(6))
    c[:, ID] = 3.0
    points = torch.rand(6, 68, 2, dtype=torch.float64) * 100 + 50
    result = check_fit(c, points, torch.full((6,), 0.5), (SIZE, SIZE))
    assert not result.passed.any() and set(result.status) == {Status.IMPLAUSIBLE}
    assert all("identity coefficients RMS 3.00 outside the prior" in r for r in result.reason), result.reason
    c[:, ID] = 0.5
    assert check_fit(c, points, torch.full((6,), 0.5), (SIZE, SIZE)).passed.all()


def test_schema_3_adds_the_gate_statuses_and_keeps_every_older_one():
    """Shards of schema version 2 carry only the older strings; each still parses as a Status."""
    from reenact.data.schema import SCHEMA_VERSION, STATUSES

    version_2 = ("ok", "skipped", "unavailable", "private", "download_error", "timeout", "decode_error", "too_short",
                 "out_of_frame", "bad_metadata", "rejected", "no_face", "fit_error")
    assert SCHEMA_VERSION == 3 and [Status(s).value for s in version_2] == list(version_2)
    assert set(STATUSES) - set(version_2) == {"implausible", "detector_disagreement"}


def test_gate_thresholds_are_the_documented_ones():
    gates = Gates()
    assert (gates.max_rmse_rel, gates.max_pose_step_deg, gates.max_id_rms, gates.max_border_points) == \
        (0.06, 12.0, 1.5, 2)


# ---------------------------------------------------------------- cross-checked detection (injected detector output)
def face_track(frames: int = 12) -> torch.Tensor:
    """dlib-like boxes of a face drifting right: ``(T, 4)``."""
    x = torch.linspace(80, 100, frames, dtype=torch.float64)
    return torch.stack([x, torch.full_like(x, 70), x + 100, torch.full_like(x, 170)], -1)


def mtcnn_like(boxes: torch.Tensor) -> torch.Tensor:
    """MTCNN boxes are ~15 % larger and lower than dlib's."""
    size, centre = box_size(boxes)[:, None], box_centre(boxes)
    centre = centre + torch.tensor([0.0, 0.1]) * size
    return torch.cat([centre - 0.575 * size, centre + 0.575 * size], -1)


def injected(m_boxes, m_prob, d_boxes, d_score):
    return FaceBoxes(m_boxes, m_prob, "mtcnn"), FaceBoxes(d_boxes, d_score, "dlib")


def test_agreeing_detectors_give_dlibs_box():
    d = face_track()
    m, dl = injected(mtcnn_like(d), torch.ones(12, dtype=torch.float64), d, torch.full((12,), 1.5))
    out = resolve(m, dl)
    assert out.source == ("both",) * 12 and torch.equal(out.boxes, d) and set(out.status) == {Status.OK}


def test_a_weak_false_dlib_box_is_overruled_by_mtcnn():
    """The issue's case: dlib's 62 px box on a cheek at score 0.03 while MTCNN has the face at probability 1."""
    d = face_track()
    m_boxes = mtcnn_like(d)
    d_wrong = d.clone()
    d_wrong[4] = torch.tensor([150.0, 130.0, 212.0, 192.0])
    score = torch.full((12,), 1.5, dtype=torch.float64)
    score[4] = 0.03
    out = resolve(*injected(m_boxes, torch.ones(12, dtype=torch.float64), d_wrong, score))
    assert out.source[4] == "mtcnn" and torch.equal(out.boxes[4], m_boxes[4]) and out.status[4] == Status.OK
    assert "weak" in out.reason[4]


def test_a_confident_disagreement_is_settled_by_the_track_or_becomes_a_status():
    d = face_track()
    d_wrong = d.clone()
    d_wrong[6] = torch.tensor([10.0, 10.0, 90.0, 90.0])             # a confident dlib box elsewhere
    m, dl = injected(mtcnn_like(d), torch.ones(12, dtype=torch.float64), d_wrong, torch.full((12,), 1.2))
    tracked = resolve(m, dl)
    assert tracked.source[6] == "mtcnn" and tracked.status[6] == Status.OK and "track" in tracked.reason[6]
    alone = resolve(m, dl, track=False)                              # photos: nothing to decide with
    assert alone.status[6] == Status.DETECTOR_DISAGREEMENT and "detectors disagree" in alone.reason[6]
    assert set(alone.status[:6] + alone.status[7:]) == {Status.OK}


def test_an_unsettled_disagreement_keeps_its_status_through_the_fit(model, estimator):
    """The detection's status (not a generic no_face) is what the fitted chunk writes for a frame left out."""
    points = landmarks_of(model, smooth_sequence(6))
    points[3] = float("nan")
    status = [Status.OK] * 6
    status[3] = Status.DETECTOR_DISAGREEMENT
    result = estimator.fit_points(points, [(SIZE, SIZE)] * 6, frame_index=np.arange(6), statuses=status,
                                  reasons=[""] * 3 + ["detectors disagree: ..."] + [""] * 2)
    assert result.status[3] == Status.DETECTOR_DISAGREEMENT and result.error[3].startswith("detectors disagree")
    assert result.status[0] == Status.OK
    points[3] = float("nan")
    plain = estimator.fit_points(points, [(SIZE, SIZE)] * 6, frame_index=np.arange(6))
    assert plain.status[3] == Status.NO_FACE


def test_the_row_adapter_writes_the_detections_status(model, monkeypatch):
    """Through ``pipelines``: a frame whose detectors disagree is a ``detector_disagreement`` row with the reason."""
    from pipelines.extractors.landmark_fit import LandmarksExtractor
    from reenact.data.codec import encode_png
    from reenact.faces.landmark_fit import FaceLandmarks

    extractor = LandmarksExtractor(model="procedural-small", landmark_source="dlib", photometric_frames=0)
    points = landmarks_of(model, smooth_sequence(3))
    points[1] = float("nan")
    found = FaceLandmarks(points, boxes_around(points), (Status.OK, Status.DETECTOR_DISAGREEMENT, Status.OK),
                          ("", "detectors disagree: MTCNN box (1, 2, 3, 4) vs dlib box (5, 6, 7, 8)", ""))
    monkeypatch.setattr(extractor.estimator, "detect_landmarks", lambda images, track=None: found)
    image = encode_png(np.zeros((SIZE, SIZE, 3), np.uint8))
    out = extractor({"chunk_id": ["p#v#000000#000003"] * 3, "frame_index": [0, 1, 2], "image": [image] * 3})
    assert out["status"] == ["ok", "detector_disagreement", "ok"], out["error"]
    assert out["error"][1].startswith("detectors disagree: MTCNN box") and out["coeffs"][1] is None


def test_a_one_frame_false_box_of_both_detectors_leaves_the_track():
    d = face_track()
    d[7] = torch.tensor([150.0, 150.0, 200.0, 200.0])
    m, dl = injected(mtcnn_like(d), torch.ones(12, dtype=torch.float64), d, torch.full((12,), 1.2))
    out = resolve(m, dl)
    assert out.status[7] == Status.IMPLAUSIBLE and "jumps off the face track" in out.reason[7]
    assert all(out.status[i] == Status.OK for i in range(12) if i != 7)


def test_low_mtcnn_probability_and_no_dlib_box_is_no_face():
    d = face_track(4)
    prob = torch.tensor([1.0, 0.5, 1.0, 1.0], dtype=torch.float64)
    nan = torch.full((4,), float("nan"), dtype=torch.float64)
    d_boxes = d.clone()
    d_boxes[1] = float("nan")
    out = resolve(*injected(mtcnn_like(d), prob, d_boxes, torch.where(torch.isnan(d_boxes[:, 0]), nan, 1.0)),
                  DetectionChecks(), track=False)
    assert out.status[1] == Status.NO_FACE and "probability 0.50" in out.reason[1]
    assert out.source[0] == "both"
