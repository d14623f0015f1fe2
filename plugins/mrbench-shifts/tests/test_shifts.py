"""Contract and calibration tests of the shifts this distribution registers.

Parametrized over the registry's shift ids provided by ``mrbench-shifts`` (shifts
of other distributions have their own statistics and tests). Inputs are real-looking
glyphs: 4 episodes, 4-way 2-shot with 2 queries per class, 64 images in all.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from bench.components import Episode
from bench.data.glyphs import ProceduralGlyphs
from bench.episodes import to_float
from bench.errors import MrbenchError, OptionsError
from bench.plugins import get_registry
from bench.testing import shift_contract_tests
from mrbench_shifts.base import Corruption, round_half_up

REGISTRY = get_registry()
SHIFTS = [i for i in REGISTRY.ids("shift") if REGISTRY.get("shift", i).provenance.distribution == "mrbench-shifts"]
CORRUPTIONS = [i for i in SHIFTS if issubclass(REGISTRY.get("shift", i), Corruption)]
README = Path(__file__).resolve().parents[1] / "README.md"

N_WAY, K_SHOT, N_QUERY, N_EPISODES = 4, 2, 2, 4


def make_episodes() -> Episode:
    """``[4, ...]`` class-major glyph episodes; episode ``e`` uses classes ``2e .. 2e+3`` (mod 8)."""
    split = ProceduralGlyphs(n_alphabets=5, classes_per_alphabet=4, samples_per_class=4).load("meta-train")
    images = to_float(split.images)
    classes = torch.tensor([[(2 * e + i) % split.n_classes for i in range(N_WAY)] for e in range(N_EPISODES)])
    first = split.offsets[classes][..., None]  # [E, W, 1]
    support = (first + torch.arange(K_SHOT)).reshape(N_EPISODES, -1)
    query = (first + K_SHOT + torch.arange(N_QUERY)).reshape(N_EPISODES, -1)
    labels = torch.arange(N_WAY)
    return Episode(
        images[support],
        labels.repeat_interleave(K_SHOT).expand(N_EPISODES, -1).contiguous(),
        images[query],
        labels.repeat_interleave(N_QUERY).expand(N_EPISODES, -1).contiguous(),
    )


@pytest.fixture(scope="module")
def episodes() -> Episode:
    return make_episodes()


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def widest(shift_id: str) -> dict[str, str]:
    """Options that let the shift change everything it can change."""
    return {"target": "both"} if shift_id in CORRUPTIONS else {}


def assert_same(a: Episode, b: Episode) -> None:
    for name, x, y in zip(("x_support", "y_support", "x_query", "y_query"), a.tensors(), b.tensors()):
        assert x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y), f"{name} differs"


# --- the statistic each shift is monotone in (README's last column) ----------------


def mad(clean: Episode, shifted: Episode) -> float:
    """Mean absolute difference of all images from the clean ones."""
    return sum((s - c).abs().sum() for c, s in zip(images(clean), images(shifted))).item() / n_pixels(clean)


def images(ep: Episode) -> tuple[torch.Tensor, torch.Tensor]:
    return ep.x_support, ep.x_query


def n_pixels(ep: Episode) -> int:
    return ep.x_support.numel() + ep.x_query.numel()


def total_variation(clean: Episode, shifted: Episode) -> float:
    """Mean absolute difference between neighbouring pixels (sharpness)."""
    tv = 0.0
    for x in images(shifted):
        tv += (x[..., 1:, :] - x[..., :-1, :]).abs().sum().item() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum().item()
    return tv / n_pixels(shifted)


def image_std(clean: Episode, shifted: Episode) -> float:
    """Mean over images of the per-image standard deviation (contrast)."""
    return torch.cat([x.flatten(-3).std(-1).flatten() for x in images(shifted)]).mean().item()


def mean_intensity(clean: Episode, shifted: Episode) -> float:
    return torch.cat([x.flatten() for x in images(shifted)]).mean().item()


def flipped_labels(clean: Episode, shifted: Episode) -> float:
    return (clean.y_support != shifted.y_support).float().mean().item()


def duplicate_support(clean: Episode, shifted: Episode) -> float:
    """Fraction of support images identical to an earlier one in their episode."""
    x = shifted.x_support.flatten(-3)
    same = (x[:, :, None] == x[:, None, :]).all(-1)
    return same.tril(-1).any(-1).float().mean().item()


UP, DOWN = 1, -1
STATISTICS: dict[str, tuple[Callable[[Episode, Episode], float], int]] = {
    "gaussian-noise": (mad, UP),
    "shot-noise": (mad, UP),
    "impulse-noise": (mad, UP),
    "defocus-blur": (total_variation, DOWN),
    "motion-blur": (total_variation, DOWN),
    "glass-blur": (mad, UP),
    "elastic-transform": (mad, UP),
    "pixelate": (mad, UP),
    "jpeg": (mad, UP),
    "contrast": (image_std, DOWN),
    "brightness": (mean_intensity, UP),
    "fog": (mad, UP),
    "rotation": (mad, UP),
    "shear": (mad, UP),
    "scale": (mean_intensity, DOWN),
    "translation": (mad, UP),
    "stripe": (mad, UP),
    "zigzag": (mad, UP),
    "dotted-line": (mad, UP),
    "label-noise": (flipped_labels, UP),
    "class-imbalance": (duplicate_support, UP),
    "support-query-shift": (mad, UP),
}
STATISTIC_NAMES = {
    mad: "mean abs. difference from clean",
    total_variation: "total variation",
    image_std: "per-image std",
    mean_intensity: "mean intensity",
    flipped_labels: "fraction of support labels flipped",
    duplicate_support: "fraction of duplicated support images",
}


# --- registration and options ------------------------------------------------------


def test_registered():
    assert len(CORRUPTIONS) >= 15
    assert {"label-noise", "class-imbalance"} <= set(SHIFTS)
    from mrbench_shifts import all_shifts

    assert sorted(cls.id for cls in all_shifts()) == SHIFTS


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_declares_five_increasing_levels(shift_id):
    cls = REGISTRY.get("shift", shift_id)
    assert cls.severities == (1, 2, 3, 4, 5) and len(cls.levels) == 5
    assert len(set(cls.levels)) == 5, "every severity needs its own parameters"


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_strict_options(shift_id):
    with pytest.raises(OptionsError):
        REGISTRY.create("shift", shift_id, {"no_such_option": 1})
    if shift_id in CORRUPTIONS:
        assert REGISTRY.create("shift", shift_id).options.target == "query"
        with pytest.raises(OptionsError):
            REGISTRY.create("shift", shift_id, {"target": "labels"})


@pytest.mark.parametrize("severity", [6, -1, 2.5, "3", True, None])
@pytest.mark.parametrize("shift_id", SHIFTS)
def test_unknown_severity_lists_valid_ones(shift_id, severity, episodes):
    with pytest.raises(OptionsError, match=r"Valid severities: 0, 1, 2, 3, 4, 5"):
        REGISTRY.create("shift", shift_id).apply(episodes, severity, gen())


# --- the contract ----------------------------------------------------------------------


# The shipped contract checks (bench.testing.SHIFT_CHECKS: every severity keeps shapes,
# dtypes and [0, 1] in float32 and float64, no mutation, deterministic under the generator
# and no global RNG, a seed that matters for stochastic shifts) run on every registered
# shift with its default options in mrbench's tests/test_contract.py; here on the option
# sets that change everything each shift can change.
test_contract = shift_contract_tests(*(REGISTRY.create("shift", i, widest(i)) for i in SHIFTS))


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_half_precision_and_severity_zero_keep_shape_dtype_and_range(shift_id, episodes):
    # What the shipped checks do not cover: float16 images, and severity 0 (the identity).
    shift = REGISTRY.create("shift", shift_id, widest(shift_id))
    for dtype, severities in ((torch.float16, range(6)), (torch.float32, [0])):
        ep = Episode(episodes.x_support.to(dtype), episodes.y_support, episodes.x_query.to(dtype), episodes.y_query)
        for severity in severities:
            out = shift.apply(ep, severity, gen())
            for x, y in zip(ep.tensors(), out.tensors()):
                assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            for x in images(out):
                assert x.min() >= 0 and x.max() <= 1 and not x.isnan().any()
            assert out.y_support.min() >= 0 and out.y_support.max() < N_WAY


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_severity_zero_is_identity(shift_id, episodes):
    out = REGISTRY.create("shift", shift_id, widest(shift_id)).apply(episodes, 0, gen())
    assert out is not episodes
    assert_same(out, episodes)


@pytest.mark.parametrize("target", ["query", "support", "both"])
@pytest.mark.parametrize("shift_id", SHIFTS)
def test_changes_only_its_target(shift_id, target, episodes):
    cls = REGISTRY.get("shift", shift_id)
    if target not in cls.targets:
        pytest.skip(f"{shift_id} only targets {cls.targets}")
    options = {"target": target} if shift_id in CORRUPTIONS else {}
    out = REGISTRY.create("shift", shift_id, options).apply(episodes, 5, gen())
    changed = {name for name, a, b in zip(("x_support", "y_support", "x_query", "y_query"), episodes.tensors(), out.tensors())
               if not torch.equal(a, b)}
    expected = {
        "label-noise": {"y_support"},
        "class-imbalance": {"x_support"},
    }.get(shift_id, {"query": {"x_query"}, "support": {"x_support"}, "both": {"x_query", "x_support"}}[target])
    assert changed == expected


@pytest.mark.parametrize("shift_id", CORRUPTIONS)
def test_query_is_the_same_whether_support_is_corrupted_or_not(shift_id, episodes):
    # Query first, same draws: paired comparisons of target=query and target=both.
    query_only = REGISTRY.create("shift", shift_id, {"target": "query"}).apply(episodes, 4, gen(3))
    both = REGISTRY.create("shift", shift_id, {"target": "both"}).apply(episodes, 4, gen(3))
    assert torch.equal(query_only.x_query, both.x_query)


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_monotone_in_its_statistic(shift_id, episodes):
    statistic, direction = STATISTICS[shift_id]
    shift = REGISTRY.create("shift", shift_id, widest(shift_id))
    values = [statistic(episodes, shift.apply(episodes, s, gen(0))) for s in range(6)]
    steps = [direction * (b - a) for a, b in itertools.pairwise(values)]
    assert all(step >= 0 for step in steps), f"{statistic.__name__} by severity 0..5: {values}"
    assert direction * (values[-1] - values[0]) > 0, f"severity 5 does not move {statistic.__name__}"


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_batched_single_and_nested_episodes(shift_id, episodes):
    shift = REGISTRY.create("shift", shift_id, widest(shift_id))
    batched = shift.apply(episodes, 4, gen())
    single = shift.apply(episodes[0], 4, gen())
    nested_in = Episode(*(t.reshape(2, 2, *t.shape[1:]) for t in episodes.tensors()))
    nested = shift.apply(nested_in, 4, gen())
    for a, b in zip(episodes[0].tensors(), single.tensors()):
        assert a.shape == b.shape and a.dtype == b.dtype
    for a, b in zip(nested_in.tensors(), nested.tensors()):
        assert a.shape == b.shape
    # Draws are made for the flattened batch, so the leading dims' layout does not matter.
    assert_same(Episode(*(t.reshape(N_EPISODES, *t.shape[2:]) for t in nested.tensors())), batched)
    if not REGISTRY.get("shift", shift_id).stochastic:
        assert_same(single, batched[0])


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 20), (2, 33, 9)], ids=str)
@pytest.mark.parametrize("shift_id", CORRUPTIONS)
def test_any_channels_and_size(shift_id, shape):
    x = torch.rand(2, 5, *shape, generator=gen(1))
    ep = Episode(x, torch.zeros(2, 5, dtype=torch.long), x.clone(), torch.zeros(2, 5, dtype=torch.long))
    out = REGISTRY.create("shift", shift_id).apply(ep, 5, gen())
    assert out.x_query.shape == x.shape and out.x_query.min() >= 0 and out.x_query.max() <= 1
    assert not torch.equal(out.x_query, x), "severity 5 left the images unchanged"


@pytest.mark.parametrize("shift_id", CORRUPTIONS)
def test_rejects_bad_images(shift_id):
    shift = REGISTRY.create("shift", shift_id)
    with pytest.raises(MrbenchError, match="float images"):
        shift.corrupt_images(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), 1, gen())
    with pytest.raises(MrbenchError, match="H, W >= 8"):
        shift.corrupt_images(torch.zeros(2, 1, 7, 28), 1, gen())


def test_jpeg_matches_libjpeg(episodes):
    """The torch DCT quantisation reproduces Pillow's libjpeg on grayscale images."""
    Image = pytest.importorskip("PIL.Image")
    import io

    import numpy as np

    shift = REGISTRY.create("shift", "jpeg")
    x = episodes.x_query.flatten(0, 1)
    for severity, quality in zip(range(1, 6), type(shift).levels):
        decoded = []
        for image in (x[:, 0] * 255).round().to(torch.uint8).numpy():
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            decoded.append(torch.from_numpy(np.array(Image.open(buffer))))
        reference = torch.stack(decoded)[:, None].float() / 255
        ours = shift.corrupt_images(x, severity, gen())
        # libjpeg's integer DCT rounds differently; the mean error is ~50x below the
        # compression error itself.
        assert (ours - reference).abs().mean() < 0.02 * (reference - x).abs().mean(), f"quality {quality}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shift_id", SHIFTS)
