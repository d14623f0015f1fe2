"""Throughput of mrbench's hot paths, side by side with the peer libraries and the machine's ceiling.

Every *group* is one computation, timed in one run by consecutive cases:

- ``mrbench``: the algorithm plugin through the harness's own code path. Training:
  ``bench.execution.meta_loss_backward`` + an Adam step, what
  ``bench.training.default_train_step`` does after sampling (the batch here is fixed,
  so sampling is not timed). Evaluation: ``bench.execution.predict_episodes`` with
  each execution strategy (loop, loop + channels-last images, chunked ``vmap``).
- ``peer``: the real peer library on the same computation (``benchmarks/peers.py``):
  easyfsl for ProtoNet, higher for MAML and first-order MAML, plain and with the model
  and images channels-last. ``eval-support protonet`` has no library peer: no library
  normalises the queries with the support set's BatchNorm statistics.
- ``reference``: the same computation re-implemented the way users of learn2learn
  (MAML: per task, clone the parameters, inner SGD step(s) with ``torch.autograd.grad``,
  query loss, backward) and easyfsl (ProtoNet: embed support and query with an
  ``nn.Module``, class means, negative squared Euclidean logits) write it: an
  ``nn.Module`` conv4 with ``nn.BatchNorm2d``, a plain Python loop over episodes. It is
  what the equal-computation check compares everything with.
- ``ceiling``: a plain supervised pass of the same conv4 ``nn.Module`` over as many
  images as one call of the group's computation touches (fwd + bwd + Adam for
  training, an inference forward for evaluation), one episode's worth at a time (and on
  CUDA also all in one batch), plain or channels-last: roughly the most this machine
  does with convolution work of that shape (see :func:`ceiling_workload`). The report
  compares achieved GFLOP/s with it (``benchmarks/flops.py``), since a second-order
  MAML step does more convolution work per image than a supervised pass.

Same computation: the peers use ``nn.BatchNorm2d`` in training mode without running
statistics (learn2learn's Omniglot CNN), so every forward normalises with its own
batch statistics; the mrbench algorithms therefore run with ``bn="batch"`` (the
original MAML convention). The group ``eval-support protonet`` times the protocol's
default instead, ``bn="support"``: queries normalised with the support set's batch
statistics, which the reference does with inference-mode ``F.batch_norm`` on the support's
mean and biased variance (:func:`peer_support_bn_embed`). Inner steps and step sizes come from the plugin's options
and the Adam learning rate from its ``train_defaults``. ``test_same_computation``
(not timed, float64) checks, for every case that is timed, that mrbench, the reference
and each peer library give the same loss and meta-gradients (training) or logits
(evaluation) on the same parameters and episodes; each timed case runs that check first
and fails without it.

Shapes: Omniglot images 1x28x28, 5-way 1-shot, 15 queries per class, random tensors
from fixed seeds; training batches of 32 episodes (2560 images a step) for every
algorithm, evaluation calls of 50 episodes (4000 images). MAML's own training
episodes use 1 query per class and ProtoNet's 60 ways (their ``train_defaults``);
one shape for all lets the groups and their ceilings be compared.

Each case stores in ``benchmark.extra_info``: its role and variant, the unit and
units per call (steps or episodes), images per call, the FLOPs of one call
(``flops``, ``flops_by_op``; counted once, untimed) and the peak memory of its
calls (see :class:`PeakMemory`). ``benchmarks/report.py`` turns the JSON into a
report; ``python -m benchmarks.run`` does both.
"""

from __future__ import annotations

import functools
import gc
import math
import resource
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bench.components import Algorithm, Episode, EpisodeSpec, Params
from bench.execution import Execution, meta_loss_backward, pick_device, plan, predict_episodes
from bench.plugins import get_registry
from benchmarks import peers
from benchmarks.flops import FlopCache

SPEC = EpisodeSpec(n_way=5, k_shot=1, n_query=15, image_shape=(1, 28, 28))
META_BATCH = 32
"""Episodes per training step (MAML's Omniglot meta-batch)."""
EVAL_EPISODES = 50
"""Episodes per evaluation call."""
SEED = 0
GUARD_EPISODES = 2
"""Episodes in each same-computation check (float64, not timed)."""
MRBENCH_OPTIONS = {"bn": "batch"}
"""Options of every mrbench algorithm here: batch-statistics BatchNorm, as ``nn.BatchNorm2d``
in training mode computes it in the peers."""
SUPPORT_BN_OPTIONS = {"bn": "support"}
"""Options of the ``eval-support`` group: the protocol's default BatchNorm (support statistics)."""

