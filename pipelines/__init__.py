"""Preprocessing pipelines: source videos and images in, Parquet shards out (DESIGN.md, "Dataflow and layout").

Stages, each a function (or small class) from a batch dict to a batch dict, run by the one engine
:mod:`pipelines.engine` (work items in shards, parts, done markers, resume; a local and a Ray Data executor).
:mod:`pipelines.prepare` holds each dataset's config, plan and stages (``reenact prepare vox|synth|celebv``):

* :mod:`pipelines.metadata`  vox-metadata.csv -> typed rows and per-video jobs (load_videos.py's rules)
* :mod:`pipelines.download`  yt-dlp (Python API) -> videos on disk + ledger rows
* :mod:`pipelines.crop`      FOMM's crop protocol, one decode per video -> 256^2 frame rows
* :mod:`pipelines.celebv`    CelebV identity folders -> MTCNN crops (listing: :mod:`pipelines.celebv_listing`,
  crop policy: :mod:`pipelines.celebv_crop`)
* :mod:`pipelines.extractors` 3DMM coefficients per frame

:mod:`pipelines.media` locates ffmpeg and probes/encodes media; :mod:`pipelines.inspect` summarises an output
folder (``reenact inspect``). A bad item is always a row with a status and a reason, never an exception.
"""
