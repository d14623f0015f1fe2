"""Episodes: fixed, seeded, hashed test manifests and random training batches.

A manifest lists, per episode, the class ids (in label order: class ``classes[e, i]``
gets label ``i``), the support image ids and the query image ids, all as indices into
one :class:`~bench.components.ImageSplit`. Test manifests are drawn with a small
counter-based generator of our own (SplitMix64) so they never change with the
numpy/torch/Python version; their sha256 is what a suite pins.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bench.components import Episode, EpisodeSpec, ImageSplit
from bench.errors import MrbenchError

_MASK = (1 << 64) - 1


class SplitMix64:
    """SplitMix64 (Steele et al. 2014): tiny, fast, and fixed forever."""

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Uniform integer in ``[0, n)`` (rejection sampling, no modulo bias)."""
        limit = (1 << 64) - ((1 << 64) % n)
        while True:
            v = self.next()
            if v < limit:
                return v % n

    def sample(self, n: int, k: int) -> list[int]:
        """``k`` distinct values from ``range(n)`` in random order (sparse Fisher-Yates)."""
        if k > n:
            raise ValueError(f"cannot draw {k} distinct items from {n}")
        swapped: dict[int, int] = {}
        out = []
        for i in range(k):
            j = i + self.below(n - i)
            out.append(swapped.get(j, j))
            swapped[j] = swapped.get(i, i)
        return out


def _episode_seed(seed: int, episode: int) -> int:
    # Each episode gets its own stream, so episode e is the same whatever n_episodes is.
    return int.from_bytes(hashlib.sha256(f"mrbench-episode:{seed}:{episode}".encode()).digest()[:8], "little")


@dataclass(frozen=True)
class Manifest:
    """A fixed episode set over one split.

    :param spec: the episode spec.
    :param classes: int64 ``[E, n_way]`` class ids; position ``i`` is label ``i``.
    :param support: int64 ``[E, n_way, k_shot]`` image ids into the split.
    :param query: int64 ``[E, n_way, n_query]`` image ids into the split.
    """

    spec: EpisodeSpec
    classes: Tensor
    support: Tensor
    query: Tensor

    @property
    def n_episodes(self) -> int:
        return int(self.classes.shape[0])

    def sha256(self) -> str:
        """Digest of the spec and every index, independent of device and dtype width."""
        h = hashlib.sha256()
        s = self.spec
        h.update(json.dumps({"n_way": s.n_way, "k_shot": s.k_shot, "n_query": s.n_query}, sort_keys=True).encode())
        for t in (self.classes, self.support, self.query):
            arr = np.ascontiguousarray(t.detach().cpu().numpy().astype("<i8"))
            h.update(str(arr.shape).encode())
            h.update(arr.tobytes())
        return h.hexdigest()

    def __getitem__(self, i: slice) -> "Manifest":
        return Manifest(self.spec, self.classes[i], self.support[i], self.query[i])

    def to(self, device: torch.device | str) -> "Manifest":
        return Manifest(self.spec, self.classes.to(device), self.support.to(device), self.query.to(device))

    def to_json(self) -> dict:
        return {
            "spec": {"n_way": self.spec.n_way, "k_shot": self.spec.k_shot, "n_query": self.spec.n_query},
            "classes": self.classes.tolist(),
            "support": self.support.tolist(),
            "query": self.query.tolist(),
            "sha256": self.sha256(),
        }


