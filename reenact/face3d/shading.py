"""Spherical-harmonic illumination as Deep3DFaceRecon computes it.

``gamma`` (27) is channel-major: 9 SH coefficients for R, then G, then B. Deep3D adds a default light
``init_lit = [0.8, 0, ..., 0]`` to every channel, evaluates the first 9 real SH bands (with its sign convention and
the Lambertian constants ``a = [pi, 2pi/sqrt(3), 2pi/sqrt(8)]``, ``c = [1/sqrt(4pi), sqrt(3)/sqrt(4pi),
3 sqrt(5)/sqrt(12pi)]``) at the camera-space normal, and multiplies the irradiance by the albedo.
"""
from __future__ import annotations

import math

import torch

SH_A = (math.pi, 2 * math.pi / math.sqrt(3.0), 2 * math.pi / math.sqrt(8.0))
SH_C = (1 / math.sqrt(4 * math.pi), math.sqrt(3.0) / math.sqrt(4 * math.pi), 3 * math.sqrt(5.0) / math.sqrt(12 * math.pi))
INIT_LIGHT = 0.8


def sh_basis(normals: torch.Tensor) -> torch.Tensor:
    """The 9 SH basis values (Deep3D's order and signs) at unit normals ``(..., 3)`` -> ``(..., 9)``."""
    a, c = SH_A, SH_C
    x, y, z = normals.unbind(-1)
    return torch.stack([
        torch.full_like(x, a[0] * c[0]),
        -a[1] * c[1] * y,
        a[1] * c[1] * z,
        -a[1] * c[1] * x,
        a[2] * c[2] * x * y,
        -a[2] * c[2] * y * z,
        0.5 * a[2] * c[2] / math.sqrt(3.0) * (3 * z**2 - 1),
        -a[2] * c[2] * x * z,
        0.5 * a[2] * c[2] * (x**2 - y**2),
    ], dim=-1)


def shade(albedo: torch.Tensor, normals: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Lit colour ``(..., V, 3)`` from albedo ``(..., V, 3)``, camera-space normals ``(..., V, 3)`` and gamma ``(..., 27)``."""
    light = gamma.unflatten(-1, (3, 9)) + gamma.new_tensor([INIT_LIGHT] + [0.0] * 8)   # ... x 3 x 9
    irradiance = sh_basis(normals) @ light.transpose(-1, -2)                         # ... x V x 3
    return irradiance * albedo
