"""The built-in procedural-glyphs dataset: sizes, determinism, splits and look."""

from __future__ import annotations

import re

import pytest
import torch

from bench.components import ImageSplit
from bench.data import glyphs
from bench.data.glyphs import ProceduralGlyphs
from bench.errors import MrbenchError, OptionsError

SPLITS = ("meta-train", "meta-val", "meta-test")
# Small enough to generate in a fraction of a second: 10 alphabets -> 6/1/3 by split.
SMALL = {"n_alphabets": 10, "classes_per_alphabet": 5, "samples_per_class": 6}


def test_default_sizes() -> None:
    ds = ProceduralGlyphs()
    assert ds.id == "procedural-glyphs" and ds.needs_files is False
    splits = {s: ds.load(s) for s in SPLITS}
    assert {s: sp.n_classes for s, sp in splits.items()} == {"meta-train": 900, "meta-val": 150, "meta-test": 450}
    assert sum(sp.n_classes for sp in splits.values()) >= 1000
    for sp in splits.values():
        assert sp.images.shape == (sp.n_classes * 20, 1, 28, 28)
        assert bool((sp.counts == 20).all())
    assert len({sp.groups[0] for sp in splits.values()}) == 3
    assert {s: len(set(sp.groups)) for s, sp in splits.items()} == {"meta-train": 30, "meta-val": 5, "meta-test": 15}


def test_generation_is_deterministic_and_cached() -> None:
    ds = ProceduralGlyphs(SMALL)
    glyphs.clear_cache()
    first = {s: ds.load(s) for s in SPLITS}
    # Repeated loads come from the in-process cache.
    assert all(ds.load(s) is first[s] for s in SPLITS)
    glyphs.clear_cache()
    for s in SPLITS:
        again = ProceduralGlyphs(SMALL).load(s)
        assert again is not first[s]
        assert again.images.numpy().tobytes() == first[s].images.numpy().tobytes()
        assert torch.equal(again.labels, first[s].labels)
        assert again.class_names == first[s].class_names
        assert again.revision == first[s].revision


def test_seeds_differ() -> None:
    a = ProceduralGlyphs(SMALL, seed=0).load("meta-test")
    b = ProceduralGlyphs(SMALL, seed=1).load("meta-test")
    assert a.images.shape == b.images.shape
    assert not torch.equal(a.images, b.images)
    assert a.revision != b.revision


def test_class_is_independent_of_dataset_size() -> None:
    small = ProceduralGlyphs(SMALL).load("meta-train")
    # More alphabets and more characters per alphabet: other classes, other render
    # batches, same character.
    large = ProceduralGlyphs(SMALL, n_alphabets=14, classes_per_alphabet=8).load("meta-train")
    for name in ("alphabet00/glyph00", "alphabet01/glyph03", "alphabet05/glyph04"):
        ci, cj = small.class_names.index(name), large.class_names.index(name)
        x = small.images[small.offsets[ci] : small.offsets[ci] + small.counts[ci]]
        y = large.images[large.offsets[cj] : large.offsets[cj] + large.counts[cj]]
        assert torch.equal(x, y), name


def test_render_does_not_depend_on_batch() -> None:
    gen = torch.Generator().manual_seed(0)
    points = torch.rand(7, 3, 11, 2, generator=gen) * 28
    half_width = 0.6 + torch.rand(7, generator=gen)
    together = glyphs._render(points, half_width, 28)
    for i in range(7):
        assert torch.equal(glyphs._render(points[i : i + 1], half_width[i : i + 1], 28), together[i : i + 1])


def test_shapes_dtype_labels_and_names() -> None:
    sp = ProceduralGlyphs(SMALL).load("meta-val", root="/nonexistent/ignored")
    assert isinstance(sp, ImageSplit)
    assert sp.images.dtype == torch.uint8 and sp.images.shape == (5 * 6, 1, 28, 28)
    assert sp.labels.dtype == torch.int64
    assert torch.equal(sp.labels, torch.arange(5).repeat_interleave(6))
    assert sp.class_names == [f"alphabet06/glyph{c:02d}" for c in range(5)]
    assert sp.groups == ["alphabet06"] * 5
    assert re.fullmatch(r"[0-9a-f]{16}", sp.revision)


def test_image_size_option() -> None:
    sp = ProceduralGlyphs(SMALL, image_size=20).load("meta-val")
    assert sp.images.shape == (30, 1, 20, 20)
    assert int(sp.images.max()) >= 250


