"""``procedural-glyphs``: a built-in, file-free, Omniglot-like dataset.

Every image is generated from ``seed``, so the default command runs anywhere with no
archive. The generative story mirrors Omniglot's:

* an **alphabet** is a small vocabulary of stroke primitives (lines, quadratic and
  cubic Bezier curves in a local frame) plus a style (curvature, stroke width, how
  often strokes join, whether strokes snap to 45-degree directions);
* a **character** (class) is 2 to 4 strokes drawn from its alphabet's vocabulary,
  each placed, rotated and scaled at random, often starting on an earlier stroke,
  then fitted into the canvas;
* a **sample** is one "drawer's" rendering: control points and stroke positions
  jittered, a small random affine (rotation +-10 degrees, scale 0.9-1.1, shift
  +-1.5 px), a slightly different pen width, rendered anti-aliased as bright strokes
  on a dark background (inverted Omniglot).

Splits are by alphabet, so meta-test holds unseen alphabets: the first 60% of the
alphabets are ``meta-train``, the next 10% ``meta-val``, the last 30% ``meta-test``.

Determinism: every random number comes from a ``torch.Generator`` whose seed is
derived from ``(seed, alphabet)`` or ``(seed, alphabet, character)``, so a class is
the same whatever the number of alphabets, and the same options give byte-identical
images. Every step, from the uniforms to the pixels, uses only exactly rounded IEEE
operations (``+ - * /``, ``sqrt``, ``min``, ``clamp``, ``round``) in a fixed order:
no ``log``/``sin``/``cos`` (libm and torch's vectorised kernels round their last bit
differently on different CPUs and versions), no ``randn`` (a vectorised Box-Muller)
and no reductions whose order depends on the kernel. So an image is the same on every
machine, and does not depend on which batch it was rendered in.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Iterator

import pydantic
import torch
from torch import Tensor

from bench.components import Dataset, ImageSplit, Options
from bench.data import check_split, content_revision

# Geometry lives in a normalised canvas [-1, 1]^2 until the per-sample step maps it to
# pixels, so the look of a glyph does not depend on ``image_size``.
_FIT_HALF = 0.74  # glyphs are fitted into [-0.74, 0.74]^2, leaving room for the affine
_POINTS_PER_STROKE = 11  # 10 segments: < 0.3 px from the true curve at 28 px
_REF_SIZE = 28  # stroke widths and jitter are specified in pixels of a 28 px image

# How much two drawings of one character differ. Tuned so that pixel-space 1-NN on
# 5-way 1-shot meta-test episodes lands in Omniglot's ballpark (see the module tests).
_CP_JITTER = 0.065  # per control point, normalised units (0.9 px at 28 px)
_STROKE_JITTER = 0.085  # per stroke offset, normalised units (1.2 px at 28 px)
_MAX_ROTATION = math.radians(10.0)
_SCALE_RANGE = (0.9, 1.1)
_MAX_SHIFT_PX = 1.5
_WIDTH_JITTER = 0.15  # pen width multiplied by U(1 - j, 1 + j)

# Rendering batch size in (pixel x segment) pairs: ~1 MB of float32 per buffer, so a
# chunk's intermediates stay in cache (measured 1.9 s per 30k images at 100k-300k
# pairs vs 5.3 s at 4M, one thread).
_RENDER_CHUNK_ELEMENTS = 250_000


class GlyphOptions(Options):
    """Options of :class:`ProceduralGlyphs`.

    :param seed: the seed everything is derived from.
    :param n_alphabets: number of alphabets; split 60/10/30% by alphabet (at least one
        alphabet in each split, so at least 3).
    :param classes_per_alphabet: characters per alphabet.
    :param samples_per_class: drawings per character.
    :param image_size: side of the square images in pixels.
    """

    seed: int = 0
    n_alphabets: int = pydantic.Field(50, ge=3)
    classes_per_alphabet: int = pydantic.Field(30, ge=1)
    samples_per_class: int = pydantic.Field(20, ge=1)
    image_size: int = pydantic.Field(28, ge=8, le=256)


class ProceduralGlyphs(Dataset):
    """Omniglot-like glyphs generated from a seed: no files, byte-identical per options.

    Class names are ``alphabetAA/glyphGG`` (zero-padded, global alphabet index), groups
    are the alphabet names. With the defaults: 50 alphabets x 30 characters x 20
    drawings at 28x28, split 30/5/15 alphabets = 900/150/450 classes.

    Loaded splits are cached in-process; the returned tensors are shared between calls,
    so treat them as read-only.
    """

    id: ClassVar[str] = "procedural-glyphs"
    group_kind: ClassVar[str] = "alphabet"
    # Bump on any change to the generative constants, the order of random draws or
    # the renderer: every image (and so every revision) may change. 2: exact arithmetic
    # (no libm or vectorised transcendentals), the same pixels on every CPU.
    version: ClassVar[str] = "2"
    Options: ClassVar[type[Options]] = GlyphOptions
    needs_files: ClassVar[bool] = False

    def load(self, split: str, root: Any | None = None) -> ImageSplit:
        """Generate (or fetch from the in-process cache) one split.

        :param split: ``meta-train``, ``meta-val`` or ``meta-test``.
        :param root: ignored; the dataset needs no files.
        :raises bench.errors.MrbenchError: an unknown split name.
        """
        check_split(self, split)
        o = self.options
        return _generate_split(
            split, o.seed, o.n_alphabets, o.classes_per_alphabet, o.samples_per_class, o.image_size
        )

    def alphabet_ranges(self) -> dict[str, range]:
        """Which alphabet indices each split holds."""
        return _alphabet_ranges(self.options.n_alphabets)


def clear_cache() -> None:
    """Drop every generated split held in the in-process cache (tests, memory)."""
    _generate_split.cache_clear()


def _alphabet_ranges(n_alphabets: int) -> dict[str, range]:
    # Round half up (not Python's banker's rounding) and keep every split non-empty.
    n_val = max(1, int(0.1 * n_alphabets + 0.5))
    n_test = max(1, int(0.3 * n_alphabets + 0.5))
    n_train = n_alphabets - n_val - n_test
    return {
        "meta-train": range(0, n_train),
        "meta-val": range(n_train, n_train + n_val),
        "meta-test": range(n_train + n_val, n_alphabets),
    }


def _generator(*path: int | str) -> torch.Generator:
    # A hash rather than seed * K + index: no two (seed, alphabet, character) paths can
    # collide, and adding alphabets or characters never shifts another one's stream.
    digest = hashlib.sha256(("procedural-glyphs/" + "/".join(map(str, path))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


class _Uniforms:
    """Python floats drawn in one call from a torch generator, consumed in order.

    Building one character takes a few dozen scalars; pulling them as a list and
    doing the geometry with :mod:`math` is much faster than dozens of tiny tensor ops.
    """

    def __init__(self, generator: torch.Generator, n: int) -> None:
        self._values = torch.rand(n, generator=generator, dtype=torch.float64).tolist()
        self._i = 0

    def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
        u = self._values[self._i]
        self._i += 1
        return lo + (hi - lo) * u

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in ``[lo, hi]``."""
        return min(hi, lo + int(self() * (hi - lo + 1)))

    def normal(self) -> float:
        """A standard normal variate (Irwin-Hall: 12 uniforms minus 6, bounded at +-6).

        A sum in a fixed order, so exactly the same bits everywhere, where Box-Muller's
        ``log`` and ``cos`` come from a libm whose last bit depends on the machine.
        """
        total = 0.0
        for _ in range(12):
            total += self()
        return total - 6.0


