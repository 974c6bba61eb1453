"""Coefficients on real faces without ground truth: the figures of issue 12 on ``../shared/fixtures/real``.

    python perf/real_faces.py [--clips lp_d0 tpsmm_driving lp_d10 tpsmm_source] [--cache /tmp/reenact_real_faces.npz]
                              [--max-frames N] [--photometric-frames 4] [--synthetic]

Every clip is cut to its centred square and resized to 256^2 (:mod:`perf.real_clips`). Both detectors run on every
frame and are cross-checked (:func:`reenact.faces.detect.cross_check`, tracked through the clip), dlib's 68 points
are placed in the chosen boxes, then the landmark fit (:class:`reenact.faces.landmark_fit.LandmarkFitEstimator`,
default settings) runs. Detections are cached in ``--cache`` (they are the slow part on a busy machine). Printed:

* mirror consistency: the clip and its left-right mirror (frames flipped, boxes mirrored, dlib's points detected
  again on the mirrored frames), each fitted as one chunk: per clip median ``|yaw + yaw_mirrored|`` and
  ``|pitch - pitch_mirrored|`` (acceptance: <= 2 deg);
* chunking invariance: whole clip vs 64-frame chunks vs 8-frame chunks: p90 of the rotation angle between the
  fitted rotations (acceptance: <= 3 deg); also with the whole clip's identity fixed in every chunk
  (``fit_points(identity=...)``: one identity per video);
* roll against the eye line: per clip mean of ``roll - roll_eyes``, where ``roll_eyes`` is the angle of the line
  between dlib's eye centres, with the sign of the model's roll (acceptance: |mean| <= 3 deg);
* identity RMS: the largest RMS of the 80 identity coefficients over the chunks of each chunk length (<= 1.5);
* % ok: frames of the whole-clip fit that pass detection and every plausibility gate (>= 95 %);
* fit speed: frames / s of the whole-clip fit (landmarks given, one torch thread);
* photometric (with ``--photometric-frames``): mean absolute RGB error inside the face mask of the render with
  fitted texture and light (:mod:`reenact.faces.photometric`), beside the flat render's (<= 0.06), with the
  occluders (:func:`reenact.faces.photometric.occluders`: hair over the cheeks) left out and kept, the error by
  region and the stage's cost;
* with ``--synthetic``: the rotation error of the fit to dlib's points on renders of the tiny synthetic world
  (``perf/calibrate_landmarks.py``'s evaluation; 7.5 deg median before issue 12, acceptance <= 3 deg).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from perf.real_clips import CLIPS, available, load_clip  # noqa: E402
from reenact.data.codec import uint8_to_tensor  # noqa: E402
from reenact.face3d.coeffs import ANGLE, GAMMA, ID, TEX  # noqa: E402
from reenact.face3d.transforms import euler_to_matrix, rotation_angle_between  # noqa: E402
from reenact.faces.landmarks68 import mirror_box, mirror_points  # noqa: E402

CHUNKS = (64, 8)
#: default detections cache (detection is the slow part)
CACHE = Path("/tmp/reenact_real_faces.npz")


# ---------------------------------------------------------------- detection (cached)
def raw_detections(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Both detectors' boxes and scores (the slow part)."""
    from reenact.faces.detect import detect

    images = uint8_to_tensor(frames)
    m, d = detect(images, "mtcnn"), detect(images, "dlib")
    return {"m_boxes": m.boxes.numpy(), "m_score": m.score.numpy(), "d_boxes": d.boxes.numpy(),
            "d_score": d.score.numpy()}