GROUPS: list[tuple[str, str]] = [
    ("train", "maml"),
    ("train", "fomaml"),
    ("train", "protonet"),
    ("eval", "protonet"),
    ("eval-support", "protonet"),
    ("eval", "maml"),
]
"""(kind, algorithm id) of every group, in run order."""

CHANNELS_LAST = torch.channels_last


# --------------------------------------------------------------------------- inputs


def random_episodes(n: int, spec: EpisodeSpec, seed: int, device: torch.device,
                    dtype: torch.dtype = torch.float32) -> Episode:
    """``n`` episodes of random images in [0, 1] with class-major labels (like ``sample_batch``)."""
    gen = torch.Generator().manual_seed(seed)
    c, h, w = spec.image_shape
    labels = torch.arange(spec.n_way)
    return Episode(
        torch.rand(n, spec.n_support, c, h, w, generator=gen, dtype=dtype),
        labels.repeat_interleave(spec.k_shot).expand(n, -1).contiguous(),
        torch.rand(n, spec.n_query_total, c, h, w, generator=gen, dtype=dtype),
        labels.repeat_interleave(spec.n_query).expand(n, -1).contiguous(),
    ).to(device)


def images_per_episode(spec: EpisodeSpec) -> int:
    return spec.n_support + spec.n_query_total


def make_algorithm(algo_id: str, kind: str = "train") -> Algorithm:
    """The registered mrbench algorithm with :data:`MRBENCH_OPTIONS` (the ``eval-support``
    group: :data:`SUPPORT_BN_OPTIONS`)."""
    return get_registry().create("algorithm", algo_id, SUPPORT_BN_OPTIONS if kind == "eval-support" else MRBENCH_OPTIONS)


def initial_params(algo: Algorithm, device: torch.device, dtype: torch.dtype = torch.float32,
                   requires_grad: bool = False) -> Params:
    """The algorithm's seeded initial parameters on ``device``."""
    init = algo.init(SPEC, torch.Generator().manual_seed(SEED))
    return {k: v.to(device=device, dtype=dtype).requires_grad_(requires_grad) for k, v in init.items()}


def sync(device: torch.device) -> None:
    """Wait for queued CUDA kernels, so a timed call measures the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- the peer


class PeerConv4(nn.Module):
    """conv4 as an ``nn.Module``: 4 x [conv3x3 64 + BatchNorm + ReLU + maxpool2] (+ a linear head).

    ``nn.BatchNorm2d(track_running_stats=False)``, as in learn2learn's Omniglot CNN: every
    forward normalises with its own batch statistics. Parameter names match mrbench's
    (``backbone.conv0.weight``, ..., ``head.weight``) so its parameters load directly.
    ``track_running_stats=True`` in eval mode is a trained supervised model (the attack ceiling).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, n_out: int | None = None,
                 track_running_stats: bool = False) -> None:
        super().__init__()
        layers: dict[str, nn.Module] = {}
        for i in range(4):
            layers[f"conv{i}"] = nn.Conv2d(in_channels if i == 0 else hidden, hidden, 3, padding=1)
            layers[f"bn{i}"] = nn.BatchNorm2d(hidden, track_running_stats=track_running_stats)
        self.backbone = nn.ModuleDict(layers)
        self.head = nn.Linear(hidden, n_out) if n_out is not None else None

    def forward(self, x: Tensor) -> Tensor:
        for i in range(4):
            x = self.backbone[f"conv{i}"](x)
            x = F.max_pool2d(F.relu(self.backbone[f"bn{i}"](x)), 2)
        x = x.flatten(1)
        return self.head(x) if self.head is not None else x


