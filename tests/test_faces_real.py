"""The landmark fit on real faces (``../shared/fixtures/real``), checked without ground truth (issue 12 item 6).

A short piece of each clip keeps this module to a few minutes on a busy 2-core machine; ``perf/real_faces.py``
prints the same figures on the whole clips. Skips, saying why, when the fixtures are absent.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from perf import real_clips
from perf import real_faces as rf
from reenact.data.codec import uint8_to_tensor
from reenact.data.schema import Status

pytestmark = pytest.mark.slow
FRAMES = 24


@pytest.fixture(scope="module")
def estimator():
    from reenact.faces.landmark_fit import LandmarkFitEstimator

    return LandmarkFitEstimator()


@pytest.fixture(scope="module")
def lp_d0():
    """The first 24 frames of lp_d0 (near-frontal, little head motion) at 256^2, detected and cross-checked."""
    if not real_clips.available():
        pytest.skip(f"real clips not found in {real_clips.REAL} (../shared/fixtures/real)")
    frames = real_clips.load_clip("lp_d0", max_frames=FRAMES).frames
    det = rf.checked_landmarks(frames, rf.raw_detections(frames), {}, symmetric=True)   # as the estimator
    return frames, det


def test_real_frames_pass_detection_and_every_gate(lp_d0, estimator):
    frames, det = lp_d0
    assert det["ok"].all(), det["reason"]
    result = estimator.fit_points(torch.from_numpy(det["points"]), [(256, 256)] * FRAMES,
                                  boxes=torch.from_numpy(det["boxes"]), frame_index=np.arange(FRAMES))
    assert all(s == Status.OK for s in result.status), result.error
    assert float(result.coeffs[0, :80].double().square().mean().sqrt()) <= 1.5       # identity within the prior


@pytest.fixture(scope="module")
def figures(lp_d0, estimator) -> dict:
    return rf.clip_figures("lp_d0", lp_d0[1], estimator, rf.roll_sign(estimator))


def test_mirror_pitch_and_roll_against_the_eye_line(figures):
    assert figures["mirror_pitch"] <= 2.0, figures          # issue 12's acceptance
    assert abs(figures["roll_offset"]) <= 3.0, figures      # issue 12's acceptance
    assert figures["id_rms"]["whole"] <= 1.5 and figures["id_rms"][8] <= 1.5, figures


def test_acceptance_mirror_yaw_and_chunking(figures):
    """issue 12's acceptance on these frames: mirror |yaw + yaw_m| <= 2 deg, 8-frame chunks vs the whole piece p90
    <= 3 deg (measured here: 0.02 and 0.68; 3.1 and 3.8 on the whole clip before the identity and expression priors
    were made mirror-symmetric and short chunks got the identity prior of 16 frames), and regression bounds well
    under the acceptance."""
    assert figures["mirror_yaw"] <= 2.0 and figures["chunk8_p90"] <= 3.0, figures
    assert figures["mirror_yaw"] <= 0.3 and abs(figures["mirror_roll"]) <= 0.3 and figures["chunk8_p90"] <= 1.5, figures
    # one identity per video (fit_points(identity=...)): the chunking no longer moves the pose (measured 0.03)
    assert figures["chunk8_p90_clip_identity"] <= 0.3, figures


@pytest.mark.parametrize("name", ["lp_d0", "tpsmm_driving", "lp_d10"])
def test_texture_and_light_bring_the_render_close_to_the_frame(name, estimator):
    """Issue 12's photometric acceptance on the first and last frames of each clip: mean |I_r - frame| inside the
    face mask <= 0.06, without the occluders (hair) and with them, well below the flat render's (measured: lp_d0
    0.031 / 0.032, tpsmm_driving 0.046 / 0.046, lp_d10 0.052 / 0.055, flat 0.13, 0.16, 0.20;
    ``perf/real_faces.py --symmetric --photometric-frames 4``: 0.036, 0.044, 0.055 / 0.058)."""
    from reenact.faces.photometric import photometric_fit

    if not real_clips.available():
        pytest.skip(f"real clips not found in {real_clips.REAL} (../shared/fixtures/real)")
    frames = real_clips.load_clip(name).frames
    pick = [0, len(frames) - 1]
    images = uint8_to_tensor(frames[pick])
    found = estimator.detect_landmarks(images, track=False)
    assert set(found.status) == {Status.OK}, found.reason
    result = estimator.fit_points(found.points, [(256, 256)] * 2, frame_index=pick)
    photometric = photometric_fit(images, result.coeffs, found.points, estimator.model)
    assert photometric.error <= 0.06 and photometric.error < 0.5 * photometric.flat_error, photometric.error
    assert photometric.face_error <= 0.06, photometric.face_error      # with the occluders (hair) kept