def checked_landmarks(frames: np.ndarray, raw: dict[str, np.ndarray], cached: dict[str, np.ndarray],
                      symmetric: bool = False) -> dict[str, np.ndarray]:
    """Cross-check the detections (tracked), then dlib's 68 points in the chosen boxes on the frames and on their
    mirror images (reused from ``cached`` where the chosen box is the same)."""
    from reenact.faces.detect import FaceBoxes, resolve
    from reenact.faces.landmarks68 import landmarks68

    t = lambda k: torch.from_numpy(raw[k])  # noqa: E731
    faces = resolve(FaceBoxes(t("m_boxes"), t("m_score"), "mtcnn"), FaceBoxes(t("d_boxes"), t("d_score"), "dlib"),
                    track=len(frames) > 2)
    boxes = faces.boxes.numpy()
    points = np.full((len(frames), 68, 2), np.nan)
    mirror = np.full((len(frames), 68, 2), np.nan)
    same = np.zeros(len(frames), bool)
    if "boxes" in cached and len(cached["boxes"]) == len(boxes):
        same = np.all((cached["boxes"] == boxes) | (np.isnan(cached["boxes"]) & np.isnan(boxes)), 1)
        points[same], mirror[same] = cached["points"][same], cached["mirror_points"][same]
    todo = np.flatnonzero(~same)
    if len(todo):
        images = uint8_to_tensor(frames[todo])
        box = faces.boxes[todo]
        points[todo] = landmarks68(images, box, symmetric=symmetric).numpy()
        mirrored = torch.from_numpy(np.array([mirror_box(b, frames.shape[2]) for b in box.numpy()]).reshape(-1, 4))
        mirror[todo] = landmarks68(images.flip(-1), mirrored, symmetric=symmetric).numpy()
    return {"boxes": boxes, "ok": np.array([s.value == "ok" for s in faces.status]),
            "reason": np.array(faces.reason), "points": points, "mirror_points": mirror}


def cached_detections(names: list[str], cache: Path, max_frames: int | None, symmetric: bool = False
                      ) -> dict[str, dict[str, np.ndarray]]:
    """Per clip: raw detections (cached), the cross-checked boxes and the points in them (cached by box, separately
    for plain and mirror-averaged points)."""
    stored = dict(np.load(cache, allow_pickle=False)) if cache.is_file() else {}
    variant = "sym_" if symmetric else ""
    out = {}
    for name in names:
        frames = load_clip(name, max_frames=max_frames).frames
        raw = {k.split("__", 1)[1]: v[:len(frames)] for k, v in stored.items() if k.startswith(name + "__")}
        checked = {k[len(variant):]: v for k, v in raw.items() if variant and k.startswith(variant)} if variant else raw
        start = time.perf_counter()
        if "m_boxes" not in raw or len(raw["m_boxes"]) < len(frames):
            raw.update(raw_detections(frames))
            checked = {}
        entry = {**{k: raw[k] for k in ("m_boxes", "m_score", "d_boxes", "d_score")},
                 **checked_landmarks(frames, raw, checked, symmetric)}
        print(f"# {name}: {len(frames)} frames detected and cross-checked ({time.perf_counter() - start:.0f} s)",
              flush=True)
        stored.update({f"{name}__{k}": entry[k] for k in ("m_boxes", "m_score", "d_boxes", "d_score")})
        stored.update({f"{name}__{variant}{k}": entry[k] for k in ("boxes", "ok", "points", "mirror_points")})
        np.savez(cache, **stored)
        out[name] = entry
    return out


# ---------------------------------------------------------------- fits
def fit_chunks(estimator, points: np.ndarray, chunk: int | None, index: np.ndarray,
               boxes: np.ndarray | None = None, identity: np.ndarray | None = None):
    """Fit ``points (T, 68, 2)`` whole (``chunk`` None) or in chunks of ``chunk`` frames (with ``identity``: that
    identity fixed in every chunk); one CoeffEstimate-like tuple (coeffs (T, 257), ok (T,), identity RMS per chunk,
    seconds)."""
    count = len(points)
    chunk = chunk or count
    coeffs, ok, id_rms, seconds = [], [], [], 0.0
    for start in range(0, count, chunk):
        part = torch.from_numpy(points[start:start + chunk])
        part_boxes = None if boxes is None else torch.from_numpy(boxes[start:start + chunk])
        begin = time.perf_counter()
        est = estimator.fit_points(part, [(256, 256)] * len(part), boxes=part_boxes,
                                   frame_index=index[start:start + len(part)], identity=identity)
        seconds += time.perf_counter() - begin
        coeffs.append(est.coeffs.numpy())
        ok.append(est.ok.numpy())
        fitted = est.coeffs[torch.isfinite(est.coeffs).all(-1)]
        if len(fitted):
            id_rms.append(float(fitted[0, ID].double().square().mean().sqrt()))
    return np.concatenate(coeffs), np.concatenate(ok), id_rms, seconds


def degrees(coeffs: np.ndarray) -> np.ndarray:
    """(pitch, yaw, roll) in degrees ``(T, 3)``."""
    return np.rad2deg(coeffs[:, ANGLE])


