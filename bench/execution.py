"""How the harness runs the pure ``adapt``/``predict`` over a batch of episodes.

The contract makes every algorithm ``vmap``-safe over the episode dim; whether
to ``vmap`` is the harness's choice per device, by measurement (PERF-NOTES): on
a few CPU cores a plain loop over episodes is faster and uses a fifth of the
memory, on a GPU chunked ``vmap`` removes per-episode launch overhead. An algorithm
that declares why it is not ``vmap``-safe (``vmap_unsafe``: code run as another library
wrote it) is looped whatever the plan says (:func:`for_algorithm`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    :param channels_last: run the loop's convolutions channels-last (images and 4-D
        parameters; see :func:`channels_last_params`). On the CPU it measured 1.4-2x in
        evaluation and 1.2-1.5x in training, second-order MAML included
        (benchmarks/results/cpu.md); ``vmap`` ignores it.
    """

    strategy: Strategy = "loop"
    chunk: int = 32
    channels_last: bool = False


def for_algorithm(ex: Execution, algorithm: Algorithm) -> Execution:
    """``ex``, or its loop form for an algorithm that declares itself not ``vmap``-safe
    (:attr:`bench.components.Algorithm.vmap_unsafe`)."""
    if ex.strategy == "vmap" and algorithm.vmap_unsafe:
        return replace(ex, strategy="loop")
    return ex


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


def to_channels_last(x: Tensor) -> Tensor:
    """``x`` with channels-last strides if it is 4-D (else unchanged), differentiably.

    ``Tensor.to(memory_format=...)`` restrides even a tensor whose layout is ambiguous:
    a 1-channel image batch or a ``[64, 1, 3, 3]`` filter is already "contiguous" in both
    formats, so ``.contiguous(memory_format=channels_last)`` returns it unchanged, the
    convolution sees no channels-last operand and every layer after it runs
    channels-first (measured: no gain at all on Omniglot, against 2x with the real
    layout).
    """
    return x.to(memory_format=torch.channels_last) if x.dim() == 4 else x


def channels_last_params(params: Params, ex: Execution) -> Params:
    """``params`` with every 4-D tensor (conv filters) channels-last when ``ex`` says so.

    The result stays differentiable with respect to ``params`` (training converts
    once per backward).
    """
    if not ex.channels_last:
        return params
    return {k: to_channels_last(v) for k, v in params.items()}


def _images(x: Tensor, ex: Execution) -> Tensor:
    return to_channels_last(x) if ex.channels_last else x


def predict_episodes(algorithm: Algorithm, params: Params, episodes: Episode, n_way: int, ex: Execution) -> Tensor:
    """Query logits ``[E, n_query_total, n_way]`` for a batch of episodes (no grad)."""
    E = episodes.x_support.shape[0]
    ex = for_algorithm(ex, algorithm)

    def one(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        state = algorithm.adapt(params, xs, ys, n_way=n_way)
        return algorithm.predict(params, state, xq)

    with torch.no_grad():
        if ex.strategy == "loop":
            params = channels_last_params(params, ex)
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
    ex = for_algorithm(ex, algorithm)
    total = 0.0
    if ex.strategy == "loop":
        for e in range(E):
            ep = episodes[e]
            if ex.channels_last:
                ep = Episode(_images(ep.x_support, ex), ep.y_support, _images(ep.x_query, ex), ep.y_query)
            loss = algorithm.loss(channels_last_params(params, ex), ep, n_way=n_way) / E
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