@dataclass(frozen=True)
class _Alphabet:
    """An alphabet's stroke vocabulary and style.

    :param primitives: per primitive, 4 cubic control points ``(x, y)`` in a local
        frame where the stroke runs from ``(0, 0)`` to ``(1, 0)``.
    :param lengths: per primitive, its typical length in canvas units.
    :param p_connect: probability that a stroke starts on an earlier stroke.
    :param p_axis: probability that a stroke's direction snaps to a multiple of 45 deg.
    :param width: pen width range in pixels at 28 px.
    """

    primitives: list[list[tuple[float, float]]]
    lengths: list[float]
    p_connect: float
    p_axis: float
    width: tuple[float, float]


def _make_alphabet(seed: int, a: int) -> _Alphabet:
    u = _Uniforms(_generator(seed, "alphabet", a), 256)
    n_prim = u.integer(5, 9)
    curvature = u(0.15, 0.8)  # how far control points leave the chord
    p_line = u(0.0, 0.5)
    p_cubic = u(0.2, 0.8)  # of the curves
    len_lo = u(0.55, 0.9)
    len_hi = len_lo + u(0.3, 0.7)
    width_lo = u(1.3, 2.0)
    width = (width_lo, width_lo + u(0.2, 0.6))
    p_connect = u(0.4, 0.9)
    p_axis = u() * u()  # most alphabets free-hand, a few angular ones (u^2 of one draw would call pow)
    primitives, lengths = [], []
    for _ in range(n_prim):
        kind = u()
        if kind < p_line:
            cps = [(0.0, 0.0), (1 / 3, 0.0), (2 / 3, 0.0), (1.0, 0.0)]
        elif u() > p_cubic:
            # A quadratic with control point q, raised to a cubic.
            qx, qy = u(0.15, 0.85), 1.6 * curvature * u.normal()
            cps = [(0.0, 0.0), (2 / 3 * qx, 2 / 3 * qy), (1 - 2 / 3 * (1 - qx), 2 / 3 * qy), (1.0, 0.0)]
        else:
            # Crossing x-coordinates (x1 > x2) with large offsets give hooks and loops.
            cps = [
                (0.0, 0.0),
                (u(-0.4, 0.9), 1.8 * curvature * u.normal()),
                (u(0.1, 1.4), 1.8 * curvature * u.normal()),
                (1.0, 0.0),
            ]
        primitives.append(cps)
        lengths.append(u(len_lo, len_hi))
    return _Alphabet(primitives, lengths, p_connect, p_axis, width)


