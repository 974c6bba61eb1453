"""The numbers the seed paper reports (Tables 1-3), for the leaderboard's separate, labelled block, and the metric
backends it used (rows computed with other backends are marked)."""
from __future__ import annotations

#: seed Table 1, VoxCeleb: model -> (self CSIM, AED, APD, FID, cross CSIM, AED, APD, FID)
TABLE1 = {
    "X2Face": (0.613, 2.679, 0.2096, 36.75, 0.462, 4.071, 0.2898, 50.09),
    "FOMM": (0.759, 1.350, 0.0379, 9.80, 0.521, 3.329, 0.0775, 32.40),
    "PIRenderer": (0.760, 1.322, 0.0413, 9.05, 0.572, 2.923, 0.0744, 21.73),
    "DaGAN": (0.763, 1.300, 0.0366, 8.65, 0.495, 3.191, 0.0678, 36.88),
    "Ours": (0.761, 1.255, 0.0372, 8.51, 0.625, 2.919, 0.0589, 16.77),
}
#: seed Table 2, CelebV cross-reenactment: model -> (CSIM, AED, APD, FID)
TABLE2 = {
    "X2Face": (0.556, 3.702, 0.0761, 55.72),
    "FOMM": (0.516, 3.540, 0.0854, 39.21),
    "PIRenderer": (0.567, 2.968, 0.0611, 26.57),
    "DaGAN": (0.500, 3.442, 0.0779, 47.46),
    "Ours": (0.620, 2.944, 0.0484, 21.96),
}
#: seed Table 3, ablation on CelebV cross-reenactment: variant -> (CSIM, AED, APD, FID)
TABLE3 = {
    "Base": (0.595, 3.195, 0.0550, 23.36),
    "+FG": (0.615, 3.055, 0.0542, 24.03),
    "+FG+OG": (0.616, 3.043, 0.0544, 22.39),
    "+FG+OG+SG": (0.620, 2.944, 0.0484, 21.96),
}
#: decimals the seed prints per metric
DECIMALS = {"csim": 3, "aed": 3, "apd": 4, "fid": 2}
#: what the paper's numbers were computed with (the seed names a "pretrained face recognition model", AED/APD
#: "following Ren et al. 2021", i.e. Deep3DFaceRecon coefficients, and FID with Inception)
PAPER_BACKENDS = {
    "csim": ("arcface", "facenet-vggface2"),
    "aed": ("deep3d",),
    "apd": ("deep3d",),
    "fid": ("inception-pt_inception-2015-12-05",),
}
PAPER_DESCRIPTION = {"csim": "a standard face recognition network (ArcFace / FaceNet class)",
                     "aed": "Deep3DFaceRecon coefficients", "apd": "Deep3DFaceRecon coefficients",
                     "fid": "pytorch-fid Inception weights"}