def peer_model(params: Params, channels_last: bool = False) -> PeerConv4:
    """A :class:`PeerConv4` holding copies of mrbench ``params`` (a fresh leaf per tensor)."""
    hidden = params["backbone.conv0.weight"].shape[0]
    n_out = params["head.weight"].shape[0] if "head.weight" in params else None
    ref = params["backbone.conv0.weight"]
    model = PeerConv4(ref.shape[1], hidden, n_out).to(device=ref.device, dtype=ref.dtype)
    model.load_state_dict({k: v.detach() for k, v in params.items()}, strict=True)
    return model.to(memory_format=CHANNELS_LAST) if channels_last else model


@dataclass(frozen=True)
class PeerSettings:
    """What the peer needs to repeat an mrbench algorithm's computation."""

    family: str  # "maml" or "protonet"
    inner_lr: float = 0.0
    inner_steps: int = 0
    inner_steps_test: int = 0
    first_order: bool = False
    support_bn: bool = False  # queries normalised with the support's statistics (ProtoNet only)


def peer_settings(algo: Algorithm) -> PeerSettings:
    """Read the inner loop of ``algo`` from its options (MAML family) or its BatchNorm
    statistics (ProtoNet)."""
    if algo.id in ("maml", "fomaml"):
        o = algo.options
        return PeerSettings("maml", o.inner_lr, o.inner_steps, o.inner_steps_test, bool(algo.first_order))
    if algo.id == "protonet":
        return PeerSettings("protonet", support_bn=algo.options.bn == "support")
    raise ValueError(f"no peer for algorithm {algo.id!r}")


def _to(x: Tensor, channels_last: bool) -> Tensor:
    return x.contiguous(memory_format=CHANNELS_LAST) if channels_last else x


def peer_maml_task_loss(model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, s: PeerSettings) -> Tensor:
    """learn2learn-style: clone the parameters, inner SGD step(s), query loss (differentiable)."""
    fast = {name: p.clone() for name, p in model.named_parameters()}
    for _ in range(s.inner_steps):
        loss = F.cross_entropy(functional_call(model, fast, (xs,)), ys)
        grads = torch.autograd.grad(loss, tuple(fast.values()), create_graph=not s.first_order)
        fast = {name: p - s.inner_lr * g for (name, p), g in zip(fast.items(), grads)}
    return F.cross_entropy(functional_call(model, fast, (xq,)), yq)