def _bezier(cp: Tensor, n_points: int) -> Tensor:
    """Points on cubic Beziers: ``cp [..., 4, 2]`` -> ``[..., n_points, 2]``.

    Written as an explicit four-term sum rather than a matmul, whose blocking (and so
    its rounding) may depend on the batch shape.
    """
    t = torch.linspace(0.0, 1.0, n_points, dtype=cp.dtype).unsqueeze(-1)
    s = 1.0 - t
    b = (s * s * s, 3.0 * s * s * t, 3.0 * s * t * t, t * t * t)
    out = b[0] * cp[..., 0:1, :]
    for k in range(1, 4):
        out = out + b[k] * cp[..., k : k + 1, :]
    return out


def _cubic_point(cps: list[tuple[float, float]], t: float) -> tuple[float, float]:
    s = 1.0 - t
    w = (s * s * s, 3.0 * s * s * t, 3.0 * s * t * t, t * t * t)
    return (sum(wk * q[0] for wk, q in zip(w, cps)), sum(wk * q[1] for wk, q in zip(w, cps)))


def _make_character(alphabet: _Alphabet, seed: int, a: int, c: int) -> tuple[torch.Generator, Tensor, float]:
    """A character's strokes ``[S, 4, 2]`` in the canvas, its pen width, and the
    generator (already advanced) its samples are drawn from."""
    gen = _generator(seed, "glyph", a, c)
    u = _Uniforms(gen, 128)
    n_strokes = u.integer(2, 4)
    strokes: list[list[tuple[float, float]]] = []
    anchors: list[tuple[float, float]] = []
    for s in range(n_strokes):
        p = u.integer(0, len(alphabet.primitives) - 1)
        length = alphabet.lengths[p] * u(0.8, 1.2)
        if u() < alphabet.p_axis:
            theta = u.integer(0, 7) * math.pi / 4 + 0.08 * u.normal()
        else:
            theta = u(0.0, 2 * math.pi)
        flip = 1.0 if u() < 0.5 else -1.0
        if s > 0 and u() < alphabet.p_connect:
            ox, oy = anchors[u.integer(0, len(anchors) - 1)]
        else:
            ox, oy = u(-0.6, 0.6), u(-0.6, 0.6)
        cos, sin = _cos_sin(theta)
        cos, sin = cos * length, sin * length
        pts = [(ox + cos * x - sin * flip * y, oy + sin * x + cos * flip * y) for x, y in alphabet.primitives[p]]
        strokes.append(pts)
        # Later strokes may start at this one's ends or middle, as in real characters.
        anchors += [pts[0], _cubic_point(pts, 0.5), pts[3]]
    # Fit the drawn curve (not its control polygon) into the canvas, keeping aspect.
    # Plain Python: on a busy 2-core machine a tiny torch reduction that wakes the
    # thread pool was measured at milliseconds per call.
    curve = [_cubic_point(pts, i / 16) for pts in strokes for i in range(17)]
    xs, ys = [q[0] for q in curve], [q[1] for q in curve]
    cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
    scale = 2 * _FIT_HALF / max(max(xs) - min(xs), max(ys) - min(ys), 1e-6)
    cp = torch.tensor([[((x - cx) * scale, (y - cy) * scale) for x, y in pts] for pts in strokes], dtype=torch.float64)
    width = u(*alphabet.width)
    return gen, cp, width


