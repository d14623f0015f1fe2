"""Occlusions in the spirit of MNIST-C: an inverted band and bright lines drawn over
the glyph, anti-aliased and in the stroke colour (1), so they look like ink."""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor

from mrbench_shifts import ops
from mrbench_shifts.base import Corruption


def random_lines(generator: torch.Generator, x: Tensor, n: int, spread: float = 0.35) -> tuple[Tensor, Tensor]:
    """``n`` random lines per image crossing its central region.

    :param spread: how far from the centre a line may pass, as a fraction of the
        smaller side.
    :returns: ``(direction, anchor)``, each ``[B, n, 2]``: a unit direction
        (uniform angle) and the line's point nearest the centre (pixels).
    """
    B = x.shape[0]
    angle = ops.uniform(generator, (B, n), x, 0.0, torch.pi)
    direction = torch.stack([angle.cos(), angle.sin()], -1)
    normal = torch.stack([-angle.sin(), angle.cos()], -1)
    offset = ops.uniform(generator, (B, n), x, -spread, spread) * min(x.shape[-2:])
    return direction, offset[..., None] * normal


def half_diagonal(x: Tensor) -> float:
    """Half the image diagonal: a segment this long either side of the centre crosses it."""
    return 0.5 * math.hypot(*x.shape[-2:])


class Stripe(Corruption):
    """Inverts (``1 - v``) a band of the given width, horizontal or vertical at random,
    at a random position."""

    id = "stripe"
    levels: ClassVar[tuple[float, ...]] = (2, 3, 4, 5, 6)
    parameter = "band width (px)"

    def corrupt(self, x: Tensor, width: float, generator: torch.Generator) -> Tensor:
        B, _, H, W = x.shape
        w = ops.px(width, x)
        vertical = ops.uniform(generator, (B,), x) < 0.5
        start_row = ops.uniform(generator, (B,), x, 0.0, H - w)
        start_col = ops.uniform(generator, (B,), x, 0.0, W - w)
        rows = ops.band_coverage(H, start_row, w, x)[:, :, None]
        cols = ops.band_coverage(W, start_col, w, x)[:, None, :]
        cover = torch.where(vertical[:, None, None], cols, rows)[:, None]  # [B, 1, H, W]
        return x + cover * (1 - 2 * x)


class Zigzag(Corruption):
    """Zigzag lines: polylines of 8 segments with a random angle, offset and
    amplitude crossing the image."""

    id = "zigzag"
    levels: ClassVar[tuple[tuple[int, float], ...]] = ((1, 1.0), (1, 1.5), (2, 1.25), (2, 1.75), (3, 1.75))
    parameter = "(lines, stroke width (px))"
    segments: ClassVar[int] = 8

    def corrupt(self, x: Tensor, level: tuple[int, float], generator: torch.Generator) -> Tensor:
        n, width = level
        B = x.shape[0]
        direction, anchor = random_lines(generator, x, n)
        normal = torch.stack([-direction[..., 1], direction[..., 0]], -1)
        amplitude = ops.uniform(generator, (B, n), x, ops.px(1.5, x), ops.px(3.0, x))
        reach = half_diagonal(x)
        grid = ops.pixel_grid(x)
        ink = torch.zeros(B, *x.shape[-2:], device=x.device, dtype=x.dtype)
        # Vertex k sits at position t_k along the line, alternately above and below it.
        t = torch.linspace(-reach, reach, self.segments + 1).tolist()
        vertices = [anchor + t[k] * direction + (-1) ** k * amplitude[..., None] * normal
                    for k in range(self.segments + 1)]
        for line in range(n):
            for k in range(self.segments):
                distance, _ = ops.segment_distance(grid, vertices[k][:, line], vertices[k + 1][:, line])
                ink = torch.maximum(ink, ops.stroke(distance, ops.px(width, x)))
        return torch.maximum(x, ink[:, None])


class DottedLine(Corruption):
    """Straight lines of round dots (diameter 1.75 px, 3.5 px apart) crossing the image."""

    id = "dotted-line"
    levels: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    parameter = "lines"
    diameter: ClassVar[float] = 1.75
    spacing: ClassVar[float] = 3.5

    def corrupt(self, x: Tensor, n: int, generator: torch.Generator) -> Tensor:
        B = x.shape[0]
        direction, anchor = random_lines(generator, x, n)
        spacing = ops.px(self.spacing, x)
        phase = ops.uniform(generator, (B, n), x, 0.0, spacing)
        reach = half_diagonal(x)
        grid = ops.pixel_grid(x)
        ink = torch.zeros(B, *x.shape[-2:], device=x.device, dtype=x.dtype)
        for line in range(n):
            a = anchor[:, line] - reach * direction[:, line]
            b = anchor[:, line] + reach * direction[:, line]
            across, along = ops.segment_distance(grid, a, b)
            # Distance along the line to the nearest dot centre, combined with the
            # distance across it, gives round dots.
            s = (along + phase[:, line, None, None]) % spacing - spacing / 2
            ink = torch.maximum(ink, ops.stroke(torch.hypot(across, s), ops.px(self.diameter, x)))
        return torch.maximum(x, ink[:, None])


OCCLUSIONS = (Stripe, Zigzag, DottedLine)