def peer_support_bn_embed(model: PeerConv4, xs: Tensor, xq: Tensor) -> tuple[Tensor, Tensor]:
    """Support and query features, each BatchNorm normalising the queries with the
    support's mean and biased variance (inference-mode ``F.batch_norm``) and the support
    with its own batch statistics."""
    hs, hq = xs, xq
    for i in range(4):
        conv, bn = model.backbone[f"conv{i}"], model.backbone[f"bn{i}"]
        hs, hq = conv(hs), conv(hq)
        mean, var = hs.mean((0, 2, 3)), hs.var((0, 2, 3), unbiased=False)
        hs = F.batch_norm(hs, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
        hq = F.batch_norm(hq, mean, var, bn.weight, bn.bias, False, 0.0, bn.eps)
        hs, hq = F.max_pool2d(F.relu(hs), 2), F.max_pool2d(F.relu(hq), 2)
    return hs.flatten(1), hq.flatten(1)


def peer_protonet_logits(model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, n_way: int,
                         support_bn: bool = False) -> Tensor:
    """easyfsl-style: embed support and query, class means, negative squared Euclidean distance."""
    zs, zq = peer_support_bn_embed(model, xs, xq) if support_bn else (model(xs), model(xq))
    prototypes = torch.stack([zs[ys == c].mean(0) for c in range(n_way)])
    return -(zq[:, None, :] - prototypes[None, :, :]).square().sum(-1)


def peer_meta_loss_backward(model: nn.Module, s: PeerSettings, episodes: Episode, n_way: int,
                            channels_last: bool = False) -> float:
    """Mean query loss over the episodes, one ``backward`` per episode (as learn2learn's examples)."""
    E = episodes.x_support.shape[0]
    total = 0.0
    for e in range(E):
        xs, ys, xq, yq = episodes[e].tensors()
        xs, xq = _to(xs, channels_last), _to(xq, channels_last)
        if s.family == "maml":
            loss = peer_maml_task_loss(model, xs, ys, xq, yq, s)
        else:
            loss = F.cross_entropy(peer_protonet_logits(model, xs, ys, xq, n_way), yq)
        loss = loss / E
        loss.backward()
        total += float(loss.detach())
    return total


def peer_maml_predict(model: nn.Module, xs: Tensor, ys: Tensor, xq: Tensor, s: PeerSettings) -> Tensor:
    """Evaluation: first-order inner steps with grad (the adapted weights only), query logits without."""
    with torch.enable_grad():
        fast = {name: p.detach().requires_grad_(True) for name, p in model.named_parameters()}
        for _ in range(s.inner_steps_test):
            loss = F.cross_entropy(functional_call(model, fast, (xs,)), ys)
            grads = torch.autograd.grad(loss, tuple(fast.values()))
            fast = {name: (p - s.inner_lr * g).detach().requires_grad_(True) for (name, p), g in zip(fast.items(), grads)}
    with torch.no_grad():
        return functional_call(model, fast, (xq,))


def peer_predict_episodes(model: nn.Module, s: PeerSettings, episodes: Episode, n_way: int,
                          channels_last: bool = False) -> Tensor:
    """Query logits ``[E, n_query_total, n_way]``, one episode at a time."""
    out = []
    with torch.no_grad():
        for e in range(episodes.x_support.shape[0]):
            xs, ys, xq, _ = episodes[e].tensors()
            xs, xq = _to(xs, channels_last), _to(xq, channels_last)
            if s.family == "maml":
                out.append(peer_maml_predict(model, xs, ys, xq, s))
            else:
                out.append(peer_protonet_logits(model, xs, ys, xq, n_way, s.support_bn))
    return torch.stack(out)


@dataclass
class PeerRunner:
    """A reference or peer-library implementation of one group's computation.

    :param model: the :class:`PeerConv4` whose parameters it trains (their ``.grad`` is
        the meta-gradient, under mrbench's parameter names).
    :param loss_backward: ``episodes -> mean query loss``, accumulating the meta-gradient.
    :param predict: ``episodes -> query logits [E, n_query_total, n_way]``.
    """

    model: PeerConv4
    loss_backward: Callable[[Episode], float]
    predict: Callable[[Episode], Tensor]


def peer_runner(role: str, variant: str, algo: Algorithm, params: Params) -> PeerRunner:
    """The ``reference`` (``plain``, ``channels_last``) or ``peer`` (``<library>[+channels_last]``)
    implementation of ``algo``'s computation, on a fresh copy of ``params``."""
    cl = variant.endswith("channels_last")
    model = peer_model(params, channels_last=cl)
    s = peer_settings(algo)
    n_way = SPEC.n_way
    if role == "reference":
        return PeerRunner(model, lambda ep: peer_meta_loss_backward(model, s, ep, n_way, channels_last=cl),
                          lambda ep: peer_predict_episodes(model, s, ep, n_way, channels_last=cl))
    lib = peers.library_of(variant)
    if lib == "easyfsl" and s.family == "protonet" and not s.support_bn:
        net = peers.easyfsl_protonet(model)
        return PeerRunner(model, lambda ep: peers.easyfsl_meta_loss_backward(net, ep, channels_last=cl),
                          lambda ep: peers.easyfsl_predict_episodes(net, ep, channels_last=cl))
    if lib == "higher" and s.family == "maml":
        inner_opt = torch.optim.SGD(model.parameters(), lr=s.inner_lr)
        return PeerRunner(
            model,
            lambda ep: peers.higher_meta_loss_backward(model, inner_opt, ep, inner_steps=s.inner_steps,
                                                       first_order=s.first_order, channels_last=cl),
            lambda ep: peers.higher_predict_episodes(model, inner_opt, ep, inner_steps=s.inner_steps_test,
                                                     channels_last=cl))
    raise ValueError(f"no {role} {variant!r} for algorithm {algo.id!r} ({s})")


# --------------------------------------------------------------------------- variants


def execution(name: str) -> Execution:
    """``loop``, ``loop+channels_last`` or ``vmap/<chunk>`` -> the :class:`Execution`."""
    if name == "loop":
        return Execution("loop", channels_last=False)
    if name == "loop+channels_last":
        return Execution("loop", channels_last=True)
    if name.startswith("vmap/"):
        return Execution("vmap", chunk=int(name.split("/", 1)[1]), channels_last=False)
    raise ValueError(f"unknown execution variant {name!r}")


def execution_name(ex: Execution, n_episodes: int) -> str:
    """The variant name of ``ex`` over ``n_episodes`` (``vmap`` ignores ``channels_last``;
    a chunk of at least ``n_episodes`` is one call over all of them)."""
    if ex.strategy == "loop":
        return "loop+channels_last" if ex.channels_last else "loop"
    return f"vmap/{min(ex.chunk, n_episodes)}"


def train_plan(device: torch.device) -> str:
    """What ``bench.training.train`` runs on ``device`` (the device's plan)."""
    return execution_name(plan(device), META_BATCH)


def eval_plan(device: torch.device) -> str:
    """What evaluation runs on ``device`` by default."""
    return execution_name(plan(device), EVAL_EPISODES)


PEER_LIBRARY: dict[tuple[str, str], str] = {
    ("train", "maml"): "higher",
    ("train", "fomaml"): "higher",
    ("train", "protonet"): "easyfsl",
    ("eval", "protonet"): "easyfsl",
    ("eval", "maml"): "higher",
}
"""The real peer library of each group (``benchmarks/peers.py``); a group without one has no
``peer`` cases (``eval-support``: no library normalises queries with the support's statistics)."""


def ceiling_variants(device: torch.device, per_episode: int) -> list[str]:
    """The ceiling's variants: ``per_episode`` images at a time, plain and channels-last, and
    on CUDA also all images in one batch. On 2 CPU cores one batch was 0.24-0.61 of the
    per-episode channels-last rate in every group of the 4-pass run (results/cpu-paired.md),
    so it is not timed there."""
    per = f"batch={per_episode}"
    variants = [per, per + "+channels_last"]
    return (["batch=all", "batch=all+channels_last"] + variants) if device.type == "cuda" else variants


def variants(kind: str, role: str, device: torch.device, algo: str = "") -> list[str]:
    """The variants timed for one (kind, role) of ``algo`` on ``device``."""
    if role == "mrbench" and kind == "train":
        # The harness's choice, and the plain loop next to it (on the CPU: the loop without
        # channels-last). On the CPU vmap is 1.5x slower with ~5x the memory (PERF-NOTES),
        # so it is not timed there.
        default = train_plan(device)
        return [default] + (["loop"] if default != "loop" else [])
    if role == "mrbench":
        return ["loop", "loop+channels_last", "vmap/8", f"vmap/{EVAL_EPISODES}"]
    if role == "peer":
        # Channels-last (model and images) is a user's cheapest speed-up: it slowed
        # second-order MAML training (0.78x, PERF-NOTES) but sped up ProtoNet 1.5-2x.
        lib = PEER_LIBRARY.get((kind, algo))
        return [lib, lib + "+channels_last"] if lib else []
    if role == "reference":
        return ["plain", "channels_last"]
    return ceiling_variants(device, images_per_episode(SPEC))


@dataclass(frozen=True)
class Case:
    """One timed case: a variant of one role in one group."""

    kind: str  # "train" | "eval" | "eval-support"
    algo: str
    role: str  # "mrbench" | "peer" | "reference" | "ceiling"
    variant: str

    @property
    def group(self) -> str:
        return f"{self.kind} {self.algo}"

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.algo}-{self.role}-{self.variant}"