def _sample_polylines(cp: Tensor, width: float, n: int, gen: torch.Generator, image_size: int) -> tuple[Tensor, Tensor]:
    """``n`` jittered drawings of one character as polylines in pixel coordinates.

    :returns: points ``[n, S, P, 2]`` (float32, x = column, y = row, pixel centres at
        ``i + 0.5``) and half pen widths ``[n]`` in pixels.
    """
    S = cp.shape[0]
    f64 = torch.float64
    pts = cp.expand(n, S, 4, 2)
    pts = pts + _CP_JITTER * _normal((n, S, 4, 2), gen)
    pts = pts + _STROKE_JITTER * _normal((n, S, 1, 2), gen)
    angle = (2 * torch.rand(n, generator=gen, dtype=f64) - 1) * _MAX_ROTATION
    lo, hi = _SCALE_RANGE
    scale = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=f64)
    shift = (2 * torch.rand(n, 2, generator=gen, dtype=f64) - 1) * _MAX_SHIFT_PX
    pen = 1 + _WIDTH_JITTER * (2 * torch.rand(n, generator=gen, dtype=f64) - 1)
    cos, sin = _cos_sin(angle)
    cos = (cos * scale).view(n, 1, 1)
    sin = (sin * scale).view(n, 1, 1)
    x, y = pts[..., 0], pts[..., 1]
    half = image_size / 2
    px = (cos * x - sin * y) * half + half + shift[:, 0].view(n, 1, 1)
    py = (sin * x + cos * y) * half + half + shift[:, 1].view(n, 1, 1)
    curve = _bezier(torch.stack((px, py), -1), _POINTS_PER_STROKE)
    half_width = width * pen * (image_size / _REF_SIZE) / 2
    # Snap to a 1/256-pixel grid before rendering: grid values are exact in float32, so
    # the float64 -> float32 cast rounds nothing. (v1 and v2 of glyphs-5w1s took this
    # geometry from torch's randn/cos/sin and libm's log/cos/sin, whose last bits differ
    # between CPUs and versions; a snap alone did not make v2's pinned revision
    # reproducible on other machines. Since v3 the geometry itself is exact.)
    curve = torch.round(curve * _GRID) / _GRID
    half_width = torch.round(half_width * _GRID) / _GRID
    return curve.to(torch.float32), half_width.to(torch.float32)


