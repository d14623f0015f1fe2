"""Pixel-value corruptions: noise, blur, digital and weather, after ImageNet-C and MNIST-C.

Severity tables are recalibrated for 28x28 glyphs (bright strokes on a dark
background): ImageNet-C's values are kept where they are in intensity units (noise,
contrast, brightness, JPEG quality) and lengths are shrunk to the small images.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from mrbench_shifts import ops
from mrbench_shifts.base import Corruption


class GaussianNoise(Corruption):
    """Additive Gaussian noise, independent per pixel and channel."""

    id = "gaussian-noise"
    levels: ClassVar[tuple[float, ...]] = (0.08, 0.12, 0.18, 0.26, 0.38)
    parameter = "noise std"

    def corrupt(self, x: Tensor, sigma: float, generator: torch.Generator) -> Tensor:
        return x + sigma * ops.normal(generator, x.shape, x)


class ShotNoise(Corruption):
    """Poisson (photon) noise: a pixel of intensity ``v`` becomes ``Poisson(v * rate) / rate``.

    Only lit pixels get noisy; a black background stays black, as with real photons.
    """

    id = "shot-noise"
    levels: ClassVar[tuple[float, ...]] = (60, 25, 12, 5, 3)
    parameter = "photons at full intensity"

    def corrupt(self, x: Tensor, rate: float, generator: torch.Generator) -> Tensor:
        return ops.poisson(x * rate, generator) / rate


class ImpulseNoise(Corruption):
    """Salt-and-pepper noise: a fraction of the pixels set to 0 or 1, half each."""

    id = "impulse-noise"
    levels: ClassVar[tuple[float, ...]] = (0.03, 0.06, 0.09, 0.17, 0.27)
    parameter = "fraction of pixels hit"

    def corrupt(self, x: Tensor, amount: float, generator: torch.Generator) -> Tensor:
        u = ops.uniform(generator, x.shape, x)
        x = torch.where(u < amount / 2, torch.ones_like(x), x)
        return torch.where(u > 1 - amount / 2, torch.zeros_like(x), x)


class DefocusBlur(Corruption):
    """Convolution with an anti-aliased disk (an out-of-focus lens)."""

    id = "defocus-blur"
    levels: ClassVar[tuple[float, ...]] = (1.0, 1.5, 2.0, 2.5, 3.0)
    parameter = "disk radius (px)"
    stochastic = False

    def corrupt(self, x: Tensor, radius: float, generator: torch.Generator) -> Tensor:
        return ops.conv_same(x, ops.disk_kernel(ops.px(radius, x), x))


class MotionBlur(Corruption):
    """Convolution with a centred line of the given length at a random angle per image."""

    id = "motion-blur"
    levels: ClassVar[tuple[float, ...]] = (3, 5, 7, 9, 11)
    parameter = "blur length (px)"

    def corrupt(self, x: Tensor, length: float, generator: torch.Generator) -> Tensor:
        angles = ops.uniform(generator, (x.shape[0],), x, 0.0, torch.pi)
        return ops.conv_same(x, ops.line_kernels(ops.px(length, x), angles))


class GlassBlur(Corruption):
    """ImageNet-C's glass blur, vectorised: Gaussian blur, then ``iterations`` rounds
    in which every pixel takes the value of a random neighbour at most ``jump``
    pixels away (ImageNet-C swaps pixels one at a time, which cannot be batched),
    then the Gaussian blur again."""

    id = "glass-blur"
    levels: ClassVar[tuple[tuple[float, float, int], ...]] = (
        (0.4, 1, 1), (0.5, 1, 2), (0.6, 1, 3), (0.7, 2, 2), (0.8, 2, 3),
    )
    parameter = "(blur sigma (px), jump (px), iterations)"

    def corrupt(self, x: Tensor, level: tuple[float, float, int], generator: torch.Generator) -> Tensor:
        sigma, jump, iterations = level
        B, C, H, W = x.shape
        reach = max(1, round(ops.px(jump, x)))
        rows = torch.arange(H, device=x.device)[:, None]
        cols = torch.arange(W, device=x.device)[None, :]
        x = ops.gaussian_blur(x, ops.px(sigma, x))
        for _ in range(iterations):
            dy = ops.randint(generator, -reach, reach + 1, (B, H, W), x.device)
            dx = ops.randint(generator, -reach, reach + 1, (B, H, W), x.device)
            # Clamped indices: a border pixel borrows from inside the image only.
            index = (rows + dy).clamp(0, H - 1) * W + (cols + dx).clamp(0, W - 1)
            x = x.flatten(2).gather(2, index.flatten(1)[:, None].expand(B, C, H * W)).view(B, C, H, W)
        return ops.gaussian_blur(x, ops.px(sigma, x))


class Pixelate(Corruption):
    """Averages blocks of ``size x size`` pixels (a grid centred on the image, edge
    pixels repeated into partial blocks).

    Integer blocks rather than ImageNet-C's resize down and up: resizing 28 pixels
    to 15 misaligns every cell and damages the glyph more than resizing to 14,
    so damage would not grow with severity.
    """

    id = "pixelate"
    levels: ClassVar[tuple[int, ...]] = (2, 3, 4, 5, 6)
    parameter = "block size (px)"
    stochastic = False

    def corrupt(self, x: Tensor, size: int, generator: torch.Generator) -> Tensor:
        return ops.pixelate(x, max(2, round(ops.px(size, x))))


class Jpeg(Corruption):
    """JPEG compression artefacts: a real 8x8 DCT quantisation with the libjpeg
    luminance table at the given quality (see :func:`mrbench_shifts.ops.jpeg`)."""

    id = "jpeg"
    levels: ClassVar[tuple[int, ...]] = (25, 18, 15, 10, 7)
    parameter = "JPEG quality"
    stochastic = False

    def corrupt(self, x: Tensor, quality: int, generator: torch.Generator) -> Tensor:
        return ops.jpeg(x, quality)


class Contrast(Corruption):
    """Contrast reduction towards each image's mean intensity.

    Milder than ImageNet-C's factors (0.4 .. 0.05): a glyph covers little of its
    image, so its mean is near the background and 0.05 leaves it barely visible.
    """

    id = "contrast"
    levels: ClassVar[tuple[float, ...]] = (0.5, 0.4, 0.3, 0.2, 0.1)
    parameter = "contrast factor"
    stochastic = False

    def corrupt(self, x: Tensor, factor: float, generator: torch.Generator) -> Tensor:
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        return (x - mean) * factor + mean


class Brightness(Corruption):
    """A constant added to every pixel (greyscale stand-in for ImageNet-C's HSV value shift)."""

    id = "brightness"
    levels: ClassVar[tuple[float, ...]] = (0.1, 0.2, 0.3, 0.4, 0.5)
    parameter = "added intensity"
    stochastic = False

    def corrupt(self, x: Tensor, delta: float, generator: torch.Generator) -> Tensor:
        return x + delta


class Fog(Corruption):
    """A bright fractal haze: ``(x + strength * fog) / (1 + strength)`` with ``fog``
    multi-octave noise in [0, 1] (:func:`mrbench_shifts.ops.fractal_noise`), so the
    background lightens and strokes lose contrast."""

    id = "fog"
    levels: ClassVar[tuple[tuple[float, float], ...]] = (
        (0.3, 2.0), (0.45, 2.0), (0.6, 1.7), (0.8, 1.5), (1.0, 1.4),
    )
    parameter = "(strength, octave decay)"

    def corrupt(self, x: Tensor, level: tuple[float, float], generator: torch.Generator) -> Tensor:
        strength, decay = level
        return (x + strength * ops.fractal_noise(generator, x, decay)) / (1 + strength)


CORRUPTIONS = (
    GaussianNoise, ShotNoise, ImpulseNoise, DefocusBlur, MotionBlur, GlassBlur,
    Pixelate, Jpeg, Contrast, Brightness, Fog,
)