def test_cuda_images_with_cpu_generator(shift_id, episodes):
    shift = REGISTRY.create("shift", shift_id, widest(shift_id))
    cpu = shift.apply(episodes, 5, gen(2))
    cuda = shift.apply(episodes.to("cuda"), 5, gen(2))
    assert cuda.x_query.device.type == "cuda"
    for a, b in zip(cpu.tensors(), cuda.to("cpu").tensors()):
        # Same draws; only floating-point rounding of the image maths differs.
        assert (a.double() - b.double()).abs().mean() < 1e-3


# --- label noise and class imbalance ------------------------------------------------


def clean_episodes(n_episodes: int, n_way: int, k_shot: int) -> Episode:
    labels = torch.arange(n_way).repeat_interleave(k_shot).expand(n_episodes, -1).contiguous()
    x = torch.rand(n_episodes, n_way * k_shot, 1, 8, 8, generator=gen(5))
    return Episode(x, labels, x[:, :n_way], labels[:, :n_way].clone())


@pytest.mark.parametrize(("n_way", "k_shot"), [(5, 1), (4, 2), (20, 1), (5, 5), (2, 3)])
@pytest.mark.parametrize("fraction", [None, 0.0, 0.25, 1.0])
@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_label_noise_flips_exactly_the_fraction(severity, fraction, n_way, k_shot):
    ep = clean_episodes(300, n_way, k_shot)
    out = REGISTRY.create("shift", "label-noise", {"fraction": fraction}).apply(ep, severity, gen(severity))
    wanted = round_half_up((fraction if fraction is not None else severity / 10) * n_way * k_shot)
    # Exactly `wanted` positions are drawn, so a count of exactly `wanted` changed
    # labels also proves that no drawn label was "flipped" to itself.
    assert ((out.y_support != ep.y_support).sum(-1) == wanted).all()
    assert out.y_support.min() >= 0 and out.y_support.max() < n_way
    if wanted:
        # The new labels cover all the other classes (uniform over them).
        new = out.y_support[out.y_support != ep.y_support]
        old = ep.y_support[out.y_support != ep.y_support]
        assert len(set(((new - old) % n_way).tolist())) == n_way - 1