def make_manifest(split: ImageSplit, spec: EpisodeSpec, n_episodes: int, seed: int) -> Manifest:
    """Draw ``n_episodes`` fixed episodes from ``split`` (deterministic in ``seed``).

    Classes are drawn uniformly without replacement; within each class, ``k_shot +
    n_query`` distinct images are drawn, the first ``k_shot`` become the support, so
    support and query never overlap.
    """
    need = spec.k_shot + spec.n_query
    counts = split.counts.cpu().tolist()
    offsets = split.offsets.cpu().tolist()
    eligible = [c for c, n in enumerate(counts) if n >= need]
    if len(eligible) < spec.n_way:
        raise MrbenchError(
            f"Split has only {len(eligible)} classes with >= {need} images; a {spec.n_way}-way "
            f"{spec.k_shot}-shot episode with {spec.n_query} queries per class needs {spec.n_way}.",
            "Use fewer ways, shots or queries for this dataset.",
        )
    classes = np.empty((n_episodes, spec.n_way), dtype=np.int64)
    support = np.empty((n_episodes, spec.n_way, spec.k_shot), dtype=np.int64)
    query = np.empty((n_episodes, spec.n_way, spec.n_query), dtype=np.int64)
    for e in range(n_episodes):
        rng = SplitMix64(_episode_seed(seed, e))
        for i, ci in enumerate(rng.sample(len(eligible), spec.n_way)):
            c = eligible[ci]
            picks = [offsets[c] + j for j in rng.sample(counts[c], need)]
            classes[e, i] = c
            support[e, i] = picks[: spec.k_shot]
            query[e, i] = picks[spec.k_shot :]
    return Manifest(spec, torch.from_numpy(classes), torch.from_numpy(support), torch.from_numpy(query))


def gather(split: ImageSplit, manifest: Manifest) -> Episode:
    """Materialise manifest episodes as a batched :class:`Episode` ``[E, ...]``.

    Runs on whatever device ``split`` and ``manifest`` live on: one indexing op per
    tensor, no per-image Python.
    """
    spec = manifest.spec
    E = manifest.n_episodes
    dev = split.images.device
    sup = manifest.support.to(dev).reshape(E, -1)
    qry = manifest.query.to(dev).reshape(E, -1)
    labels = torch.arange(spec.n_way, device=dev)
    y_s = labels.repeat_interleave(spec.k_shot).expand(E, -1)
    y_q = labels.repeat_interleave(spec.n_query).expand(E, -1)
    return Episode(to_float(split.images[sup]), y_s.contiguous(), to_float(split.images[qry]), y_q.contiguous())


def to_float(images: Tensor) -> Tensor:
    """uint8 -> float32 in [0, 1]."""
    return images.to(torch.float32).div_(255.0)


def sample_batch(split: ImageSplit, spec: EpisodeSpec, n_episodes: int, generator: torch.Generator) -> Episode:
    """Random training episodes, drawn on the split's device as index tensors.

    Uses torch's generator (fast, reproducible for a given torch version); training
    episodes need not be stable across versions, test manifests do (see
    :func:`make_manifest`).
    """
    dev = split.images.device
    need = spec.k_shot + spec.n_query
    counts = split.counts.to(dev)
    eligible = torch.nonzero(counts >= need).squeeze(1)
    E, W = n_episodes, spec.n_way
    if eligible.numel() < W:
        raise MrbenchError(f"Split has only {eligible.numel()} classes with >= {need} images; need {W}.")
    gen_dev = generator.device
    keys = torch.rand(E, eligible.numel(), generator=generator, device=gen_dev).to(dev)
    cls = eligible[keys.argsort(dim=1)[:, :W]]  # [E, W]
    n_max = int(counts.max())
    r = torch.rand(E, W, n_max, generator=generator, device=gen_dev).to(dev)
    # Positions past a class's count sort last.
    r = torch.where(torch.arange(n_max, device=dev) < counts[cls].unsqueeze(-1), r, 2.0)
    pos = r.argsort(dim=-1)[..., :need]  # [E, W, need]
    idx = split.offsets.to(dev)[cls].unsqueeze(-1) + pos
    sup = idx[..., : spec.k_shot].reshape(E, -1)
    qry = idx[..., spec.k_shot :].reshape(E, -1)
    labels = torch.arange(W, device=dev)
    y_s = labels.repeat_interleave(spec.k_shot).expand(E, -1).contiguous()
    y_q = labels.repeat_interleave(spec.n_query).expand(E, -1).contiguous()
    return Episode(to_float(split.images[sup]), y_s, to_float(split.images[qry]), y_q)
