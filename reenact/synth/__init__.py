"""The embedded synthetic world: talking-head videos with exact ground truth, in the real datasets' layouts.

``reenact synth --preset tiny|demo --out DIR [--seed N]`` (or :func:`generate`) renders the procedural morphable
model (:mod:`reenact.face3d.procedural`) with a head shell / hair, neck and shoulders that move rigidly with the
head, over a static textured background per video, and writes

* VoxCeleb-style 640x360 25 fps H.264 source videos ``DIR/vox/videos/<video_id>.mp4`` with
  ``DIR/vox/vox-metadata.csv`` (the real header; train / test partitions with disjoint identities);
* CelebV-style images ``DIR/CelebV/<Name>/Image/%06d.jpg`` for Donald_Trump, Emmanuel_Macron, Jack_Ma, Kathleen
  and Theresa_May;
* ground truth ``DIR/vox/truth.parquet`` and ``DIR/CelebV/truth.parquet`` (:data:`reenact.data.schema.SYNTH_TRUTH`):
  per frame the 257 coefficients, 68 landmarks, the face bbox and the camera.

Presets (frames at 25 fps):

========  ============================================================================  ================  ==========
preset    VoxCeleb-style                                                                CelebV            model
========  ============================================================================  ================  ==========
``tiny``  4 identities (2 train, 2 test), 6 videos of 27-36 frames (1-2 chunks)         5 x 8 images      ``full``
``demo``  16 identities (11 train, 5 test), 40 videos of 64-150 frames (1-2 chunks)       5 x 40 images     ``full``
========  ============================================================================  ================  ==========

``tiny`` takes about 30 s of CPU (under a minute on 2 cores) and is what tests use; ``demo`` feeds the quickstart
(a few minutes on 2 cores). The coefficient contract: a frame's coefficients are exact for the video camera,
whose 256^2 chunk crop is ``PerspectiveCamera.deep3d(256)``; see :mod:`reenact.synth.world`. Determinism: the
same seed gives byte-identical metadata and truth files.
"""
from reenact.synth.world import PRESETS, Preset, World, get_preset, sample_world, vox_camera
from reenact.synth.writer import SynthLayout, generate, layout, read_truth, read_video, world_model_size

__all__ = ["PRESETS", "Preset", "SynthLayout", "World", "generate", "get_preset", "layout", "read_truth",
           "read_video", "sample_world", "vox_camera", "world_model_size"]