def test_label_noise_rounds_halves_up():
    # 10% of 5 support labels is half a label: one is flipped, not none.
    out = REGISTRY.create("shift", "label-noise").apply(clean_episodes(10, 5, 1), 1, gen())
    assert ((out.y_support != torch.arange(5)).sum(-1) == 1).all()


def test_label_noise_needs_clean_class_major_labels():
    shift = REGISTRY.create("shift", "label-noise")
    noisy = shift.apply(clean_episodes(10, 5, 1), 5, gen())
    with pytest.raises(MrbenchError, match="class-major"):
        shift.apply(noisy, 1, gen())


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_class_imbalance_reduces_the_fraction_of_classes(severity):
    n_way, k_shot = 5, 3
    ep = clean_episodes(50, n_way, k_shot)
    out = REGISTRY.create("shift", "class-imbalance").apply(ep, severity, gen(severity))
    shots = out.x_support.reshape(50, n_way, k_shot, -1)
    reduced = (shots == shots[:, :, :1]).all(-1).all(-1)  # [E, n_way]
    assert (reduced.sum(-1) == round_half_up(severity / 5 * n_way)).all()
    # The first shot of every class and the labels are kept.
    assert torch.equal(shots[:, :, 0], ep.x_support.reshape(50, n_way, k_shot, -1)[:, :, 0])
    assert torch.equal(out.y_support, ep.y_support)


