"""Vectorised image operations the corruptions are built from.

Every function works on a whole batch of images ``[B, C, H, W]`` at once (Python
loops only ever run over octaves, iterations or line segments, never over images).
Random numbers come only from the caller's ``torch.Generator``. They are drawn on the
generator's own device, in float32, and then moved to the images: a CPU generator
cannot draw CUDA tensors, and drawing the same float32 numbers whatever the images'
device and dtype keeps a seed's corruption the same across them.

Lengths in the severity tables are pixels of a 28x28 image; :func:`px` scales them
to the image at hand, so a severity means the same relative damage at any size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: Image side the pixel lengths in the severity tables are calibrated for (Omniglot).
REFERENCE_SIZE = 28


def px(length: float, x: Tensor) -> float:
    """``length`` pixels of a 28x28 image, scaled to the smaller side of ``x``."""
    return length * min(x.shape[-2:]) / REFERENCE_SIZE


# --- random draws ----------------------------------------------------------------


def uniform(generator: torch.Generator, shape: Sequence[int], like: Tensor,
            low: float = 0.0, high: float = 1.0) -> Tensor:
    """``U(low, high)`` of ``shape``, drawn on the generator's device, on ``like``'s device and dtype."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return (u.to(like.device, like.dtype) * (high - low)) + low


def normal(generator: torch.Generator, shape: Sequence[int], like: Tensor) -> Tensor:
    """Standard normal of ``shape``, drawn like :func:`uniform`."""
    z = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    return z.to(like.device, like.dtype)


def random_sign(generator: torch.Generator, shape: Sequence[int], like: Tensor) -> Tensor:
    """-1 or +1 with equal probability."""
    return torch.where(uniform(generator, shape, like) < 0.5, -1.0, 1.0).to(like.dtype)


def poisson(rates: Tensor, generator: torch.Generator) -> Tensor:
    """Poisson counts with the given rates (drawn on the generator's device)."""
    counts = torch.poisson(rates.to(generator.device, torch.float32), generator=generator)
    return counts.to(rates.device, rates.dtype)


def random_subset(generator: torch.Generator, shape: Sequence[int], k: int, device: torch.device) -> Tensor:
    """A bool mask of ``shape`` with exactly ``k`` uniformly chosen ``True`` per last-dim row."""
    u = torch.rand(tuple(shape), generator=generator, device=generator.device, dtype=torch.float32)
    # The rank of an entry among i.i.d. uniforms is a uniform random permutation.
    ranks = u.argsort(dim=-1).argsort(dim=-1)
    return (ranks < k).to(device)


def randint(generator: torch.Generator, low: int, high: int, shape: Sequence[int], device: torch.device) -> Tensor:
    """Integers uniform in ``[low, high)``, drawn on the generator's device."""
    return torch.randint(low, high, tuple(shape), generator=generator, device=generator.device).to(device)


# --- convolutions ----------------------------------------------------------------


