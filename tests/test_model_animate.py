"""``reenact animate`` and ``reenact train`` front-ends (issue 10): a playable mp4 from a synthetic source image and
driving clip, decoded back with ffmpeg; the train command's presets and dry run."""
from __future__ import annotations

import json

import pytest
import torch

from reenact.app.cli import main
from reenact.data.codec import tensor_to_uint8
from reenact.model.synthetic_pairs import SyntheticPairs, SyntheticSpec

FRAMES = 4


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    """A synthetic source image (video 1) and a 4-frame driving mp4 (video 0), 256^2, near-frontal faces."""
    from PIL import Image

    from reenact.synth.writer import Mp4Writer

    root = tmp_path_factory.mktemp("animate")
    pairs = SyntheticPairs(SyntheticSpec(size=256, videos=2, frames=FRAMES, seed=0, yaw_max_deg=10.0))
    Image.fromarray(tensor_to_uint8(pairs.frames[1, :1])[0]).save(root / "source.png")
    with Mp4Writer(root / "driving.mp4", 256, 256, fps=25) as writer:
        writer.write(tensor_to_uint8(pairs.frames[0]))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["full", "pose"])
def test_animate_writes_a_playable_mp4(clip, tmp_path, capsys, mode):
    from pipelines.media import probe
    from reenact.synth.writer import read_video

    out = tmp_path / "out.mp4"
    code = main(["animate", "--source", str(clip / "source.png"), "--driving", str(clip / "driving.mp4"), "-o",
                 str(out), "--random-weights", "--morphable", "procedural-small", "--mode", mode, "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["frames"] == FRAMES and summary["mode"] == mode and summary["frames_without_face"] == 0
    info = probe(out)
    assert (info.width, info.height, round(info.fps)) == (256, 256, 25)
    frames = read_video(out, 256, 256)                  # decoded back with ffmpeg
    assert frames.shape == (FRAMES, 256, 256, 3) and frames.std() > 0


def test_animate_needs_a_checkpoint(clip, tmp_path):
    with pytest.raises(ValueError, match="--checkpoint"):
        main(["animate", "--source", str(clip / "source.png"), "--driving", str(clip / "driving.mp4"), "-o",
              str(tmp_path / "x.mp4")])


def test_train_command_applies_the_preset_under_the_options(capsys, tmp_path):
    assert main(["train", "--preset", "tiny", "--loss", "l1-msssim", "--ablation", "fg", "--run-dir",
                 str(tmp_path), "--dry-run"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert (cfg["size"], cfg["ablation"], cfg["loss"], cfg["run_dir"]) == ("tiny", "fg", "l1-msssim", str(tmp_path))
    assert cfg["morphable"] == "procedural-small" and cfg["batch_size"] == 4


def test_train_command_trains_and_resumes(tmp_path, capsys):
    def args(steps: int) -> list[str]:
        return ["train", "--preset", "tiny", "--loss", "l1-msssim", "--run-dir", str(tmp_path), "--max-steps",
                str(steps), "--no-progress", "--no-tensorboard", "--synthetic-videos", "1", "--synthetic-frames", "3"]

    assert main(args(1)) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 1
    assert main(args(2)) == 0
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 2