def test_class_imbalance_warns_that_one_shot_is_unchanged():
    ep = clean_episodes(3, 5, 1)
    with pytest.warns(UserWarning, match="1-shot"):
        out = REGISTRY.create("shift", "class-imbalance").apply(ep, 5, gen())
    assert_same(out, ep)


# --- documentation -------------------------------------------------------------------


def readme_row(shift_id: str) -> str:
    """The README table row of a shift, built from the code and the table above."""
    cls = REGISTRY.get("shift", shift_id)
    statistic, direction = STATISTICS[shift_id]
    levels = " / ".join(str(level).replace(" ", "") for level in cls.levels)
    arrow = "up" if direction == UP else "down"
    return f"| `{shift_id}` | {cls.parameter} | {levels} | {STATISTIC_NAMES[statistic]} ({arrow}) |"


@pytest.mark.parametrize("shift_id", SHIFTS)
def test_readme_documents_the_levels_and_statistic(shift_id):
    assert readme_row(shift_id) in README.read_text(encoding="utf-8"), (
        f"README.md is out of date for {shift_id}; its row should be:\n{readme_row(shift_id)}"
    )


# --- support-query shift ---------------------------------------------------------------


def test_support_query_shift_default_lists_are_disjoint_known_corruptions():
    from mrbench_shifts.support_query import QUERY_CORRUPTIONS, SUPPORT_CORRUPTIONS

    assert not set(SUPPORT_CORRUPTIONS) & set(QUERY_CORRUPTIONS)
    assert set(SUPPORT_CORRUPTIONS) | set(QUERY_CORRUPTIONS) == set(CORRUPTIONS)


