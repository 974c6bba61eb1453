"""Preprocessing pipelines: source videos and images in, Parquet shards out (DESIGN.md, "Dataflow and layout").

Stages, each a function (or small class) from a batch dict to a batch dict, run on Ray Data by
:mod:`pipelines.runner` (``reenact prepare``):

* :mod:`pipelines.metadata`  vox-metadata.csv -> typed rows and per-video jobs (load_videos.py's rules)
* :mod:`pipelines.download`  yt-dlp (Python API) -> videos on disk + ledger rows
* :mod:`pipelines.crop`      FOMM's crop protocol, one decode per video -> 256^2 frame rows
* :mod:`pipelines.extractors` 3DMM coefficients per frame

:mod:`pipelines.media` locates ffmpeg and probes/encodes media; :mod:`pipelines.inspect` summarises an output
folder (``reenact inspect``). A bad item is always a row with a status and a reason, never an exception.
"""