def conv_same(x: Tensor, kernel: Tensor) -> Tensor:
    """Depthwise "same" convolution with replicated borders.

    :param x: ``[B, C, H, W]``.
    :param kernel: ``[kh, kw]`` shared by all images, or ``[B, kh, kw]`` one per image
        (done as a single grouped convolution over ``B * C`` groups).
    """
    B, C, H, W = x.shape
    k = kernel.to(x)
    kh, kw = k.shape[-2:]
    # Replicate, not zeros: a stroke at the border should not fade into a black frame.
    xp = F.pad(x, (kw // 2, kw - 1 - kw // 2, kh // 2, kh - 1 - kh // 2), mode="replicate")
    if k.dim() == 2:
        return F.conv2d(xp, k.expand(C, 1, kh, kw), groups=C)
    weight = k[:, None].expand(B, C, kh, kw).reshape(B * C, 1, kh, kw)
    out = F.conv2d(xp.reshape(1, B * C, *xp.shape[-2:]), weight, groups=B * C)
    return out.reshape(B, C, H, W)


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with standard deviation ``sigma`` pixels."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    return conv_same(conv_same(x, k[None, :]), k[:, None])


def _offsets(radius: int, like: Tensor) -> Tensor:
    """``[k, k, 2]`` (x, y) offsets of a ``k = 2 * radius + 1`` kernel from its centre."""
    t = torch.arange(-radius, radius + 1, device=like.device, dtype=like.dtype)
    return torch.stack(torch.meshgrid(t, t, indexing="xy"), dim=-1)


def disk_kernel(radius: float, like: Tensor) -> Tensor:
    """A normalised disk of ``radius`` pixels with a one-pixel anti-aliased rim."""
    p = _offsets(math.ceil(radius + 0.5), like)
    w = (radius + 0.5 - p.norm(dim=-1)).clamp(0, 1)
    return w / w.sum()


def line_kernels(length: float, angles: Tensor) -> Tensor:
    """One normalised line kernel per angle: ``[B, k, k]``, centred, ``length`` pixels long.

    Built by splatting closely spaced points of the segment bilinearly onto the
    kernel grid: a rasterised line would weigh its pixels unevenly at oblique
    angles, which shows up as banding in the blurred image.
    """
    half = max(length - 1, 0) / 2
    p = _offsets(math.ceil(half) + 1, angles)  # [k, k, 2]
    t = torch.linspace(-half, half, 4 * math.ceil(length) + 1, device=angles.device, dtype=angles.dtype)
    direction = torch.stack([angles.cos(), angles.sin()], dim=-1)  # [B, 2]
    points = t[None, :, None] * direction[:, None, :]  # [B, M, 2]
    tent = (1 - (p[None, None] - points[:, :, None, None, :]).abs()).clamp(min=0)  # [B, M, k, k, 2]
    w = tent.prod(dim=-1).sum(dim=1)
    return w / w.sum(dim=(-2, -1), keepdim=True)


def pixelate(x: Tensor, block: int) -> Tensor:
    """Replace each ``block x block`` cell of a grid centred on the image by its mean."""
    H, W = x.shape[-2:]
    ph, pw = -H % block, -W % block
    top, left = ph // 2, pw // 2
    cells = F.avg_pool2d(F.pad(x, (left, pw - left, top, ph - top), mode="replicate"), block)
    blocks = cells.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)
    return blocks[..., top : top + H, left : left + W]


# --- resampling --------------------------------------------------------------------


def pixel_grid(x: Tensor) -> Tensor:
    """``[H, W, 2]`` (x, y) pixel-centre coordinates of ``x``'s images, origin at the image centre."""
    H, W = x.shape[-2:]
    ys = torch.arange(H, device=x.device, dtype=x.dtype) - (H - 1) / 2
    xs = torch.arange(W, device=x.device, dtype=x.dtype) - (W - 1) / 2
    return torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)


def sample_at(x: Tensor, source: Tensor) -> Tensor:
    """Bilinear resampling: output pixel ``(i, j)`` reads ``x`` at ``source[:, i, j]``.

    :param source: ``[B, H, W, 2]`` centred pixel coordinates (as :func:`pixel_grid`).
        Outside the image reads 0, the dark background of the glyph datasets
        (``ImageSplit`` stores strokes bright on a dark background).
    """
    H, W = x.shape[-2:]
    # align_corners=False: normalised coordinate = 2 * centred pixel coordinate / size.
    scale = torch.tensor([2.0 / W, 2.0 / H], device=x.device, dtype=x.dtype)
    return F.grid_sample(x, source * scale, mode="bilinear", padding_mode="zeros", align_corners=False)


def affine(x: Tensor, matrix: Tensor, offset: Tensor | None = None) -> Tensor:
    """Resample each image through an affine map about its centre.

    :param matrix: ``[B, 2, 2]`` maps an output pixel to the source pixel it reads
        (so the content moves by the inverse map).
    :param offset: ``[B, 2]`` source offset in pixels; the content moves by ``-offset``.
    """
    grid = pixel_grid(x)
    source = torch.einsum("bij,hwj->bhwi", matrix.to(x), grid)
    if offset is not None:
        source = source + offset.to(x)[:, None, None, :]
    return sample_at(x, source)


def displace(x: Tensor, field: Tensor) -> Tensor:
    """Resample each image at its pixel grid plus a displacement ``field`` ``[B, H, W, 2]`` (pixels)."""
    return sample_at(x, pixel_grid(x) + field)


def smooth_field(generator: torch.Generator, x: Tensor, control: int, channels: int) -> Tensor:
    """A smooth random field ``[B, channels, H, W]``.

    Standard normals on a ``control x control`` lattice spanning the image,
    bicubically interpolated (so about 0.8 RMS overall): smoothness is relative to
    the image size.
    """
    B, _, H, W = x.shape
    lattice = normal(generator, (B, channels, control, control), x)
    return F.interpolate(lattice, size=(H, W), mode="bicubic", align_corners=True)


