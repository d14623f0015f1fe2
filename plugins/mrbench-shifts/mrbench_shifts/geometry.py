"""Geometric corruptions: affine maps and an elastic warp, resampled bilinearly.

Pixels moved in from outside the image are 0, the dark background of the glyph
datasets. Rotations stay below 45 degrees: Omniglot's Vinyals split already uses
the 90-degree rotations of a character as *new classes*.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mrbench_shifts import ops
from mrbench_shifts.base import Corruption


class Rotation(Corruption):
    """Rotation about the centre by the given angle, clockwise or anticlockwise at random."""

    id = "rotation"
    levels: ClassVar[tuple[float, ...]] = (9, 18, 27, 36, 45)
    parameter = "angle (degrees)"

    def corrupt(self, x: Tensor, degrees: float, generator: torch.Generator) -> Tensor:
        angles = math.radians(degrees) * ops.random_sign(generator, (x.shape[0],), x)
        return ops.affine(x, ops.rotation_matrices(angles))


class Shear(Corruption):
    """Horizontal shear about the centre, to the left or right at random."""

    id = "shear"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5)
    parameter = "shear factor"

    def corrupt(self, x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
        s = factor * ops.random_sign(generator, (x.shape[0],), x)
        one, zero = torch.ones_like(s), torch.zeros_like(s)
        matrix = torch.stack([torch.stack([one, s], -1), torch.stack([zero, one], -1)], -2)
        return ops.affine(x, matrix)


class Scale(Corruption):
    """Shrinks the content about the centre (zooming in would crop the glyph instead)."""

    id = "scale"
    levels: ClassVar[tuple[float, ...]] = (0.9, 0.8, 0.7, 0.6, 0.5)
    parameter = "scale factor"
    stochastic = False

    def corrupt(self, x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
        matrix = torch.eye(2, device=x.device, dtype=x.dtype).expand(x.shape[0], 2, 2) / factor
        return ops.affine(x, matrix)


class Translation(Corruption):
    """Translation by the given distance in a uniformly random direction (sub-pixel, bilinear)."""

    id = "translation"
    levels: ClassVar[tuple[float, ...]] = (1, 2, 3, 4, 5)
    parameter = "distance (px)"

    def corrupt(self, x: Tensor, distance: float, generator: torch.Generator) -> Tensor:
        B = x.shape[0]
        angle = ops.uniform(generator, (B,), x, 0.0, 2 * torch.pi)
        offset = ops.px(distance, x) * torch.stack([angle.cos(), angle.sin()], -1)
        return ops.affine(x, torch.eye(2, device=x.device, dtype=x.dtype).expand(B, 2, 2), offset)


class ElasticTransform(Corruption):
    """A smooth random displacement field: independent normal displacements with
    the given standard deviation at the points of a 5x5 lattice spanning the image,
    bicubically interpolated in between (about 0.8 times that RMS overall)."""

    id = "elastic-transform"
    levels: ClassVar[tuple[float, ...]] = (0.6, 1.0, 1.4, 1.8, 2.2)
    parameter = "lattice displacement std (px)"
    #: Control points per side: about one per 6 pixels at 28x28, so strokes bend
    #: locally rather than the glyph moving as a whole.
    lattice: ClassVar[int] = 5

    def corrupt(self, x: Tensor, amplitude: float, generator: torch.Generator) -> Tensor:
        field = ops.smooth_field(generator, x, self.lattice, channels=2) * ops.px(amplitude, x)
        return ops.displace(x, field.permute(0, 2, 3, 1))


GEOMETRIC = (Rotation, Shear, Scale, Translation, ElasticTransform)