def rotation_differences(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    rot = lambda c: euler_to_matrix(torch.from_numpy(c[:, ANGLE].astype(np.float64)))  # noqa: E731
    return np.rad2deg(rotation_angle_between(rot(a), rot(b)).numpy())


def eye_line_deg(points: np.ndarray) -> np.ndarray:
    """Angle (degrees, image y down) of the line from the image-left eye's centre to the image-right eye's."""
    left, right = points[:, 36:42].mean(1), points[:, 42:48].mean(1)
    d = right - left
    return np.rad2deg(np.arctan2(d[:, 1], d[:, 0]))


def roll_sign(estimator) -> float:
    """+1 or -1: the sign relating the model's roll to the eye-line angle (from a projected mean face)."""
    from reenact.face3d.camera import PerspectiveCamera
    from reenact.faces.landmark_fit import project

    b = estimator.bases
    angles = torch.tensor([[0.0, 0.0, np.deg2rad(10.0)]], dtype=torch.float64)
    posed = b.mean @ euler_to_matrix(angles)[0].T + torch.tensor([0.0, 0.0, -3.0], dtype=torch.float64)
    points = project(posed, PerspectiveCamera.deep3d(256)).numpy()[None]
    return float(np.sign(eye_line_deg(points)[0]))


# ---------------------------------------------------------------- report
def usable(det: dict[str, np.ndarray]) -> np.ndarray:
    """Frames whose detection is ``ok`` and whose points and mirror-image points are all found."""
    return det["ok"] & np.isfinite(det["points"]).all((1, 2)) & np.isfinite(det["mirror_points"]).all((1, 2))


def chunk_differences(estimator, points: np.ndarray, index: np.ndarray, whole: np.ndarray, chunk: int,
                      identity: np.ndarray | None = None) -> tuple[np.ndarray, list[float]]:
    """Rotation differences (deg) between the whole-clip fit ``whole`` and the fit in ``chunk``-frame chunks (with
    ``identity``: that identity fixed in every chunk), and the chunks' identity RMS."""
    coeffs, _, id_rms, _ = fit_chunks(estimator, points, chunk, index, identity=identity)
    return rotation_differences(whole, coeffs), id_rms


def clip_figures(name: str, det: dict[str, np.ndarray], estimator, sign: float) -> dict:
    ok_det = usable(det)
    points, mirror, index = det["points"][ok_det], det["mirror_points"][ok_det], np.flatnonzero(ok_det)
    whole, ok, id_whole, seconds = fit_chunks(estimator, points, None, index, det["boxes"][ok_det])
    figures = {"frames": len(det["ok"]), "detected": int(ok_det.sum()),
               "ok_pct": 100.0 * ok.sum() / len(det["ok"]), "fps": len(points) / max(seconds, 1e-9),
               "id_rms": {"whole": max(id_whole)}}
    flipped, _, _, _ = fit_chunks(estimator, mirror, None, index)
    a, m = degrees(whole), degrees(flipped)
    figures["mirror_yaw"] = float(np.median(np.abs(a[:, 1] + m[:, 1])))
    figures["mirror_pitch"] = float(np.median(np.abs(a[:, 0] - m[:, 0])))
    figures["mirror_roll"] = float(np.median(np.abs(a[:, 2] + m[:, 2])))
    # the same with dlib's points of the frame mirrored (not detected again): the fit's own symmetry, without dlib's
    own, _, _, _ = fit_chunks(estimator, mirror_points(points, 256), None, index)
    figures["mirror_yaw_fit_only"] = float(np.median(np.abs(a[:, 1] + degrees(own)[:, 1])))
    for chunk in CHUNKS:
        if len(points) > chunk:
            differences, id_rms = chunk_differences(estimator, points, index, whole, chunk)
            figures[f"chunk{chunk}_p90"] = float(np.percentile(differences, 90))
            figures[f"chunk{chunk}_median"] = float(np.median(differences))
            figures["id_rms"][chunk] = max(id_rms)
            fixed, _ = chunk_differences(estimator, points, index, whole, chunk, identity=whole[0, ID])
            figures[f"chunk{chunk}_p90_clip_identity"] = float(np.percentile(fixed, 90))
    figures["roll_offset"] = float(np.mean(a[:, 2] - sign * eye_line_deg(points)))
    figures["reasons"] = sorted(set(r for r in det["reason"] if r))[:5]
    return figures


def print_figures(name: str, f: dict) -> None:
    chunks = ", ".join(f"{c}-frame chunks p90 {f[f'chunk{c}_p90']:.2f} (median {f[f'chunk{c}_median']:.2f})"
                       for c in CHUNKS if f"chunk{c}_p90" in f)
    ids = ", ".join(f"{k} {v:.2f}" for k, v in f["id_rms"].items())
    print(f"{name}: {f['frames']} frames, {f['detected']} detected; ok {f['ok_pct']:.1f} %; fit {f['fps']:.0f} frames/s")
    print(f"  mirror: median |yaw + yaw_m| {f['mirror_yaw']:.2f} deg, |pitch - pitch_m| {f['mirror_pitch']:.2f}, "
          f"|roll + roll_m| {f['mirror_roll']:.2f}; with dlib's points mirrored instead of detected again: "
          f"|yaw + yaw_m| {f['mirror_yaw_fit_only']:.2f}")
    print(f"  chunking vs whole clip: {chunks or 'clip too short'}")
    fixed = ", ".join(f"{c}-frame chunks p90 {f[f'chunk{c}_p90_clip_identity']:.2f}" for c in CHUNKS
                      if f"chunk{c}_p90_clip_identity" in f)
    if fixed:
        print(f"  chunking vs whole clip with the whole clip's identity fixed in every chunk: {fixed}")
    print(f"  roll - eye line: mean {f['roll_offset']:+.2f} deg; identity RMS (max over chunks): {ids}")
    if f["reasons"]:
        print(f"  detection notes: {f['reasons']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="+", default=list(CLIPS), choices=list(CLIPS))
    parser.add_argument("--cache", type=Path, default=CACHE,
                        help="detections cache (npz); delete it after changing the detection")
    parser.add_argument("--max-frames", type=int, default=None, help="first N frames of each clip")
    parser.add_argument("--model", default="procedural-full")
    parser.add_argument("--photometric-frames", type=int, default=0,
                        help="fit texture and light on this many frames per clip and report the photometric error")
    parser.add_argument("--photometric-only", action="store_true",
                        help="only the photometric figures (with --photometric-frames), not the pose figures")
    parser.add_argument("--synthetic", action="store_true", help="also the dlib-point rotation error on renders")
    parser.add_argument("--symmetric", action="store_true",
                        help="mirror-averaged dlib points (landmarks68(symmetric=True)) instead of plain ones")
    args = parser.parse_args()
    if not available():
        sys.exit("the real clips are not in ../shared/fixtures/real")
    from reenact.faces.landmark_fit import LandmarkFitEstimator

    torch.set_num_threads(1)
    estimator = LandmarkFitEstimator(model=args.model)
    sign = roll_sign(estimator)
    detections = cached_detections(args.clips, args.cache, args.max_frames, args.symmetric)
    for name in args.clips:
        if not args.photometric_only:
            print_figures(name, clip_figures(name, detections[name], estimator, sign))
        if args.photometric_frames:
            photometric_figures(name, detections[name], estimator, args.photometric_frames, args.max_frames)
    if args.synthetic:
        synthetic_figures()


def photometric_figures(name: str, det, estimator, frames: int, max_frames: int | None) -> None:
    """Texture and light (and refined expression and pose) on ``frames`` frames spread over the clip: the error
    inside the face mask beside the flat render's, the coefficients as stored (landmark-fit geometry), the brow-only
    mask's figure and coverage, the error by region, and the stage's cost."""
    from reenact.faces.photometric import photometric_fit, render_error

    clip = load_clip(name, max_frames=max_frames)
    ok = np.flatnonzero(det["ok"] & np.isfinite(det["points"]).all((1, 2)))
    pick = ok[np.linspace(0, len(ok) - 1, min(frames, len(ok))).astype(int)]
    points = torch.from_numpy(det["points"][pick])
    est = estimator.fit_points(points, [(256, 256)] * len(pick), frame_index=pick * 2)   # spread: not neighbours
    images = uint8_to_tensor(clip.frames[pick])
    start, cpu = time.perf_counter(), time.process_time()
    result = photometric_fit(images, est.coeffs, points, model=estimator.model)
    ms = 1000 * (time.perf_counter() - start) / len(pick), 1000 * (time.process_time() - cpu) / len(pick)
    stored = est.coeffs.clone()            # as LandmarkFitEstimator.fit_texture writes them: tex, the mean light
    stored[:, TEX], stored[:, GAMMA] = result.coeffs[:, TEX], result.coeffs[:, GAMMA].mean(0)
    as_stored, _ = render_error(images, stored, points, estimator.model)
    as_stored_face, _ = render_error(images, stored, points, estimator.model, occlusion=False)
    brows_only, brow_mask = render_error(images, result.coeffs, points, estimator.model, outline=False,
                                         occlusion=False)
    mask, face = result.mask[:, 0].bool(), result.face_mask[:, 0].bool()
    print(f"  {name} photometric on {len(pick)} frames: mean |I_r - frame| in the face mask without occluders "
          f"{result.error:.4f} (flat render {result.flat_error:.4f}), with them {result.face_error:.4f}; as stored "
          f"(landmark-fit geometry, fitted tex, mean light) {as_stored:.4f} / {as_stored_face:.4f}; "
          f"{ms[0]:.0f} ms/frame ({ms[1]:.0f} CPU-ms/frame)")
    tex_rms = float(result.coeffs[0, TEX].square().mean().sqrt())
    turned = float(rotation_differences(est.coeffs.numpy(), result.coeffs.numpy()).max())
    print(f"  refined geometry: rotation moved by at most {turned:.2f} deg; texture RMS {tex_rms:.2f}")
    print(f"  face mask {int(face.sum()) / len(pick):.0f} px/frame = {float(face.sum() / brow_mask.sum()):.1%} of "
          f"the brow-cut-only mask, whose error is {brows_only:.4f}; occluders {float(1 - mask.sum() / face.sum()):.1%}"
          " of the face mask")
    print("  by region (share of the face mask, mean error): " + ", ".join(
        f"{k} {share:.0%} {err:.3f}" for k, (share, err) in error_by_region(result.render, images, face, points,
                                                                             face & ~mask).items()))


def error_by_region(render: torch.Tensor, images: torch.Tensor, mask: torch.Tensor, points: torch.Tensor,
                    occluded: torch.Tensor | None = None) -> dict:
    """Where the photometric error is: the ``occluded`` pixels, eyes (dilated 2 px), mouth interior, lips, the band
    just below the brow line (0.08 face sizes), the mask's border (3 px), the rest;
    ``region -> (share of mask pixels, mean error)``."""
    from scipy import ndimage
    from skimage.draw import polygon2mask

    from reenact.faces.gates import face_size
    from reenact.faces.photometric import below_brows

    error = (render - images).abs().mean(1).numpy()
    sums: dict[str, list[float]] = {}
    for b, p in enumerate(points.numpy()):
        inside = mask[b].numpy()
        poly = lambda idx, p=p, shape=inside.shape: polygon2mask(shape, p[idx][:, ::-1] - 0.5)  # noqa: E731
        eyes = ndimage.binary_dilation(poly(list(range(36, 42))) | poly(list(range(42, 48))), iterations=2)
        mouth = poly(list(range(60, 68)))
        lowered = p.copy()
        lowered[17:27, 1] += 0.08 * float(face_size(torch.from_numpy(p)))
        parts = {"occluders": np.zeros_like(inside) if occluded is None else occluded[b].numpy(), "eyes": eyes,
                 "mouth interior": mouth, "lips": poly(list(range(48, 60))) & ~mouth,
                 "below brows": ~below_brows(torch.from_numpy(lowered[None]), *inside.shape)[0].numpy() & ~eyes,
                 "border": ~ndimage.binary_erosion(inside, iterations=3)}
        rest = inside.copy()
        for key, part in parts.items():
            part = part & rest
            rest &= ~part
            total = sums.setdefault(key, [0.0, 0.0])
            total[0], total[1] = total[0] + error[b][part].sum(), total[1] + part.sum()
        total = sums.setdefault("rest", [0.0, 0.0])
        total[0], total[1] = total[0] + error[b][rest].sum(), total[1] + rest.sum()
    pixels = sum(t[1] for t in sums.values())
    return {k: (t[1] / pixels, t[0] / max(t[1], 1)) for k, t in sums.items()}


def synthetic_figures() -> None:
    from perf import calibrate_landmarks as cal
    from reenact.face3d.procedural import procedural_model
    from reenact.faces.landmarks68 import Landmarks68

    model = procedural_model("full")
    videos = cal.detect_world_videos(model, Landmarks68(), seed=1, stride=2)
    print(cal.summary("synthetic world, fit to dlib's points on renders", cal.evaluate(model, videos)))


if __name__ == "__main__":
    main()