def fractal_noise(generator: torch.Generator, x: Tensor, decay: float) -> Tensor:
    """Multi-octave value noise ``[B, 1, H, W]`` scaled to [0, 1] per image.

    A stand-in for ImageNet-C's plasma fractal that works at any size: octave ``o``
    has a ``2**(o+1)`` lattice and amplitude ``decay**-o``, so a smaller ``decay``
    gives a patchier fog.
    """
    B, _, H, W = x.shape
    field = torch.zeros(B, 1, H, W, device=x.device, dtype=x.dtype)
    octave, res = 0, 2
    while True:
        lattice = uniform(generator, (B, 1, res, res), x)
        field = field + decay ** (-octave) * F.interpolate(lattice, size=(H, W), mode="bicubic", align_corners=False)
        if res >= max(H, W):
            break
        octave, res = octave + 1, res * 2
    low = field.amin(dim=(-2, -1), keepdim=True)
    high = field.amax(dim=(-2, -1), keepdim=True)
    return (field - low) / (high - low).clamp_min(1e-6)


# --- drawing -----------------------------------------------------------------------


def segment_distance(grid: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Distance of every pixel to one segment per image, and its position along it.

    :param grid: ``[H, W, 2]`` from :func:`pixel_grid`.
    :param a: ``[B, 2]`` segment starts; ``b``: ``[B, 2]`` ends (pixels).
    :returns: ``(distance, along)``, each ``[B, H, W]``; ``along`` is the pixel's
        projection onto the segment's line, in pixels from ``a``.
    """
    # x and y kept as separate [B, H, W] planes: reductions over a trailing dim of
    # size 2 are several times slower than plain elementwise maths.
    ax, ay = a[:, 0, None, None], a[:, 1, None, None]
    dx, dy = b[:, 0, None, None] - ax, b[:, 1, None, None] - ay
    length = torch.hypot(dx, dy).clamp_min(1e-6)
    rx, ry = grid[None, ..., 0] - ax, grid[None, ..., 1] - ay
    along = (rx * dx + ry * dy) / length
    t = (along / length).clamp(0, 1)
    return torch.hypot(rx - t * dx, ry - t * dy), along


def stroke(distance: Tensor, width: float) -> Tensor:
    """Anti-aliased ink of a line ``width`` pixels wide given each pixel's distance to it."""
    return (width / 2 + 0.5 - distance).clamp(0, 1)


def band_coverage(size: int, start: Tensor, width: float, like: Tensor) -> Tensor:
    """Fraction of each of ``size`` pixel rows covered by the band ``[start, start + width)``: ``[B, size]``."""
    i = torch.arange(size, device=like.device, dtype=like.dtype)
    s = start.to(like)[:, None]
    return (torch.minimum(i + 1, s + width) - torch.maximum(i, s)).clamp(0, 1)


def rotation_matrices(angles: Tensor) -> Tensor:
    """``[B, 2, 2]`` rotations by ``angles`` (radians)."""
    c, s = angles.cos(), angles.sin()
    return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)


# --- JPEG --------------------------------------------------------------------------

#: The JPEG standard's (Annex K) luminance quantisation table.
JPEG_LUMA = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)


def jpeg_table(quality: int, like: Tensor) -> Tensor:
    """The luminance table scaled for ``quality`` (1..100) as libjpeg (IJG) scales it
    (integer division included: quality 18 scales by 277, not 277.8)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    base = torch.tensor(JPEG_LUMA, device=like.device, dtype=like.dtype)
    return torch.floor((base * scale + 50) / 100).clamp(1, 255)


def dct_matrix(n: int, like: Tensor) -> Tensor:
    """The orthonormal DCT-II matrix ``D`` (``D @ v`` transforms ``v``)."""
    k = torch.arange(n, device=like.device, dtype=like.dtype)[:, None]
    i = torch.arange(n, device=like.device, dtype=like.dtype)[None, :]
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2 / n)
    d[0] = d[0] / math.sqrt(2)
    return d


def jpeg(x: Tensor, quality: int) -> Tensor:
    """JPEG's lossy step: 8x8 block DCT, quantisation with the scaled luminance
    table, inverse DCT, with 8-bit rounding before and after as an encoder and a
    decoder do. Each channel is coded like a luma plane (no colour conversion or
    chroma subsampling)."""
    B, C, H, W = x.shape
    ph, pw = -H % 8, -W % 8
    # Encoders pad partial blocks by repeating the edge.
    y = F.pad(torch.round(x * 255), (0, pw, 0, ph), mode="replicate") - 128
    nh, nw = (H + ph) // 8, (W + pw) // 8
    blocks = y.reshape(B, C, nh, 8, nw, 8).transpose(3, 4)  # [B, C, nh, nw, 8, 8]
    d = dct_matrix(8, x)
    q = jpeg_table(quality, x)
    coef = d @ blocks @ d.T
    blocks = d.T @ (torch.round(coef / q) * q) @ d
    y = blocks.transpose(3, 4).reshape(B, C, H + ph, W + pw)[..., :H, :W]
    return torch.round(y + 128).clamp(0, 255) / 255