def test_splits_are_disjoint_alphabets() -> None:
    ds = ProceduralGlyphs(SMALL)
    splits = {s: ds.load(s) for s in SPLITS}
    alphabets = {s: set(sp.groups) for s, sp in splits.items()}
    assert {s: len(a) for s, a in alphabets.items()} == {"meta-train": 6, "meta-val": 1, "meta-test": 3}
    assert {s: sp.n_classes for s, sp in splits.items()} == {"meta-train": 30, "meta-val": 5, "meta-test": 15}
    assert not alphabets["meta-train"] & alphabets["meta-val"]
    assert not alphabets["meta-train"] & alphabets["meta-test"]
    assert not alphabets["meta-val"] & alphabets["meta-test"]
    assert set().union(*alphabets.values()) == {f"alphabet{a:02d}" for a in range(10)}
    for sp in splits.values():
        assert all(name.split("/")[0] == group for name, group in zip(sp.class_names, sp.groups))


def test_strokes_are_bright_on_dark() -> None:
    images = ProceduralGlyphs(SMALL).load("meta-train").images.float()
    assert images.mean() < 80  # mostly background
    assert (images == 0).float().mean() > 0.6
    # Every image has ink, saturated in the stroke cores.
    assert bool((images.flatten(1).amax(1) >= 250).all())


def test_drawings_of_a_class_are_closer_than_other_classes() -> None:
    sp = ProceduralGlyphs(SMALL).load("meta-train")
    x = sp.images.flatten(1).float() / 255
    d = torch.cdist(x, x)
    same = sp.labels[:, None] == sp.labels[None, :]
    off_diag = ~torch.eye(len(x), dtype=torch.bool)
    within = d[same & off_diag].mean()
    between = d[~same].mean()
    assert within < 0.95 * between
    # Leave-one-out pixel 1-NN over the 30 classes: far above chance (1/30), far from
    # perfect (the jitter makes it a real few-shot problem).
    d.fill_diagonal_(float("inf"))
    accuracy = (sp.labels[d.argmin(1)] == sp.labels).float().mean()
    assert 0.3 < accuracy < 0.95


def test_options_are_strict() -> None:
    with pytest.raises(OptionsError, match="n_alphabet"):
        ProceduralGlyphs(n_alphabet=10)
    with pytest.raises(OptionsError):
        ProceduralGlyphs(n_alphabets=2)  # a split would be empty


def test_unknown_split() -> None:
    with pytest.raises(MrbenchError, match="meta-test"):
        ProceduralGlyphs(SMALL).load("test")


def test_generation_uses_no_machine_dependent_functions(monkeypatch: pytest.MonkeyPatch) -> None:
    """libm's and torch's log/sin/cos/exp/pow and torch's vectorised randn round their last
    bit differently on different CPUs and versions; glyphs-5w1s v1 and v2 pinned revisions
    that other machines did not reproduce because of them. Generation must not call any."""
    import math

    def forbidden(name: str):
        def fail(*args, **kwargs):
            raise AssertionError(f"the glyph generator called {name}, whose rounding depends on the machine")
        return fail

    for mod, names in ((math, ("log", "sin", "cos", "exp", "pow", "atan2", "tan", "hypot")),
                       (torch, ("randn", "normal", "log", "sin", "cos", "exp", "pow", "atan2", "matmul"))):
        for name in names:
            monkeypatch.setattr(mod, name, forbidden(f"{mod.__name__}.{name}"))
    monkeypatch.setattr(torch.Tensor, "pow", forbidden("Tensor.pow"))
    monkeypatch.setattr(torch.Tensor, "__pow__", forbidden("Tensor.__pow__"))
    glyphs.clear_cache()
    try:
        sp = ProceduralGlyphs(SMALL).load("meta-test")
    finally:
        glyphs.clear_cache()
    assert sp.images.shape[0] == sp.n_classes * SMALL["samples_per_class"]


def test_exact_cos_sin_matches_libm_to_a_few_ulp() -> None:
    import math

    xs = torch.linspace(-7.0, 7.0, 4001, dtype=torch.float64)  # the generator's angles lie in [-pi/4, 2 pi]
    c, s = glyphs._cos_sin(xs)
    assert float((c - torch.cos(xs)).abs().max()) < 1e-15
    assert float((s - torch.sin(xs)).abs().max()) < 1e-15
    for x in (0.0, 0.3, -1.2, math.pi / 4, 2.5, -3.0, 6.2):
        cx, sx = glyphs._cos_sin(x)
        assert abs(cx - math.cos(x)) < 1e-15 and abs(sx - math.sin(x)) < 1e-15
        assert (cx, sx) == tuple(float(v) for v in glyphs._cos_sin(torch.tensor(x, dtype=torch.float64)))