_GRID = 256.0


def _normal(shape: tuple[int, ...], gen: torch.Generator) -> Tensor:
    """Standard normal variates (Irwin-Hall, as :meth:`_Uniforms.normal`) of ``shape``.

    ``torch.rand`` draws each float64 from the generator's stream one after another (the
    same bits on every CPU); the 12 terms are added one elementwise ``+`` at a time, so
    no reduction kernel chooses the order.
    """
    u = torch.rand(12, *shape, generator=gen, dtype=torch.float64)
    total = u[0]
    for k in range(1, 12):
        total = total + u[k]
    return total - 6.0


# Taylor coefficients 1/(2k)! and 1/(2k+1)!, to the term below float64 rounding on |r| <= pi/4.
_COS_TERMS = [1.0 / math.factorial(2 * k) for k in range(1, 11)]
_SIN_TERMS = [1.0 / math.factorial(2 * k + 1) for k in range(1, 11)]
_HALF_PI = math.pi / 2


def _cos_sin(theta: Any) -> tuple[Any, Any]:
    """``(cos(theta), sin(theta))`` from ``+ - * /`` and ``round`` only, for a Python
    float or a float64 tensor, with the same bits on every machine (libm's and torch's
    ``sin``/``cos`` differ in the last bit between CPUs). Accurate to a few ulp: the
    argument is reduced by the nearest multiple of pi/2, then Horner on Taylor series.
    """
    is_tensor = isinstance(theta, Tensor)
    q = torch.round(theta / _HALF_PI) if is_tensor else float(round(theta / _HALF_PI))
    r = theta - q * _HALF_PI
    r2 = r * r
    c = _COS_TERMS[-1]
    s = _SIN_TERMS[-1]
    for k in range(len(_COS_TERMS) - 2, -1, -1):
        c = _COS_TERMS[k] - r2 * c
        s = _SIN_TERMS[k] - r2 * s
    return _rotate_quadrant(1.0 - r2 * c, r - r * r2 * s, q, is_tensor)


def _rotate_quadrant(cos_r: Any, sin_r: Any, q: Any, is_tensor: bool) -> tuple[Any, Any]:
    """``cos``/``sin`` of ``r + q pi/2`` from those of ``r``: a swap and signs, exact."""
    if not is_tensor:
        return [(cos_r, sin_r), (-sin_r, cos_r), (-cos_r, -sin_r), (sin_r, -cos_r)][int(q) % 4]
    m = torch.remainder(q, 4)
    cos = torch.where(m == 0, cos_r, torch.where(m == 1, -sin_r, torch.where(m == 2, -cos_r, sin_r)))
    sin = torch.where(m == 0, sin_r, torch.where(m == 1, cos_r, torch.where(m == 2, -sin_r, -cos_r)))
    return cos, sin


