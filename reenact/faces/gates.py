"""Plausibility gates: a fitted frame is ``ok`` only when it passes every named check, else ``implausible``
(:attr:`reenact.data.schema.Status.IMPLAUSIBLE`) with a reason naming each failed check and its figure.

Checks (thresholds in :class:`Gates`, each tested with injected errors in ``tests/test_faces_gates.py``):

* ``landmark_rmse``: the fit's landmark RMSE relative to the face size (``sqrt(w h)`` of the 68 points' bounding
  box) stays below ``max_rmse_rel``; shuffled or misplaced landmarks, or a face the model cannot reach, fail it.
* ``landmarks_in_box``: at least ``min_in_box`` of the 68 points lie inside the detector's box grown by
  ``box_margin`` of its size, and the points' extent is within ``max_box_size_ratio`` of the box (a predictor run in
  a wrong box returns a squeezed face inside it, or points that ignore it).
* ``in_frame``: at most ``max_border_points`` points lie within ``border`` pixels of the image edge (a face, or a
  chin, that leaves the frame; the predictor then guesses, and the fit follows the guess).
* ``pose_step``: the head rotation between neighbouring frames stays below ``max_pose_step_deg`` (a frame that jumps
  is an error of the fit or of the detector, not a head turn at 25-30 fps).
* ``identity_prior``: the identity coefficients' RMS stays below ``max_id_rms`` (alpha ~ N(0, 1) per coefficient;
  a fit that needs a face far outside the model's prior is not describing this face). It fails every frame of the fit.
* detector agreement is checked before the fit (:func:`reenact.faces.detect.cross_check`): a confident
  disagreement that no face track settles is ``detector_disagreement``, a box off the face track ``implausible``;
  those frames are not fitted and keep the detection's status and reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reenact.data.schema import Status
from reenact.face3d.coeffs import ANGLE, ID
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between


@dataclass(frozen=True)
class Gates:
    """Thresholds of :func:`check_fit`; pixel values are for the image the landmarks are in."""

    max_rmse_rel: float = 0.06         # RMSE / face size; at 256^2 crops faces are ~100-140 px: ~6-8 px
    min_in_box: float = 0.8            # fraction of the 68 points inside the grown detector box
    box_margin: float = 0.25           # growth of the box on each side, in box sizes
    max_box_size_ratio: float = 2.0    # the points' extent vs the box's size, either way
    border: float = 1.0                # pixels from the image edge that count as "at the border"
    max_border_points: int = 2         # more points than this at the border: the face leaves the frame
    max_pose_step_deg: float = 12.0    # rotation between neighbouring frames
    max_id_rms: float = 1.5            # RMS of the 80 identity coefficients


@dataclass(frozen=True)
class GateResult:
    """Per frame: ``passed`` ``(T,)`` bool, ``status`` and ``reason`` (the failed checks, readable)."""

    passed: torch.Tensor
    status: tuple[Status, ...]
    reason: tuple[str, ...]


def face_size(points: torch.Tensor) -> torch.Tensor:
    """``sqrt(w h)`` of the bounding box of ``(..., K, 2)`` points."""
    extent = points.amax(-2) - points.amin(-2)
    return (extent[..., 0] * extent[..., 1]).clamp_min(0).sqrt()


def pose_steps_deg(coeffs: torch.Tensor, links: torch.Tensor) -> torch.Tensor:
    """Per frame, the largest rotation (degrees) to a linked neighbour ``(T,)`` (0 without one)."""
    rotation = euler_to_matrix(coeffs[:, ANGLE].double())
    steps = torch.rad2deg(rotation_angle_between(rotation[:-1], rotation[1:])) * links
    out = torch.zeros(len(coeffs), dtype=torch.float64)
    if len(steps):
        out[:-1] = torch.maximum(out[:-1], steps)
        out[1:] = torch.maximum(out[1:], steps)
    return out


def check_fit(coeffs: torch.Tensor, landmarks: torch.Tensor, rmse: torch.Tensor, image_size: tuple[int, int],
              boxes: torch.Tensor | None = None, links: torch.Tensor | None = None,
              gates: Gates = Gates()) -> GateResult:
    """Run every gate on T fitted frames of one fit.

    Args:
        coeffs: ``(T, 257)`` fitted coefficients (one identity).
        landmarks: ``(T, 68, 2)`` the observed points (continuous pixels).
        rmse: ``(T,)`` landmark RMSE in pixels.
        image_size: ``(width, height)``.
        boxes: ``(T, 4)`` detector boxes used for the landmarks (None: the box check is skipped).
        links: ``(T - 1,)`` bool, neighbours in time (None: consecutive frames).
    """
    count = len(coeffs)
    links = torch.ones(max(count - 1, 0), dtype=torch.bool) if links is None else links.bool()
    failures: list[list[str]] = [[] for _ in range(count)]
    size = face_size(landmarks.double())
    rel = rmse.double() / size
    for i in (rel > gates.max_rmse_rel).nonzero()[:, 0].tolist():
        failures[i].append(f"landmark RMSE {float(rmse[i]):.2f} px is {float(rel[i]):.3f} of the face size "
                           f"(> {gates.max_rmse_rel})")
    if boxes is not None:
        for i, why in _box_failures(landmarks.double(), boxes.double(), gates):
            failures[i].append(why)
    width, height = image_size
    x, y = landmarks[..., 0].double(), landmarks[..., 1].double()
    at_border = ((x < gates.border) | (y < gates.border) | (x > width - gates.border)
                 | (y > height - gates.border)).sum(-1)
    for i in (at_border > gates.max_border_points).nonzero()[:, 0].tolist():
        failures[i].append(f"{int(at_border[i])} landmarks at the image border: the face leaves the frame")
    steps = pose_steps_deg(coeffs, links)
    for i in (steps > gates.max_pose_step_deg).nonzero()[:, 0].tolist():
        failures[i].append(f"head rotation jumps {float(steps[i]):.1f} deg to a neighbouring frame "
                           f"(> {gates.max_pose_step_deg})")
    id_rms = float(coeffs[0, ID].double().square().mean().sqrt()) if count else 0.0
    if id_rms > gates.max_id_rms:
        for f in failures:
            f.append(f"identity coefficients RMS {id_rms:.2f} outside the prior (> {gates.max_id_rms})")
    passed = torch.tensor([not f for f in failures], dtype=torch.bool)
    status = tuple(Status.OK if not f else Status.IMPLAUSIBLE for f in failures)
    return GateResult(passed, status, tuple("; ".join(f) for f in failures))


def _box_failures(points: torch.Tensor, boxes: torch.Tensor, gates: Gates):
    from reenact.faces.detect import box_size

    size = box_size(boxes)
    grown = boxes + torch.stack([-size, -size, size, size], -1) * gates.box_margin
    inside = ((points[..., 0] >= grown[:, None, 0]) & (points[..., 0] <= grown[:, None, 2])
              & (points[..., 1] >= grown[:, None, 1]) & (points[..., 1] <= grown[:, None, 3])).double().mean(-1)
    ratio = face_size(points) / size
    for i in range(len(points)):
        if not np.isfinite(float(size[i])):
            continue
        if inside[i] < gates.min_in_box:
            yield i, f"only {float(inside[i]):.0%} of the landmarks lie in the face box"
        elif not 1 / gates.max_box_size_ratio <= ratio[i] <= gates.max_box_size_ratio:
            yield i, f"the landmarks span {float(ratio[i]):.2f}x the face box"