@pytest.mark.parametrize(("options", "message"), [
    ({"support": ["jpeg", "fog"], "query": ["jpeg"]}, r"disjoint.*\['jpeg'\]"),
    ({"support": ["no-such-corruption"]}, r"unknown corruptions \['no-such-corruption'\]; known: gaussian-noise"),
    ({"query": []}, r"query lists no corruption"),
    ({"support": ["fog", "fog"]}, r"twice"),
])
def test_support_query_shift_rejects_bad_lists(options, message):
    with pytest.raises(OptionsError, match=message):
        REGISTRY.create("shift", "support-query-shift", options)


@pytest.mark.parametrize("severity", [1, 5])
def test_support_query_shift_applies_one_corruption_to_each_side(severity, episodes):
    # Deterministic corruptions, so the expected images do not depend on the draws.
    shift = REGISTRY.create("shift", "support-query-shift", {"support": ["contrast"], "query": ["jpeg"]})
    out = shift.apply(episodes, severity, gen(4))
    contrast, jpeg = REGISTRY.create("shift", "contrast"), REGISTRY.create("shift", "jpeg")
    torch.testing.assert_close(out.x_support, contrast.corrupt_images(episodes.x_support, severity, gen()))
    torch.testing.assert_close(out.x_query, jpeg.corrupt_images(episodes.x_query, severity, gen()))
    assert torch.equal(out.y_support, episodes.y_support) and torch.equal(out.y_query, episodes.y_query)


def test_support_query_shift_draws_a_pair_per_episode(episodes):
    shift = REGISTRY.create("shift", "support-query-shift", {"support": ["contrast", "pixelate"],
                                                               "query": ["jpeg", "brightness"]})
    support, query = shift.draw(N_EPISODES, gen(11))
    out = shift.apply(episodes, 3, gen(11))
    for e in range(N_EPISODES):
        s = REGISTRY.create("shift", support[e]).corrupt_images(episodes.x_support[e], 3, gen())
        q = REGISTRY.create("shift", query[e]).corrupt_images(episodes.x_query[e], 3, gen())
        torch.testing.assert_close(out.x_support[e], s)
        torch.testing.assert_close(out.x_query[e], q)
    # Over many episodes every corruption of each list is drawn, and a side never takes the other's.
    support, query = REGISTRY.create("shift", "support-query-shift").draw(2000, gen(0))
    from mrbench_shifts.support_query import QUERY_CORRUPTIONS, SUPPORT_CORRUPTIONS

    assert set(support) == set(SUPPORT_CORRUPTIONS) and set(query) == set(QUERY_CORRUPTIONS)
