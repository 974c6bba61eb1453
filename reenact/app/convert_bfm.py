"""``reenact convert-bfm``: build Deep3DFaceRecon's ``BFM_model_front.mat`` from the licensed BFM09 files.

Put ``01_MorphableModel.mat`` (Basel Face Model 2009, obtained under licence), ``Exp_Pca.bin`` (Guo et al.) and
Deep3DFaceRecon's helper files (``BFM_front_idx.mat``, ``BFM_exp_idx.mat``, ``facemodel_info.mat``, ``std_exp.txt``)
into one folder; the result is written to ``<assets>/BFM/BFM_model_front.mat`` unless ``--out`` says otherwise, where
``--morphable-model bfm`` finds it.
"""
from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bfm_dir", help="folder with 01_MorphableModel.mat, Exp_Pca.bin and Deep3D's helper files")
    parser.add_argument("--out", default=None, help="output .mat (default: <assets>/BFM/BFM_model_front.mat)")
    parser.add_argument("--assets", default=None, help="asset folder (default: $REENACT_ASSETS or ~/.cache/reenact/assets)")


def run(args: argparse.Namespace) -> int:
    from reenact.assets import ASSETS, asset_dir
    from reenact.face3d.io import convert_bfm09, load_deep3d_mat

    bfm_dir = Path(args.bfm_dir)
    needed = ["01_MorphableModel.mat", "Exp_Pca.bin", "BFM_front_idx.mat", "BFM_exp_idx.mat", "facemodel_info.mat",
              "std_exp.txt"]
    missing = [name for name in needed if not (bfm_dir / name).is_file()]
    if missing:
        raise SystemExit(f"convert-bfm: {bfm_dir} lacks {', '.join(missing)}. The BFM09 file comes from "
                         f"{ASSETS['bfm09'].source}; the rest from Deep3DFaceRecon's BFM folder and README.")
    out = Path(args.out) if args.out else asset_dir(args.assets) / ASSETS["bfm_front"].relpath
    convert_bfm09(bfm_dir, out)
    model = load_deep3d_mat(out)
    print(f"wrote {out}: {model.num_vertices} vertices, {model.num_triangles} triangles")
    return 0
