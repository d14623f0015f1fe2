"""How the harness runs the pure ``adapt``/``predict`` over a batch of episodes.

The contract makes every algorithm ``vmap``-safe over the episode dim; whether
to ``vmap`` is the harness's choice per device, by measurement
(benchmarks/results/cpu.md): on a few CPU cores a plain loop over episodes is faster
and uses a fifth of the memory, on a GPU chunked ``vmap`` removes per-episode launch
overhead. An algorithm that declares why it is not ``vmap``-safe (``vmap_unsafe``: code
run as another library wrote it) is looped whatever the plan says (:func:`for_algorithm`).

:func:`episode_blocks` (and :func:`map_episodes` over it) is the one place that makes
the loop/``vmap`` choice, chunks and lays out images: evaluation, the default training
step, the attacks' :class:`bench.attacks.Victim` and algorithms' own training steps
all run through it. A new strategy is a new ``Strategy`` value and a branch there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

import torch
from torch import Tensor

from bench.components import Algorithm, Episode, Params
from bench.nn import batch_norm_mode

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
    if ex.strategy != "loop" and algorithm.vmap_unsafe:
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
    """``params`` with every 4-D tensor (conv filters) channels-last when ``ex`` loops
    channels-last (``vmap`` ignores the layout: unchanged).

    The result stays differentiable with respect to ``params`` (training converts
    once per backward).
    """
    if not ex.channels_last or ex.strategy != "loop":
        return params
    return {k: to_channels_last(v) for k, v in params.items()}


def episodes_per_graph(ex: Execution, n_episodes: int) -> int:
    """How many episodes an iterative attack puts on one autograd graph by default: one
    under ``loop`` (the episodes run one by one anyway, and one graph over many of them
    only adds memory traffic), all ``n_episodes`` under ``vmap`` (:func:`map_episodes`
    then splits them into chunks of ``ex.chunk``)."""
    return 1 if ex.strategy == "loop" else n_episodes


Batched = Any
"""An argument of :func:`map_episodes`: a tensor (or a dict/tuple/list of tensors)
with a leading episode dim, or a Python ``list`` with one item per episode (e.g. the
adapted states of :meth:`bench.attacks.Victim.adapt`)."""


def map_episodes(fn: Callable[..., Any], ex: Execution, *batched: Batched) -> Any:
    """``fn`` over every episode of ``batched``, as ``ex`` says: the outputs of
    :func:`episode_blocks` concatenated along a leading episode dim.

    :param fn: the per-episode function; one argument per ``batched``, each the
        episode's slice; it returns a tensor or a dict/tuple/list of tensors.
    :param ex: the execution plan.
    :param batched: the per-episode arguments (see :data:`Batched`).
    :returns: ``fn``'s output with a leading episode dim on every tensor.
    """
    return _tree_zip(torch.cat, list(episode_blocks(fn, ex, *batched)))


def episode_blocks(fn: Callable[..., Any], ex: Execution, *batched: Batched) -> Iterator[Any]:
    """``fn`` over the episodes of ``batched``, one block of episodes at a time: the one
    place that chooses between a loop and ``vmap``.

    - ``loop``: one episode per block, ``fn`` called on its slices (episode images, the
      5-D tensor arguments, channels-last when ``ex.channels_last``);
    - ``vmap``: ``ex.chunk`` episodes per block, through ``torch.func.vmap(fn)`` with the
      batch-norm form that is exact under ``vmap`` (:func:`bench.nn.batch_norm_mode`).

    Each block's output has ``fn``'s structure with a leading dim of the block's episodes
    on every tensor, so a caller can reduce or backpropagate block by block (only one
    block's autograd graph alive at a time) whatever the strategy. The plan is taken as
    given: resolve it with :func:`for_algorithm` first.

    :param fn: the per-episode function (see :func:`map_episodes`).
    :param ex: the execution plan.
    :param batched: the per-episode arguments (see :data:`Batched`).
    """
    n = _n_episodes(batched)
    if ex.strategy == "vmap":
        vmapped = torch.func.vmap(fn)
        for i in range(0, n, ex.chunk):
            args = [_tree_zip(torch.stack, b[i : i + ex.chunk]) if isinstance(b, list)
                    else _tree_map(lambda t: t[i : i + ex.chunk], b) for b in batched]
            with batch_norm_mode("hand"):
                out = vmapped(*args)
            yield out
        return
    for e in range(n):
        args = [b[e] if isinstance(b, list) else _tree_map(lambda t: _episode_slice(t, e, ex), b) for b in batched]
        yield _tree_map(lambda t: t.unsqueeze(0), fn(*args))


def unbind_episodes(blocks: Iterable[Any]) -> list[Any]:
    """The per-episode items of :func:`episode_blocks`' blocks (the inverse of a ``list``
    argument): every tensor indexed by its episode, other values kept."""
    items = []
    for block in blocks:
        size = _block_size(block)
        items.extend(_tree_map(lambda t, j=j: t[j], block) for j in range(size))
    return items


def _episode_slice(t: Tensor, e: int, ex: Execution) -> Tensor:
    """Episode ``e`` of ``t`` for the loop: channels-last if it is an image batch and ``ex`` says so."""
    return to_channels_last(t[e]) if ex.channels_last and t.dim() == 5 else t[e]


def _n_episodes(batched: Sequence[Batched]) -> int:
    if not batched:
        raise ValueError("map_episodes needs at least one batched argument")
    first = batched[0]
    if isinstance(first, list):
        return len(first)
    return _block_size(first)


def _block_size(tree: Any) -> int:
    """The leading dim of the first tensor in ``tree``."""
    if isinstance(tree, Tensor):
        return tree.shape[0]
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, (tuple, list)) else ()
    for child in children:
        try:
            return _block_size(child)
        except ValueError:
            continue
    raise ValueError("no tensor to read the episode count from")


def _tree_map(f: Callable[[Tensor], Tensor], tree: Any) -> Any:
    """``f`` on every tensor of a dict/tuple/list tree (named tuples keep their type); other
    values unchanged."""
    if isinstance(tree, Tensor):
        return f(tree)
    if isinstance(tree, dict):
        return {k: _tree_map(f, v) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*(_tree_map(f, v) for v in tree))
    if isinstance(tree, (tuple, list)):
        return type(tree)(_tree_map(f, v) for v in tree)
    return tree


def _tree_zip(f: Callable[[list[Tensor]], Tensor], trees: Sequence[Any]) -> Any:
    """``f`` on the lists of corresponding tensors of same-structured ``trees``."""
    first = trees[0]
    if isinstance(first, Tensor):
        return f(list(trees))
    if isinstance(first, dict):
        return {k: _tree_zip(f, [t[k] for t in trees]) for k in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(_tree_zip(f, [t[i] for t in trees]) for i in range(len(first))))
    if isinstance(first, (tuple, list)):
        return type(first)(_tree_zip(f, [t[i] for t in trees]) for i in range(len(first)))
    return first


def predict_episodes(algorithm: Algorithm, params: Params, episodes: Episode, n_way: int, ex: Execution) -> Tensor:
    """Query logits ``[E, n_query_total, n_way]`` for a batch of episodes (no grad)."""
    ex = for_algorithm(ex, algorithm)
    params = channels_last_params(params, ex)

    def one(xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        state = algorithm.adapt(params, xs, ys, n_way=n_way)
        return algorithm.predict(params, state, xq)

    with torch.no_grad():
        return map_episodes(one, ex, episodes.x_support, episodes.y_support, episodes.x_query)


def meta_loss_backward(algorithm: Algorithm, params: Params, episodes: Episode, n_way: int, ex: Execution) -> float:
    """Mean meta-training loss over the batch; accumulates its gradient into ``params``.

    One ``backward`` per block of :func:`episode_blocks`, so only one block's graph is
    alive at a time (one episode under ``loop``, a chunk under ``vmap``).
    """
    E = episodes.x_support.shape[0]
    ex = for_algorithm(ex, algorithm)

    def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        return algorithm.loss(channels_last_params(params, ex), Episode(xs, ys, xq, yq), n_way=n_way)

    total = 0.0
    for losses in episode_blocks(one, ex, *episodes.tensors()):
        loss = losses.sum() / E
        loss.backward()
        total += float(loss.detach())
    return total