def all_cases(device: torch.device) -> list[Case]:
    """Every case, group by group so that a group's cases run side by side."""
    return [Case(kind, algo, role, v)
            for kind, algo in GROUPS
            for role in ("mrbench", "peer", "reference", "ceiling")
            for v in variants(kind, role, device, algo)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        cases = all_cases(pick_device(metafunc.config.getoption("--bench-device")))
        metafunc.parametrize("case", cases, ids=[c.id for c in cases])


# --------------------------------------------------------------------------- workloads


@dataclass
class Workload:
    """A timed function and what one call of it does.

    :param fn: the timed call (synchronises CUDA before it returns).
    :param unit: what a call produces (``step`` or ``episode``).
    :param units_per_call: how many of them.
    :param images_per_call: images that pass through the backbone's input per call
        (support + query of every episode; the ceiling's batch).
    :param info: more description for the report.
    """

    fn: Callable[[], Any]
    unit: str
    units_per_call: int
    images_per_call: int
    info: dict[str, Any] = field(default_factory=dict)


def _algo_info(algo: Algorithm) -> dict[str, Any]:
    s = peer_settings(algo)
    info: dict[str, Any] = {"algorithm_options": algo.options.model_dump(mode="json")}
    if s.family == "maml":
        info.update(inner_lr=s.inner_lr, inner_steps=s.inner_steps, inner_steps_test=s.inner_steps_test,
                    first_order=s.first_order)
    return info


def ceiling_workload(case: Case, n_images: int, device: torch.device, lr: float = 1e-3,
                     episodes: int = EVAL_EPISODES) -> Workload:
    """The ceiling of a group: a plain supervised pass of :class:`PeerConv4` over ``n_images``.

    Training: forward, cross-entropy, backward and one Adam step (with a 5-way head).
    Evaluation: inference forward of the backbone. The variant ``batch=all`` puts every
    image in one batch; ``batch=<n>`` goes through them ``n`` at a time (one episode's
    worth; training accumulates the gradients before its one Adam step), which measured
    faster on 2 CPU cores; ``+channels_last`` converts the model and the images to
    channels-last. The report measures against the fastest variant.
    """
    spec, _, cl = case.variant.partition("+")
    size = spec.removeprefix("batch=")
    batch = n_images if size == "all" else int(size)
    cl_flag = cl == "channels_last"
    gen = torch.Generator().manual_seed(SEED + 2)
    x = _to(torch.rand(n_images, *SPEC.image_shape, generator=gen).to(device), cl_flag)
    chunks = [(i, min(i + batch, n_images)) for i in range(0, n_images, batch)]
    info = {"batch": batch}

    if case.kind == "train":
        y = torch.randint(0, SPEC.n_way, (n_images,), generator=gen).to(device)
        model = PeerConv4(SPEC.image_shape[0], n_out=SPEC.n_way).to(device)
        model = model.to(memory_format=CHANNELS_LAST) if cl_flag else model
        opt = torch.optim.Adam(model.parameters(), lr=lr)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            for a, b in chunks:
                (F.cross_entropy(model(x[a:b]), y[a:b]) * ((b - a) / n_images)).backward()
            opt.step()
            sync(device)

        return Workload(step, "step", 1, n_images, {**info, "adam_lr": lr})

    model = PeerConv4(SPEC.image_shape[0]).to(device)
    model = model.to(memory_format=CHANNELS_LAST) if cl_flag else model

    def forward() -> None:
        with torch.inference_mode():
            for a, b in chunks:
                model(x[a:b])
        sync(device)

    return Workload(forward, "episode", episodes, n_images, info)


def train_workload(case: Case, device: torch.device) -> Workload:
    """One meta-training step (mrbench, peer) or a supervised step of as many images (ceiling)."""
    algo = make_algorithm(case.algo)
    lr = algo.train_defaults(SPEC).lr
    n_images = META_BATCH * images_per_episode(SPEC)
    info = {**_algo_info(algo), "adam_lr": lr, "meta_batch": META_BATCH}

    if case.role == "ceiling":
        return ceiling_workload(case, n_images, device, lr)

    episodes = random_episodes(META_BATCH, SPEC, SEED + 1, device)
    params = initial_params(algo, device, requires_grad=True)
    if case.role == "mrbench":
        ex = execution(case.variant)
        opt = torch.optim.Adam(algo.param_groups(params), lr=lr)

        def step() -> float:
            # bench.training.default_train_step, minus sampling the batch.
            opt.zero_grad(set_to_none=True)
            loss = meta_loss_backward(algo, params, episodes, SPEC.n_way, ex)
            opt.step()
            sync(device)
            return loss

        return Workload(step, "step", 1, n_images, {**info, "default_plan": case.variant == train_plan(device)})

    runner = peer_runner(case.role, case.variant, algo, params)
    opt = torch.optim.Adam(runner.model.parameters(), lr=lr)

    def peer_step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = runner.loss_backward(episodes)
        opt.step()
        sync(device)
        return loss

    return Workload(peer_step, "step", 1, n_images, info)


def eval_workload(case: Case, device: torch.device) -> Workload:
    """Query logits of :data:`EVAL_EPISODES` clean episodes (mrbench, peer), or one
    inference forward over as many images (ceiling)."""
    algo = make_algorithm(case.algo, case.kind)
    n_images = EVAL_EPISODES * images_per_episode(SPEC)

    if case.role == "ceiling":
        return ceiling_workload(case, n_images, device)

    episodes = random_episodes(EVAL_EPISODES, SPEC, SEED + 3, device)
    params = initial_params(algo, device)
    info = {**_algo_info(algo), "episodes": EVAL_EPISODES}
    if case.role == "mrbench":
        ex = execution(case.variant)

        def predict() -> None:
            predict_episodes(algo, params, episodes, SPEC.n_way, ex)
            sync(device)

        return Workload(predict, "episode", EVAL_EPISODES, n_images,
                        {**info, "default_plan": case.variant == eval_plan(device)})

    runner = peer_runner(case.role, case.variant, algo, params)

    def peer_predict() -> None:
        runner.predict(episodes)
        sync(device)

    return Workload(peer_predict, "episode", EVAL_EPISODES, n_images, info)


# --------------------------------------------------------------------------- memory


def _proc_status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_rss_peak() -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _ru_maxrss_kib() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Peak memory while a block runs.

    CPU: the process's resident-set high-water mark. On Linux it is reset at the start
    of the block (``/proc/self/clear_refs``), so it is this block's peak, inputs and
    everything else resident included; elsewhere it falls back to ``ru_maxrss``, the
    peak since the process started (``peak_rss_method`` says which). ``tracemalloc``
    is not used: it sees Python's allocator only, not tensor storage.
    CUDA: also ``torch.cuda.max_memory_allocated`` over the block.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.info: dict[str, Any] = {}

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self._reset = _reset_rss_peak() and _proc_status_kib("VmHWM") is not None
        self._rss_before = _proc_status_kib("VmRSS")
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        peak_kib = _proc_status_kib("VmHWM") if self._reset else _ru_maxrss_kib()
        self.info = {
            "peak_rss_mb": round(peak_kib / 1024, 1) if peak_kib is not None else None,
            "rss_before_mb": round(self._rss_before / 1024, 1) if self._rss_before is not None else None,
            "peak_rss_method": "VmHWM reset per case" if self._reset else "ru_maxrss since process start",
        }
        if self.device.type == "cuda":
            self.info["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)


# --------------------------------------------------------------------------- same computation


def _close(a: Tensor, b: Tensor, rtol: float = 1e-9, scale: float | None = None) -> tuple[bool, float]:
    """Whether ``a`` matches ``b`` up to ``rtol`` of ``scale`` (default: ``b``'s largest
    magnitude); also the error relative to that scale."""
    scale = scale if scale is not None else float(b.abs().max())
    err = float((a - b).abs().max()) / (scale or 1.0)
    return err <= rtol, err


def _compared_variants(kind: str, algo_id: str, device: torch.device) -> list[tuple[str, str]]:
    """(role, variant) of every timed case the check compares with the plain reference;
    a peer whose library is not installed is left out (its timed cases skip)."""
    out = [("mrbench", v) for v in variants(kind, "mrbench", device)]
    out += [("reference", v) for v in variants(kind, "reference", device) if v != "plain"]
    out += [("peer", v) for v in variants(kind, "peer", device, algo_id) if peers.available(peers.library_of(v))]
    return out


@functools.cache
def _same_computation(kind: str, algo_id: str, device_str: str) -> str | None:
    """Compare mrbench, the reference and the peer libraries in float64 on the same
    parameters and episodes, for every variant that is timed on ``device``; ``None`` if
    all agree with the plain reference, else the mismatches."""
    device = torch.device(device_str)
    algo = make_algorithm(algo_id, kind)
    episodes = random_episodes(GUARD_EPISODES, SPEC, SEED + 4, device, torch.float64)
    params = initial_params(algo, device, torch.float64)
    ref = peer_runner("reference", "plain", algo, params)
    problems = []
    if kind == "train":
        ref_loss = ref.loss_backward(episodes)
        ref_grads = {k: p.grad for k, p in ref.model.named_parameters()}
        # Relative to the largest meta-gradient entry of any tensor: a conv bias followed by
        # batch-statistics BatchNorm has an exactly-zero gradient, i.e. rounding noise.
        scale = max(float(g.abs().max()) for g in ref_grads.values())
        if scale == 0.0:
            problems.append("the reference's meta-gradient is zero")
        for role, v in _compared_variants(kind, algo_id, device):
            if role == "mrbench":
                leaves = initial_params(algo, device, torch.float64, requires_grad=True)
                loss = meta_loss_backward(algo, leaves, episodes, SPEC.n_way, execution(v))
                grads = {k: p.grad for k, p in leaves.items()}
            else:
                runner = peer_runner(role, v, algo, params)
                loss = runner.loss_backward(episodes)
                grads = {k: p.grad for k, p in runner.model.named_parameters()}
            if abs(loss - ref_loss) > 1e-9 * max(1.0, abs(ref_loss)):
                problems.append(f"{role} {v}: loss {loss!r} != reference {ref_loss!r}")
            for k, g in ref_grads.items():
                ok, err = _close(grads[k], g, rtol=1e-8, scale=scale) if grads.get(k) is not None else (False, math.inf)
                if not ok:
                    problems.append(f"{role} {v}: meta-gradient of {k} differs from the reference's by {err:.2e}")
    else:
        ref_logits = ref.predict(episodes)
        for role, v in _compared_variants(kind, algo_id, device):
            if role == "mrbench":
                logits = predict_episodes(algo, params, episodes, SPEC.n_way, execution(v))
            else:
                logits = peer_runner(role, v, algo, params).predict(episodes)
            ok, err = _close(logits, ref_logits)
            if not ok:
                problems.append(f"{role} {v}: logits differ from the reference's by {err:.2e} (relative)")
    return "; ".join(problems) or None


@pytest.mark.parametrize("kind,algo_id", GROUPS, ids=[f"{k}-{a}" for k, a in GROUPS])
def test_same_computation(kind: str, algo_id: str, bench_cfg) -> None:
    """mrbench, the reference and the peer libraries compute the same thing (float64; not timed)."""
    problem = _same_computation(kind, algo_id, str(bench_cfg.device))
    assert problem is None, problem


# --------------------------------------------------------------------------- the benchmark


WORKLOADS: dict[str, Callable[[Case, torch.device], Workload]] = {
    "train": train_workload, "eval": eval_workload, "eval-support": eval_workload}


def time_case(benchmark, cfg, flop_cache: FlopCache, *, kind: str, algo: str, role: str, variant: str,
              work: Workload) -> None:
    """Count one call's FLOPs (once per case and run, untimed), then time ``work`` with
    pytest-benchmark; the case's description, FLOPs and peak memory go to ``extra_info``."""
    device = cfg.device
    if role == "peer":
        lib = peers.library_of(variant)
        work.info.update(library=lib, library_version=peers.version(lib))
    benchmark.group = f"{kind} {algo}"
    benchmark.extra_info.update(
        kind=kind, algorithm=algo, role=role, variant=variant,
        unit=work.unit, units_per_call=work.units_per_call, images_per_call=work.images_per_call,
        shape=f"{SPEC.n_way}w{SPEC.k_shot}s{SPEC.n_query}q", image_shape=list(SPEC.image_shape),
        device=str(device), torch_threads=torch.get_num_threads(), **work.info,
    )
    benchmark.extra_info.update(flop_cache.get(f"{device.type}/{kind}/{algo}/{role}/{variant}", work.fn))
    with PeakMemory(device) as mem:
        benchmark.pedantic(work.fn, rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds, iterations=1)
    benchmark.extra_info.update(mem.info)


def test_throughput(benchmark, bench_cfg, flop_cache, case: Case) -> None:
    """Time one case; record its rate denominators, FLOPs and peak memory in ``extra_info``."""
    device = bench_cfg.device
    problem = _same_computation(case.kind, case.algo, str(device))
    if problem is not None:
        pytest.fail(f"not timed: the implementations disagree ({problem})")
    work = WORKLOADS[case.kind](case, device)
    time_case(benchmark, bench_cfg, flop_cache, kind=case.kind, algo=case.algo, role=case.role,
              variant=case.variant, work=work)
