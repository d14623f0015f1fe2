"""How the harness runs the pure ``adapt``/``predict`` over a batch of episodes.

The contract makes every algorithm ``vmap``-safe over the episode dim; whether
to ``vmap`` is the harness's choice per device, by measurement (PERF-NOTES): on
a few CPU cores a plain loop over episodes is faster and uses a fifth of the
memory, on a GPU chunked ``vmap`` removes per-episode launch overhead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from bench.components import Algorithm, Episode, Params

Strategy = Literal["loop", "vmap"]


@dataclass(frozen=True)
class Execution:
    """An execution plan.

    :param strategy: ``loop`` (one episode at a time) or ``vmap`` (chunks of episodes).
    :param chunk: episodes per ``vmap`` call (bounds peak memory).
    :param channels_last: use channels-last images in evaluation (1.2-1.8x on CPU
        convolutions); not used in second-order training, where it measured slower.
    """

    strategy: Strategy = "loop"
    chunk: int = 32
    channels_last: bool = False


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def plan(device: torch.device, strategy: str = "auto", chunk: int | None = None) -> Execution:
    """The default execution plan for ``device`` (overridable by the caller)."""
    if strategy == "auto":
        strategy = "vmap" if device.type == "cuda" else "loop"
    return Execution(strategy=strategy, chunk=chunk or (64 if device.type == "cuda" else 8),
                     channels_last=device.type == "cpu")


def _images(x: Tensor, ex: Execution) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if ex.channels_last and x.dim() == 4 else x


def predict_episodes(algorithm: Algorithm, params: Params, episodes: Episode, n_way: int, ex: Execution) -> Tensor:
    """Query logits ``[E, n_query_total, n_way]`` for a batch of episodes (no grad)."""
    E = episodes.x_support.shape[0]

    def one(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        state = algorithm.adapt(params, xs, ys, n_way=n_way)
        return algorithm.predict(params, state, xq)

    with torch.no_grad():
        if ex.strategy == "loop":
            return torch.stack([
                one(_images(episodes.x_support[e], ex), episodes.y_support[e], _images(episodes.x_query[e], ex))
                for e in range(E)
            ])
        batched = torch.func.vmap(one)
        return torch.cat([
            batched(episodes.x_support[i : i + ex.chunk], episodes.y_support[i : i + ex.chunk], episodes.x_query[i : i + ex.chunk])
            for i in range(0, E, ex.chunk)
        ])


def meta_loss_backward(algorithm: Algorithm, params: Params, episodes: Episode, n_way: int, ex: Execution) -> float:
    """Mean meta-training loss over the batch; accumulates its gradient into ``params``.

    The loop path calls ``backward`` once per episode so only one episode's graph is
    alive at a time; the ``vmap`` path once per chunk.
    """
    E = episodes.x_support.shape[0]
    total = 0.0
    if ex.strategy == "loop":
        for e in range(E):
            loss = algorithm.loss(params, episodes[e], n_way=n_way) / E
            loss.backward()
            total += float(loss.detach())
        return total

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return algorithm.loss(params, Episode(xs, ys, xq, yq), n_way=n_way)

    batched = torch.func.vmap(one)
    for i in range(0, E, ex.chunk):
        loss = batched(*(t[i : i + ex.chunk] for t in episodes.tensors())).sum() / E
        loss.backward()
        total += float(loss.detach())
    return total
