from __future__ import annotations

import torch

from bench.components import EpisodeSpec, ImageSplit
from bench.episodes import SplitMix64, gather, make_manifest, sample_batch


def synthetic_split(n_classes: int = 30, per_class: int = 20, uneven: bool = False) -> ImageSplit:
    counts = [per_class - (c % 4 if uneven else 0) for c in range(n_classes)]
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    # Every image encodes (class, index) in its pixels so gathers can be checked.
    images = torch.zeros(len(labels), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = labels.to(torch.uint8)
    images[:, 0, 0, 1] = torch.arange(len(labels)) % 251
    return ImageSplit(images, labels, [f"c{c}" for c in range(n_classes)], revision="synthetic")


SPEC = EpisodeSpec(n_way=5, k_shot=2, n_query=3)
PINNED = "bcb431571819544d5225a4c62eeb3963a8172602a2ff9cfc9ab6b4ed9bcf1fa2"


def test_splitmix64_reference_values():
    # Reference outputs of SplitMix64 seeded with 0 (Steele, Lea & Flood 2014; Vigna's splitmix64.c).
    rng = SplitMix64(0)
    assert [rng.next() for _ in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_sample_is_distinct_and_in_range():
    rng = SplitMix64(7)
    for n, k in [(5, 5), (100, 10), (4112, 20)]:
        s = rng.sample(n, k)
        assert len(set(s)) == k and all(0 <= v < n for v in s)


def test_manifest_is_deterministic_and_seed_dependent():
    split = synthetic_split()
    a, b = make_manifest(split, SPEC, 50, seed=1), make_manifest(split, SPEC, 50, seed=1)
    assert a.sha256() == b.sha256()
    assert torch.equal(a.support, b.support) and torch.equal(a.query, b.query)
    assert make_manifest(split, SPEC, 50, seed=2).sha256() != a.sha256()


def test_manifest_episode_does_not_depend_on_episode_count():
    split = synthetic_split()
    short, long = make_manifest(split, SPEC, 10, seed=3), make_manifest(split, SPEC, 40, seed=3)
    assert torch.equal(long[:10].classes, short.classes) and torch.equal(long[:10].query, short.query)


def test_manifest_balance_classes_and_no_overlap():
    split = synthetic_split(uneven=True)
    m = make_manifest(split, SPEC, 200, seed=0)
    assert m.classes.shape == (200, 5) and m.support.shape == (200, 5, 2) and m.query.shape == (200, 5, 3)
    for e in range(200):
        assert len(set(m.classes[e].tolist())) == 5
        ids = torch.cat([m.support[e].flatten(), m.query[e].flatten()]).tolist()
        assert len(set(ids)) == len(ids), "support and query overlap"
        for i in range(5):
            assert (split.labels[m.support[e, i]] == m.classes[e, i]).all()
            assert (split.labels[m.query[e, i]] == m.classes[e, i]).all()
    # Over many episodes every class is used (uniform class draw).
    assert set(m.classes.flatten().tolist()) == set(range(30))


def test_manifest_hash_is_pinned():
    # If this changes, every published suite's manifest changes: bump suite versions instead.
    m = make_manifest(synthetic_split(), SPEC, 20, seed=0)
    assert m.sha256() == PINNED


def test_manifest_hash_ignores_device_and_int_width():
    m = make_manifest(synthetic_split(), SPEC, 5, seed=0)
    narrow = type(m)(m.spec, m.classes.int(), m.support.int(), m.query.int())
    assert narrow.sha256() == m.sha256()


def test_gather_batches_images_and_labels():
    split = synthetic_split()
    m = make_manifest(split, SPEC, 4, seed=0)
    ep = gather(split, m)
    assert ep.x_support.shape == (4, 10, 1, 28, 28) and ep.x_query.shape == (4, 15, 1, 28, 28)
    assert ep.x_support.dtype == torch.float32 and float(ep.x_support.max()) <= 1.0
    assert ep.y_support[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Label i is the manifest's i-th class: decode the class from the pixel.
    cls = (ep.x_query[:, :, 0, 0, 0] * 255).round().long()
    assert torch.equal(cls, m.classes.repeat_interleave(3, dim=1))


def test_sample_batch_draws_valid_training_episodes():
    split = synthetic_split(uneven=True)
    g = torch.Generator().manual_seed(0)
    ep = sample_batch(split, SPEC, 16, g)
    cls_s = (ep.x_support[:, :, 0, 0, 0] * 255).round().long().view(16, 5, 2)
    cls_q = (ep.x_query[:, :, 0, 0, 0] * 255).round().long().view(16, 5, 3)
    assert (cls_s == cls_s[..., :1]).all() and (cls_q == cls_s[..., :1]).all()
    assert all(len(set(cls_s[e, :, 0].tolist())) == 5 for e in range(16))
    again = sample_batch(split, SPEC, 16, torch.Generator().manual_seed(0))
    assert torch.equal(again.x_query, ep.x_query)
