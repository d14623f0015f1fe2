"""The real peer libraries, called the way their users call them, on mrbench's computation.

- **easyfsl** (ProtoNet, training and evaluation): ``easyfsl.methods.PrototypicalNetworks``
  around the conv4 ``nn.Module`` of ``test_throughput.PeerConv4``; per episode
  ``process_support_set`` then ``forward`` on the queries. One method is overridden:
  easyfsl scores queries by the *negative Euclidean* distance (``-torch.cdist``), mrbench's
  ProtoNet (and Snell et al.) by the *negative squared* one, so
  :func:`easyfsl_protonet` squares easyfsl's ``cdist``; everything else (features,
  prototypes through ``easyfsl.methods.utils.compute_prototypes``) is the library's.
- **higher** (MAML and first-order MAML): ``higher.innerloop_ctx`` with an SGD inner
  optimiser per task, as in higher's MAML example; first order through ``diffopt.step``'s
  ``grad_callback`` that detaches the inner gradients; evaluation with
  ``track_higher_grads=False`` and the query logits under ``no_grad``.
- **torchattacks** (PGD on the queries): ``torchattacks.PGD`` called once per episode on
  that episode's adapted learner as an ``nn.Module`` (:class:`bench.attacks.QueryModule`
  of one episode, the very learner mrbench attacks), as a user of torchattacks attacks
  one episode at a time.

learn2learn would be the natural MAML peer, but its 0.2.0 sdist does not build on
Python 3.11 (its pre-generated Cython C includes ``longintrepr.h``, which Python 3.11
moved; see ``benchmarks/README.md``), so it is not timed.

Each library is imported when a case needs it; a missing one skips its cases with the
install command (``pip install -r requirements-bench.txt``).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
from types import ModuleType
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.attacks import Victim
from bench.components import Episode

INSTALL = "pip install -r requirements-bench.txt"


def require(library: str) -> ModuleType:
    """Import ``library`` or skip the calling test, saying how to install it."""
    try:
        return importlib.import_module(library)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"peer library {library} is not installed ({exc}); {INSTALL}")


def available(library: str) -> bool:
    """Whether ``library`` can be imported here."""
    return importlib.util.find_spec(library) is not None


def version(library: str) -> str | None:
    """The installed distribution version of ``library`` (``None`` if unknown)."""
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return None


def library_of(variant: str) -> str:
    """The library a peer variant runs: ``higher+channels_last`` -> ``higher``."""
    return variant.split("+", 1)[0].split("/", 1)[0]


def _cl(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


# --------------------------------------------------------------------------- easyfsl


@functools.cache
def _squared_protonet_class() -> type:
    methods = require("easyfsl.methods")

    class SquaredEuclideanPrototypicalNetworks(methods.PrototypicalNetworks):
        """easyfsl's ProtoNet scoring with the negative *squared* Euclidean distance."""

        def l2_distance_to_prototypes(self, samples: Tensor) -> Tensor:
            return -torch.cdist(samples, self.prototypes).square()

    return SquaredEuclideanPrototypicalNetworks


def easyfsl_protonet(backbone: nn.Module) -> nn.Module:
    """easyfsl's ``PrototypicalNetworks`` on ``backbone`` (squared distances, see the module doc)."""
    return _squared_protonet_class()(backbone)


def easyfsl_meta_loss_backward(model: nn.Module, episodes: Episode, channels_last: bool = False) -> float:
    """Mean query cross-entropy over the episodes, one ``backward`` per episode."""
    E = episodes.x_support.shape[0]
    total = 0.0
    for e in range(E):
        xs, ys, xq, yq = episodes[e].tensors()
        model.process_support_set(_cl(xs, channels_last), ys)
        loss = F.cross_entropy(model(_cl(xq, channels_last)), yq) / E
        loss.backward()
        total += float(loss.detach())
    return total


def easyfsl_predict_episodes(model: nn.Module, episodes: Episode, channels_last: bool = False) -> Tensor:
    """Query logits ``[E, n_query_total, n_way]``, one episode at a time, without grad."""
    out = []
    with torch.no_grad():
        for e in range(episodes.x_support.shape[0]):
            xs, ys, xq, _ = episodes[e].tensors()
            model.process_support_set(_cl(xs, channels_last), ys)
            out.append(model(_cl(xq, channels_last)))
    return torch.stack(out)


# --------------------------------------------------------------------------- higher


def _detach_all(grads: Any) -> list[Tensor | None]:
    return [None if g is None else g.detach() for g in grads]


def higher_meta_loss_backward(model: nn.Module, inner_opt: torch.optim.Optimizer, episodes: Episode, *,
                              inner_steps: int, first_order: bool, channels_last: bool = False) -> float:
    """MAML's mean query loss with higher, one ``innerloop_ctx`` and one ``backward`` per task.

    :param inner_opt: SGD over ``model``'s parameters with the inner step size.
    :param first_order: detach the inner gradients (``grad_callback``): first-order MAML.
    """
    higher = require("higher")
    E = episodes.x_support.shape[0]
    total = 0.0
    for e in range(E):
        xs, ys, xq, yq = episodes[e].tensors()
        xs, xq = _cl(xs, channels_last), _cl(xq, channels_last)
        with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (fnet, diffopt):
            for _ in range(inner_steps):
                diffopt.step(F.cross_entropy(fnet(xs), ys), grad_callback=_detach_all if first_order else None)
            loss = F.cross_entropy(fnet(xq), yq) / E
            loss.backward()
        total += float(loss.detach())
    return total


def higher_predict_episodes(model: nn.Module, inner_opt: torch.optim.Optimizer, episodes: Episode, *,
                            inner_steps: int, channels_last: bool = False) -> Tensor:
    """MAML's query logits ``[E, n_query_total, n_way]`` with higher: ``inner_steps`` SGD
    steps on the support without tracking higher gradients, the queries without grad."""
    higher = require("higher")
    out = []
    for e in range(episodes.x_support.shape[0]):
        xs, ys, xq, _ = episodes[e].tensors()
        xs, xq = _cl(xs, channels_last), _cl(xq, channels_last)
        with higher.innerloop_ctx(model, inner_opt, track_higher_grads=False) as (fnet, diffopt):
            with torch.enable_grad():
                for _ in range(inner_steps):
                    diffopt.step(F.cross_entropy(fnet(xs), ys))
            with torch.no_grad():
                out.append(fnet(xq))
    return torch.stack(out)


# --------------------------------------------------------------------------- torchattacks


def torchattacks_pgd_per_episode(victim: Victim, episodes: Episode, *, eps: float, alpha: float, steps: int,
                                 random_start: bool, seed: int) -> Tensor:
    """Adversarial queries ``[E, Q, C, H, W]``: one ``torchattacks.PGD`` call per episode,
    on that episode's adapted learner (adapted on its clean support).

    torchattacks draws its random start from torch's global generator: it is seeded with
    ``seed`` inside ``torch.random.fork_rng``, so the caller's state is left alone.
    """
    torchattacks = require("torchattacks")
    E, Q = episodes.x_query.shape[:2]
    devices = [victim.device] if victim.device.type == "cuda" else []
    out = []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        for e in range(E):
            module = victim.query_module(episodes.x_support[e : e + 1], episodes.y_support[e : e + 1])
            module.n_queries = Q
            attack = torchattacks.PGD(module, eps=eps, alpha=alpha, steps=steps, random_start=random_start)
            attack.set_device(victim.device)
            out.append(attack(episodes.x_query[e], episodes.y_query[e]).detach())
    return torch.stack(out)