def _render(points: Tensor, half_width: Tensor, image_size: int) -> Tensor:
    """Anti-aliased rendering of polylines: ``[N, S, P, 2]`` -> uint8 ``[N, 1, H, W]``.

    Intensity is ``clamp(half_width + 0.5 - d, 0, 1)`` with ``d`` the distance from the
    pixel centre to the nearest segment: a one-pixel linear ramp at the stroke edge,
    a cheap stand-in for box-filtered coverage.
    """
    N = points.shape[0]
    H = W = image_size
    a = points[:, :, :-1].reshape(N, -1, 2)
    d = points[:, :, 1:].reshape(N, -1, 2) - a
    M = a.shape[1]
    len2 = (d * d).sum(-1).clamp_min(1e-12)
    ux, uy = d[..., 0] / len2, d[..., 1] / len2
    c = a[..., 0] * ux + a[..., 1] * uy
    grid = torch.arange(W, dtype=torch.float32) + 0.5
    out = torch.empty(N, H * W, dtype=torch.uint8)
    step = max(1, _RENDER_CHUNK_ELEMENTS // (M * H * W))
    for i in range(0, N, step):
        j = slice(i, min(N, i + step))
        # Segment parameter of the projection, t = ((p - a) . d) / |d|^2, built from its
        # separable parts: the x part varies along rows only, the y part along columns.
        tx = (grid * ux[j, :, None] - c[j, :, None]).unsqueeze(2)  # [n, M, 1, W]
        ty = (grid * uy[j, :, None]).unsqueeze(3)  # [n, M, H, 1]
        t = (tx + ty).clamp_(0.0, 1.0)  # [n, M, H, W]
        wx = (grid - a[j, :, 0, None]).unsqueeze(2)  # p - a, x part [n, M, 1, W]
        wy = (grid - a[j, :, 1, None]).unsqueeze(3)
        ex = torch.sub(wx, t * d[j, :, 0, None, None])
        ey = t.mul_(d[j, :, 1, None, None]).neg_().add_(wy)
        dist2 = ex.mul_(ex).add_(ey.mul_(ey)).amin(1)  # [n, H, W]
        ink = (half_width[j, None, None] + 0.5 - dist2.sqrt_()).clamp_(0.0, 1.0)
        out[j] = ink.mul_(255.0).round_().to(torch.uint8).view(-1, H * W)
    return out.view(N, 1, H, W)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch single-threaded inside the block, restoring the setting after.

    Generation is a one-off of a few seconds made of thousands of cache-sized ops. On
    a small shared CPU, waking the intra-op pool for each of them was measured 7-18x
    *slower*: 15-41 s instead of 2.2-2.4 s for the default dataset on 2 cores while
    another process held one of them. One thread is predictable everywhere. The
    setting is process-global, so torch work on other Python threads during a load
    also runs single-threaded for those seconds.
    """
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


@functools.lru_cache(maxsize=8)
def _generate_split(
    split: str, seed: int, n_alphabets: int, classes_per_alphabet: int, samples_per_class: int, image_size: int
) -> ImageSplit:
    with _one_thread():
        return _generate_split_uncached(split, seed, n_alphabets, classes_per_alphabet, samples_per_class, image_size)


def _generate_split_uncached(
    split: str, seed: int, n_alphabets: int, classes_per_alphabet: int, samples_per_class: int, image_size: int
) -> ImageSplit:
    names: list[str] = []
    groups: list[str] = []
    # Render characters grouped by stroke count: padding every character to 4 strokes
    # would cost a third more distance computations.
    by_strokes: dict[int, tuple[list[int], list[Tensor], list[Tensor]]] = {}
    for a in _alphabet_ranges(n_alphabets)[split]:
        alphabet = _make_alphabet(seed, a)
        for c in range(classes_per_alphabet):
            gen, cp, width = _make_character(alphabet, seed, a, c)
            pts, hw = _sample_polylines(cp, width, samples_per_class, gen, image_size)
            slot = by_strokes.setdefault(cp.shape[0], ([], [], []))
            slot[0].append(len(names))
            slot[1].append(pts)
            slot[2].append(hw)
            names.append(f"alphabet{a:02d}/glyph{c:02d}")
            groups.append(f"alphabet{a:02d}")
    images = torch.empty(len(names), samples_per_class, 1, image_size, image_size, dtype=torch.uint8)
    for idx, pts, hw in by_strokes.values():
        images[idx] = _render(torch.cat(pts), torch.cat(hw), image_size).view(
            len(idx), samples_per_class, 1, image_size, image_size
        )
    images = images.view(-1, 1, image_size, image_size)
    labels = torch.arange(len(names), dtype=torch.int64).repeat_interleave(samples_per_class)
    return ImageSplit(images, labels, names, groups, content_revision(images, labels, names))
