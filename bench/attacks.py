"""Attack protocols: what part of an episode is attacked, and the harness's checks.

An attack plugin (:class:`bench.components.Attack`) gets a :class:`Victim` (the
algorithm, its meta-parameters and ``n_way``, run the harness's way), a batch of
clean episodes, an ``eps`` and a target:

``query``   evasion: the learner adapts on the clean support set; the queries are
            perturbed against the adapted learner (held fixed).
``support`` poisoning: the support set (all of it, or a fraction) is perturbed so
            that the learner, adapting on it, misclassifies the clean queries; the
            gradient goes *through* ``adapt``.
``both``    support and queries perturbed jointly, through adaptation.

After every ``perturb`` the harness checks (:func:`check_perturbation`) that the
result stays inside the eps ball and [0, 1], that labels and the untargeted part
are untouched and that the clean episode was not mutated; a violation is a
:class:`bench.errors.MrbenchError` naming the attack.

This module also holds the batched PGD engine mrbench's own attacks use
(:func:`pgd`) and the attack-strength sanity checks (:func:`sanity_checks`).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bench.components import Algorithm, Episode, Params
from bench.errors import MrbenchError
from bench.execution import (Execution, channels_last_params, episode_blocks, episodes_per_graph, for_algorithm,
                             map_episodes, unbind_episodes)
from bench.protocol.sanity import DEFAULT as DEFAULT_REFERENCES
from bench.protocol.sanity import SanityReferences
from bench.protocol.scenarios import TARGETS, AttackCell, check_attack, format_eps, perturbs

if TYPE_CHECKING:
    from bench.components import Attack

def combine_ensemble(target: str, members: Sequence[Tensor]) -> Tensor:
    """Per-query correctness ``[E, Q]`` under an ensemble of attacks, from each member's.

    ``query``: a query is robust only if every member fails on it (the per-query
    union of successes): an evasion attacker perturbs each query on its own, so it
    may pick a different attack for every query.

    ``support`` and ``both``: an attacker poisons the support set *once* per episode,
    so the episode's result is that of its worst single member (the one leaving the
    fewest queries correct; the first such member on a tie). The per-query union would
    merge the outcomes of different poisoned support sets, which no attacker can
    achieve, and under-report the accuracy.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    stacked = torch.stack(list(members))  # [M, E, Q]
    if target == "query":
        return stacked.all(0)
    _check_target(target)
    worst = stacked.sum(-1).argmin(0)  # [E]: first member with the fewest correct queries
    return stacked[worst, torch.arange(stacked.shape[1], device=stacked.device)]


class Victim:
    """The attacked learner: an algorithm, its (fixed) meta-parameters and ``n_way``.

    Attacks only need gradients with respect to inputs, so the parameters are
    detached. ``train`` selects the training-time adaptation (adversarial
    meta-training attacks the learner it trains); evaluation uses ``train=False``.

    :param algorithm: the algorithm instance.
    :param params: its meta-parameters.
    :param n_way: classes per episode.
    :param execution: how to run a batch of episodes (loop or ``vmap``, channels-last).
    """

    def __init__(self, algorithm: Algorithm, params: Params, n_way: int, execution: Execution | None = None,
                 *, train: bool = False) -> None:
        self.algorithm = algorithm
        self.execution = for_algorithm(execution or Execution(), algorithm)
        self.params = {k: v.detach() for k, v in params.items()}
        if self.execution.strategy == "loop":
            self.params = channels_last_params(self.params, self.execution)
        self.n_way = int(n_way)
        self.train = train
        # Per-episode states (adapt, predict) and the training-time adaptation (which need
        # not be vmap-safe) run one episode at a time on every plan; ``logits`` of the
        # evaluation-time learner follows the plan.
        self._per_episode = replace(self.execution, strategy="loop")
        self._batched = self._per_episode if train else self.execution

    @property
    def device(self) -> torch.device:
        return next(iter(self.params.values())).device

    @property
    def transductive(self) -> bool:
        return bool(self.algorithm.transductive)

    def _adapt_one(self, xs: Tensor, ys: Tensor) -> Any:
        return self.algorithm.adapt(self.params, xs, ys, n_way=self.n_way, train=self.train)

    def _predict_one(self, state: Any, xq: Tensor) -> Tensor:
        return self.algorithm.predict(self.params, state, xq)

    def _logits_one(self, xs: Tensor, ys: Tensor, xq: Tensor) -> Tensor:
        return self._predict_one(self._adapt_one(xs, ys), xq)

    def adapt(self, x_support: Tensor, y_support: Tensor) -> list[Any]:
        """Adapted states of a batch of episodes ``[E, n_support, ...]`` (differentiable),
        one per episode, adapted one episode at a time."""
        return unbind_episodes(episode_blocks(self._adapt_one, self._per_episode, x_support, y_support))

    def predict(self, states: Sequence[Any], x_query: Tensor) -> Tensor:
        """Query logits ``[E, Q, n_way]`` for the adapted ``states`` (one episode at a time)."""
        return map_episodes(self._predict_one, self._per_episode, list(states), x_query)

    def logits(self, x_support: Tensor, y_support: Tensor, x_query: Tensor) -> Tensor:
        """Adapt then predict for a batch of episodes: ``[E, Q, n_way]``, differentiable
        with respect to both ``x_support`` and ``x_query`` (through adaptation). Runs as
        the plan says (chunks of ``execution.chunk`` episodes under ``vmap``), except for
        the training-time learner, which runs one episode at a time."""
        return map_episodes(self._logits_one, self._batched, x_support, y_support, x_query)

    def query_module(self, x_support: Tensor, y_support: Tensor) -> "QueryModule":
        """An ``nn.Module`` over the queries of these episodes, adapted on this support."""
        return QueryModule(self, x_support, y_support)


class QueryModule(nn.Module):
    """The adapted learners of ``E`` episodes as one ``nn.Module`` for query attacks.

    ``forward`` takes the ``E * Q`` queries of all episodes flattened episode-major
    (``[E*Q, C, H, W]``) and returns ``[E*Q, n_way]`` logits, so a library attack
    (torchattacks) attacks every episode in one call. The adapted states are computed
    once, on the clean support set, with the protocol's mode (``adapt(train=False)``)
    and without gradient; the module is functional, so ``train()``/``eval()`` (which
    torchattacks toggles) change nothing. A single-episode module of a
    non-transductive learner also accepts any subset of its queries (attacks such as
    APGD and Square evaluate only the points not yet fooled); every other shape is an
    error rather than a silently wrong batch.
    """

    def __init__(self, victim: Victim, x_support: Tensor, y_support: Tensor) -> None:
        super().__init__()
        self.victim = victim
        with torch.no_grad():
            self.states = victim.adapt(x_support, y_support)
        self.n_episodes = int(x_support.shape[0])
        self.n_queries: int | None = None
        # torchattacks reads the device off the module's parameters.
        self.anchor = nn.Parameter(torch.zeros((), device=victim.device), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        E = self.n_episodes
        if self.n_queries is None:
            raise MrbenchError("QueryModule.n_queries is not set.", "Set it to the queries per episode before attacking.")
        Q = self.n_queries
        if x.shape[0] == E * Q:
            return self.victim.predict(self.states, x.view(E, Q, *x.shape[1:])).reshape(E * Q, -1)
        if E == 1 and not self.victim.transductive:
            return self.victim.predict(self.states, x.unsqueeze(0))[0]
        raise MrbenchError(
            f"The attacked learner got {x.shape[0]} queries; it was built for {E} episode(s) of {Q}.",
            "Attacks that evaluate a subset of the points must run one episode at a time, and cannot attack a "
            "transductive learner (its logits depend on the whole query set); use mrbench's own pgd for it.",
        )


@contextlib.contextmanager
def seeded_global_rng(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Run a library that draws from torch's global RNG (torchattacks' random starts)
    deterministically under ``generator``, restoring the global state afterwards."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device).item())
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if devices else "cpu"):
        torch.manual_seed(seed)
        yield


def torchattacks_query(victim: Victim, episodes: Episode, make: Any, generator: torch.Generator,
                       *, per_episode: bool) -> Episode:
    """Attack the queries of ``episodes`` with a torchattacks attack built by ``make(module)``.

    :param per_episode: run one episode at a time (for attacks that evaluate subsets of
        the batch); otherwise one call attacks all episodes at once.
    """
    E, Q = episodes.x_query.shape[:2]
    groups = [slice(e, e + 1) for e in range(E)] if per_episode else [slice(0, E)]
    out = []
    for sl in groups:
        module = victim.query_module(episodes.x_support[sl], episodes.y_support[sl])
        module.n_queries = Q
        atk = make(module)
        atk.set_device(victim.device)
        # The module is functional: the protocol's mode is adapt(train=False), whatever torchattacks sets.
        atk.set_model_training_mode(model_training=False)
        xq = episodes.x_query[sl].reshape(-1, *episodes.x_query.shape[2:])
        yq = episodes.y_query[sl].reshape(-1)
        with seeded_global_rng(generator, victim.device):
            adv = atk(xq, yq)
        out.append(adv.detach().view(episodes.x_query[sl].shape).to(episodes.x_query.dtype))
    x_query = torch.cat(out)
    return Episode(episodes.x_support, episodes.y_support, x_query, episodes.y_query)


def run_torchattacks(victim: Victim, episodes: Episode, make: Any, generator: torch.Generator, *,
                     per_episode: bool = False) -> Episode:
    """Attack the queries of ``episodes`` with a ``torchattacks`` attack: the public way to
    wrap one in an :class:`bench.components.Attack` plugin (query target).

    The learners adapted on each episode's clean support set (``adapt(train=False)``,
    without gradient) become one ``nn.Module`` over the queries of all episodes
    (:class:`QueryModule`: ``[E*Q, C, H, W]`` images in, ``[E*Q, n_way]`` logits out), and
    ``make(module)`` builds the torchattacks attack on it; the result holds the
    adversarial queries with the support and labels untouched. torchattacks' random
    draws (random starts, restarts) come from torch's global RNG; they run seeded from
    ``generator`` and the global state is restored afterwards, so the result is
    deterministic under ``generator`` (see :func:`seeded_global_rng`)::

        class MIFGSM(Attack):
            id, norm, targets = "mi-fgsm", "linf", ("query",)

            def perturb(self, victim, episodes, eps, target, generator):
                import torchattacks

                return run_torchattacks(victim, episodes, lambda model: torchattacks.MIFGSM(
                    model, eps=eps, alpha=eps / 10, steps=10, decay=1.0), generator)

    The harness checks the result (eps ball, [0, 1], support untouched) after every call.
    An attack whose own argument is a seed (APGD, Square, FAB) should get one drawn from
    ``generator``.

    :param victim: the attacked learner the harness passes to ``perturb``.
    :param episodes: the clean episodes ``[E, ...]`` ``perturb`` got.
    :param make: ``module -> torchattacks.Attack``; called once per group of episodes.
    :param generator: ``perturb``'s generator.
    :param per_episode: attack one episode at a time. Needed by attacks that evaluate
        only the points not yet fooled (APGD, Square, FAB, MultiAttack), since the module
        of several episodes only takes all their queries at once; attacks that always
        evaluate the whole batch (FGSM, PGD, MI-FGSM, CW) attack every episode in one call.
    :returns: new episodes, queries attacked.
    """
    return torchattacks_query(victim, episodes, make, generator, per_episode=per_episode)


# --- mrbench's own batched PGD through adaptation --------------------------------


def _per_image(t: Tensor) -> Tensor:
    """Reshape a per-image quantity ``[...]`` to broadcast over images ``[..., C, H, W]``."""
    return t.view(*t.shape, 1, 1, 1)


def project(delta: Tensor, eps: float, norm: str) -> Tensor:
    """Project per-image perturbations ``[..., C, H, W]`` onto the eps ball."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    n = delta.flatten(-3).norm(dim=-1)
    scale = torch.where(n > eps, eps / n.clamp_min(1e-12), torch.ones_like(n))
    return delta * _per_image(scale)


def random_in_ball(shape: torch.Size, eps: float, norm: str, generator: torch.Generator, device: torch.device,
                   dtype: torch.dtype) -> Tensor:
    """Uniform random start in the Linf ball; uniform direction and radius in the L2 ball."""
    gd = generator.device
    if norm == "linf":
        u = torch.rand(shape, generator=generator, dtype=dtype, device=gd)
        return ((2 * u - 1) * eps).to(device)
    g = torch.randn(shape, generator=generator, dtype=dtype, device=gd)
    g = g / _per_image(g.flatten(-3).norm(dim=-1).clamp_min(1e-12))
    d = math.prod(shape[-3:])
    r = torch.rand(shape[:-3], generator=generator, dtype=dtype, device=gd) ** (1.0 / d)
    return (g * _per_image(r) * eps).to(device)


def _step(delta: Tensor, grad: Tensor, alpha: float, norm: str) -> Tensor:
    if norm == "linf":
        return delta + alpha * grad.sign()
    n = grad.flatten(-3).norm(dim=-1).clamp_min(1e-12)
    return delta + alpha * grad / _per_image(n)


def support_mask(shape: torch.Size, fraction: float, generator: torch.Generator, device: torch.device) -> Tensor:
    """``[E, n_support, 1, 1, 1]`` mask of the support images a poisoning attack may change:
    all of them for ``fraction == 1``, else ``ceil(fraction * n_support)`` per episode chosen
    with ``generator``."""
    E, n = shape[0], shape[1]
    if fraction >= 1.0:
        return torch.ones(E, n, 1, 1, 1, device=device)
    k = max(1, math.ceil(fraction * n - 1e-9))
    mask = torch.zeros(E, n)
    for e in range(E):
        mask[e, torch.randperm(n, generator=generator, device=generator.device)[:k].cpu()] = 1.0
    return mask.view(E, n, 1, 1, 1).to(device)


def pgd(victim: Victim, episodes: Episode, *, eps: float, norm: str, target: str, steps: int, step_size: float,
        random_start: bool, restarts: int, generator: torch.Generator, poison_fraction: float = 1.0,
        chunk: int | None = None, loss: str = "ce") -> Episode:
    """Batched PGD on a loss of the queries (cross-entropy by default), through adaptation.

    The perturbed parts (support, queries or both, see :data:`TARGETS`) of every
    episode are optimised on the summed query loss. Each episode keeps its worst
    iterate over all steps and restarts (fewest correct queries, then highest loss):
    for query-only attacks per query, for support and joint attacks per episode, since
    the support perturbation acts on every query.

    Every random draw (support masks, random starts of every restart) is made up front
    for the whole batch, so the result does not depend on ``chunk``: episodes do not
    interact (each one's gradient is that of its own loss), and ``chunk`` only sets how
    many episodes share one autograd graph.

    :param step_size: absolute step (``alpha``); Linf steps by its sign, L2 by the
        normalised gradient.
    :param poison_fraction: fraction of the support images that may change
        (``support`` / ``both`` targets).
    :param chunk: episodes per autograd graph. Default: one under the ``loop``
        execution (the CPU plan: the episodes run one by one anyway, and one graph over
        many of them only adds memory traffic), every episode under ``vmap``.
    :param loss: ``ce`` or a margin loss of :func:`query_loss` (``margin``, ``cw``,
        ``dlr``), computed per query and summed.
    """
    if loss not in ("ce", "margin", "cw", "dlr"):
        raise MrbenchError(f"pgd cannot ascend the loss {loss!r}.", "Use ce, margin, cw or dlr (targeted: apgd).")
    _check_target(target)
    xs = episodes.x_support
    mask = support_mask(xs.shape, poison_fraction, generator, xs.device) if perturbs(target)[0] else None
    starts: list[tuple[Tensor | None, Tensor | None]] = []
    for _ in range(max(1, restarts)):
        starts.append(_start(episodes, mask, target, eps, norm, generator, random=random_start))
    return _by_graph(victim, episodes, starts, mask, chunk,
                     lambda ep, st, m: _pgd_chunk(victim, ep, st, m, eps=eps, norm=norm, target=target, steps=steps,
                                                  step_size=step_size, loss=loss))


def _check_target(target: str) -> None:
    """A clear error for an unknown attack target."""
    if target not in TARGETS:
        raise MrbenchError(f"Unknown attack target {target!r}.", f"Targets: {', '.join(TARGETS)}.")


def _start(episodes: Episode, mask: Tensor | None, target: str, eps: float, norm: str, generator: torch.Generator,
           *, random: bool = True) -> tuple[Tensor | None, Tensor | None]:
    """One start ``(support delta, query delta)`` of the perturbed parts (``None`` for the
    others): uniform in the eps ball (``random``; support first, from ``generator``) or
    zero, kept in [0, 1] and under the support mask."""
    out: list[Tensor | None] = []
    for x, m, perturbed in zip((episodes.x_support, episodes.x_query), (mask, None), perturbs(target)):
        if not perturbed:
            out.append(None)
            continue
        d = random_in_ball(x.shape, eps, norm, generator, x.device, x.dtype) if random else torch.zeros_like(x)
        out.append(_box(x, d, m, eps, norm))
    return out[0], out[1]


def _by_graph(victim: Victim, episodes: Episode, starts: Sequence[tuple[Any, ...]], mask: Tensor | None,
              chunk: int | None, run: Callable[[Episode, list[tuple[Any, ...]], Tensor | None], Episode]) -> Episode:
    """``run`` on ``chunk`` episodes per autograd graph (default :func:`episodes_per_graph`),
    each start's tensors and the mask sliced to them, and the results joined."""
    E = episodes.x_support.shape[0]
    chunk = max(1, episodes_per_graph(victim.execution, E) if chunk is None else chunk)

    def sl(v: Any, i: int) -> Any:
        return v[i : i + chunk] if isinstance(v, Tensor) else v

    parts = [run(episodes[i : i + chunk], [tuple(sl(v, i) for v in st) for st in starts], sl(mask, i))
             for i in range(0, E, chunk)]
    if len(parts) == 1:
        return parts[0]
    return Episode(*(torch.cat(ts) for ts in zip(*(p.tensors() for p in parts))))


def _box(x: Tensor, d: Tensor, m: Tensor | None, eps: float, norm: str) -> Tensor:
    """Project ``d`` onto the eps ball and so that ``x + d`` stays in [0, 1]; apply the mask."""
    d = project(d, eps, norm)
    d = (x + d).clamp(0.0, 1.0) - x
    return d * m if m is not None else d


def _pgd_chunk(victim: Victim, episodes: Episode, starts: Sequence[tuple[Tensor | None, Tensor | None]],
               mask: Tensor | None, *, eps: float, norm: str, target: str, steps: int, step_size: float,
               loss: str = "ce") -> Episode:
    """PGD from the given starts (one per restart) on one autograd graph over ``episodes``."""
    xs, ys, xq, yq = episodes.tensors()
    dev, dtype = xs.device, xs.dtype
    do_s, do_q = perturbs(target)
    per_query = target == "query"

    best_s, best_q = xs.clone(), xq.clone()
    best_wrong = torch.full(yq.shape if per_query else yq.shape[:1], -1.0, device=dev)
    best_loss = torch.full_like(best_wrong, -math.inf)

    def score(logits: Tensor) -> tuple[Tensor, Tensor]:
        wrong = (logits.argmax(-1) != yq).to(dtype)
        lq = query_loss(logits, yq, loss)
        return (wrong, lq) if per_query else (wrong.sum(-1), lq.sum(-1))

    def keep(ds: Tensor | None, dq: Tensor | None, logits: Tensor) -> None:
        wrong, loss = score(logits.detach())
        better = (wrong > best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        best_wrong.copy_(torch.where(better, wrong, best_wrong))
        best_loss.copy_(torch.where(better, loss, best_loss))
        if per_query:
            sel = better.view(*better.shape, 1, 1, 1)
            best_q.copy_(torch.where(sel, xq + dq, best_q))
        else:
            sel = better.view(-1, 1, 1, 1, 1)
            if ds is not None:
                best_s.copy_(torch.where(sel, xs + ds, best_s))
            if dq is not None:
                best_q.copy_(torch.where(sel, xq + dq, best_q))

    for ds, dq in starts:
        for _t in range(steps):
            leaves = [d.requires_grad_(True) for d in (ds, dq) if d is not None]
            with torch.enable_grad():
                logits = victim.logits(xs + ds if ds is not None else xs, ys, xq + dq if dq is not None else xq)
                total = (F.cross_entropy(logits.flatten(0, 1), yq.flatten(), reduction="sum") if loss == "ce"
                         else query_loss(logits, yq, loss).sum())
                grads = torch.autograd.grad(total, leaves)
            keep(ds.detach() if ds is not None else None, dq.detach() if dq is not None else None, logits)
            gi = iter(grads)
            with torch.no_grad():
                if ds is not None:
                    ds = _box(xs, _step(ds.detach(), next(gi), step_size, norm), mask, eps, norm)
                if dq is not None:
                    dq = _box(xq, _step(dq.detach(), next(gi), step_size, norm), None, eps, norm)
        with torch.no_grad():
            logits = victim.logits(xs + ds if ds is not None else xs, ys, xq + dq if dq is not None else xq)
            keep(ds, dq, logits)
    return Episode(best_s if do_s else xs, ys, best_q if do_q else xq, yq)


# --- APGD through adaptation ----------------------------------------------------------

LOSSES = ("ce", "margin", "cw", "dlr", "targeted")
"""Losses of :func:`apgd`: ``ce`` (cross-entropy), ``margin`` (DLR for ``n_way >= 3``, the
CW logit margin for 2 ways), ``targeted`` (toward a chosen wrong class per query:
targeted DLR for ``n_way >= 4``, the log-probability of the target class otherwise)."""


def query_loss(logits: Tensor, y: Tensor, loss: str, target_class: Tensor | None = None) -> Tensor:
    """Per-query attack loss ``[..., Q]`` (to be maximised) of logits ``[..., Q, n_way]``.

    Computed per query, then summed over the queries of a unit by :func:`apgd`. The
    CW margin is linear in the logits, so every query weighs alike in logit space, and
    the targeted log-probability saturates at 0 once the query is predicted as its
    target. Cross-entropy does not: summed over the queries, the misclassified ones,
    whose loss grows without bound, take almost all of the gradient (why a poisoning
    attack on CE alone stalls). DLR is scale-free, but its denominator
    ``z_1 - z_3`` lets a query whose true logit fell far below the others weigh more;
    on the natural ProtoNet it was the weakest margin member (see the ensemble).

    :param target_class: ``[..., Q]`` the class each query is pushed toward (``targeted``).
    """
    n = logits.shape[-1]
    if loss == "ce":
        return F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)
    z_y = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    if loss in ("margin", "cw", "dlr"):
        other = logits.masked_fill(F.one_hot(y, n).bool(), -math.inf).amax(-1)
        if loss == "cw" or (loss == "margin" and n < 3):
            return other - z_y  # CW margin
        if n < 3:
            raise MrbenchError(f"The DLR loss needs at least 3 classes, got {n}.", "Use the margin (or cw) loss.")
        top = logits.topk(3, dim=-1).values
        return (other - z_y) / (top[..., 0] - top[..., 2] + 1e-12)  # DLR (Croce & Hein 2020)
    if loss == "targeted":
        if target_class is None:
            raise ValueError("the targeted loss needs target_class")
        z_t = logits.gather(-1, target_class.unsqueeze(-1)).squeeze(-1)
        if n < 4:
            return torch.log_softmax(logits, -1).gather(-1, target_class.unsqueeze(-1)).squeeze(-1)
        top = logits.topk(4, dim=-1).values
        return (z_t - z_y) / (top[..., 0] - 0.5 * (top[..., 2] + top[..., 3]) + 1e-12)  # targeted DLR
    raise MrbenchError(f"Unknown attack loss {loss!r}.", f"Losses: {', '.join(LOSSES)}.")


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations after which APGD decides whether to halve its step size: the
    Croce & Hein schedule ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)``
    as iterations ``ceil(p_j * steps)``."""
    ps = [0.0, 0.22]
    while ps[-1] < 1:
        ps.append(ps[-1] + max(ps[-1] - ps[-2] - 0.03, 0.06))
    return sorted({min(steps, max(1, math.ceil(p * steps - 1e-9))) for p in ps[1:]})  # 0.57 * 100 is 57


def apgd(victim: Victim, episodes: Episode, *, eps: float, target: str, steps: int, restarts: int, loss: str,
         generator: torch.Generator, n_target_classes: int | None = None, poison_fraction: float = 1.0,
         chunk: int | None = None) -> Episode:
    """Auto-PGD (Croce & Hein 2020) in the Linf ball, through adaptation.

    The same victim and gradient path as :func:`pgd`: the perturbed parts (support,
    queries or both) of every episode are optimised on the query loss of the learner
    adapted on the (perturbed) support, so for ``support`` the loss is that of the clean
    queries after adaptation on the poisoned support. Per unit (each query for the
    ``query`` target; each episode for ``support`` and ``both``, whose one perturbation
    acts on every query): step size ``2 eps``, halved at the checkpoints of
    :func:`apgd_checkpoints` when fewer than 75% of the steps since the last one raised
    the loss, or when the step was not halved last time and the best loss did not
    improve (then the iterate restarts from the best point); momentum 0.75; the
    best-loss point is tracked. Each unit returns its most damaging iterate over every
    step and restart (fewest correct queries, then highest loss), as :func:`pgd` does.

    A chunk stops early once every one of its units has every query wrong (nothing is
    left to gain; AutoAttack likewise attacks only the points not yet fooled).

    :param loss: one of :data:`LOSSES` (see :func:`query_loss`); sums over the queries
        of a unit.
    :param restarts: random starts (for ``targeted``: per target class).
    :param n_target_classes: ``targeted``: each query is pushed, in turn, toward each of
        its ``n_target_classes`` most likely wrong classes under the clean episode
        (default and maximum ``n_way - 1``).
    :param poison_fraction: fraction of the support images that may change.
    :param chunk: episodes per autograd graph (as in :func:`pgd`); the result does not
        depend on it.
    """
    _check_target(target)
    if loss not in LOSSES:
        raise MrbenchError(f"Unknown attack loss {loss!r}.", f"Losses: {', '.join(LOSSES)}.")
    xs = episodes.x_support
    mask = support_mask(xs.shape, poison_fraction, generator, xs.device) if perturbs(target)[0] else None
    runs: list[int | None] = [None]
    if loss == "targeted":
        k = victim.n_way - 1 if n_target_classes is None else max(1, min(n_target_classes, victim.n_way - 1))
        runs = list(range(k))
    starts: list[tuple[int | None, Tensor | None, Tensor | None]] = []
    for t in runs:
        for _ in range(max(1, restarts)):
            starts.append((t, *_start(episodes, mask, target, eps, "linf", generator)))
    return _by_graph(victim, episodes, starts, mask, chunk,
                     lambda ep, st, m: _apgd_chunk(victim, ep, st, m, eps=eps, target=target, steps=steps, loss=loss))


def _apgd_chunk(victim: Victim, episodes: Episode, starts: Sequence[tuple[int | None, Tensor | None, Tensor | None]],
                mask: Tensor | None, *, eps: float, target: str, steps: int, loss: str) -> Episode:
    """APGD from the given starts (one per restart and target class) on one autograd graph
    over ``episodes``; stops once every unit has every query wrong."""
    per_query = target == "query"
    target_order = _apgd_target_order(victim, episodes) if loss == "targeted" else None
    best = _ApgdBest.start(episodes, per_query)
    checkpoints = set(apgd_checkpoints(steps))
    for t, ds, dq in starts:
        if best.all_fooled():
            break
        tc = None if t is None or target_order is None else target_order[..., t]
        _apgd_run(victim, episodes, ds, dq, tc, mask, best, eps=eps, steps=steps, loss=loss, checkpoints=checkpoints)
    return best.episode(target)


def _apgd_target_order(victim: Victim, episodes: Episode) -> Tensor:
    """The wrong classes of every query, most likely first under the clean episode
    (``targeted``: run ``t`` pushes each query toward its ``t``-th)."""
    xs, ys, xq, yq = episodes.tensors()
    with torch.no_grad():
        clean = victim.logits(xs, ys, xq)
    return clean.masked_fill(F.one_hot(yq, clean.shape[-1]).bool(), -math.inf).argsort(-1, descending=True)


def _apgd_run(victim: Victim, episodes: Episode, ds: Tensor | None, dq: Tensor | None, tc: Tensor | None,
              mask: Tensor | None, best: "_ApgdBest", *, eps: float, steps: int, loss: str, checkpoints: set[int]) -> None:
    """One APGD run from the start ``(ds, dq)``: momentum steps under the step-size
    schedule, every iterate offered to ``best``."""
    xs, xq = episodes.x_support, episodes.x_query
    unit, wrong, grads = _apgd_evaluate(victim, episodes, ds, dq, tc, loss, best.per_query)
    cur = [d.detach() if d is not None else None for d in (ds, dq)]
    best.keep(cur[0], cur[1], unit, wrong)
    schedule = _ApgdStepSize(unit, cur, grads, eps, xs.dtype)
    prev = [c.clone() if c is not None else None for c in cur]
    for i in range(steps):
        with torch.no_grad():
            nxt = _apgd_momentum_step(cur, prev, grads, schedule.eta, (xs, xq), (mask, None), eps,
                                      momentum=0.75 if i > 0 else 1.0)
        prev, cur = cur, nxt
        unit, wrong, grads = _apgd_evaluate(victim, episodes, cur[0], cur[1], tc, loss, best.per_query)
        cur = [c.detach() if c is not None else None for c in cur]
        best.keep(cur[0], cur[1], unit, wrong)
        if best.all_fooled():
            break
        with torch.no_grad():
            schedule.record(unit, cur, grads)
            if i + 1 in checkpoints:
                grads = schedule.at_checkpoint(cur, prev, grads)


def _apgd_evaluate(victim: Victim, episodes: Episode, ds: Tensor | None, dq: Tensor | None, tc: Tensor | None,
                   loss: str, per_query: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Unit losses, unit wrong counts and the gradients of the summed loss with respect to
    ``ds`` and ``dq`` (those that are not ``None``)."""
    xs, ys, xq, yq = episodes.tensors()
    leaves = [d.requires_grad_(True) for d in (ds, dq) if d is not None]
    with torch.enable_grad():
        logits = victim.logits(xs + ds if ds is not None else xs, ys, xq + dq if dq is not None else xq)
        lq = query_loss(logits, yq, loss, tc)
        unit = lq if per_query else lq.sum(-1)
        grads = list(torch.autograd.grad(unit.sum(), leaves))
    wrong = (logits.detach().argmax(-1) != yq).to(xs.dtype)
    return unit.detach(), (wrong if per_query else wrong.sum(-1)), grads


def _apgd_momentum_step(cur: list[Tensor | None], prev: list[Tensor | None], grads: list[Tensor], eta: Tensor,
                        bases: tuple[Tensor, Tensor], masks: tuple[Tensor | None, None], eps: float, *,
                        momentum: float) -> list[Tensor | None]:
    """APGD's step: ``z`` = projected sign step of size ``eta`` from ``cur``, then the
    projected momentum combination ``cur + a (z - cur) + (1 - a) (cur - prev)``."""
    gi = iter(grads)
    nxt: list[Tensor | None] = []
    for c, p, x, m in zip(cur, prev, bases, masks):
        if c is None:
            nxt.append(None)
            continue
        g = next(gi)
        z = _box(x, c + _per_unit(eta, g) * g.sign(), m, eps, "linf")
        a = momentum
        nxt.append(_box(x, c + a * (z - c) + (1 - a) * (c - p), m, eps, "linf"))
    return nxt


def _per_unit(v: Tensor, like: Tensor) -> Tensor:
    """``v`` (one value per unit) viewed to broadcast over ``like``'s trailing dims."""
    return v.view(*v.shape, *([1] * (like.dim() - v.dim())))


class _ApgdStepSize:
    """APGD's per-unit step size (``2 eps`` at first) and the schedule's state: the best
    loss and its iterate and gradient, and the count of steps that raised the loss since
    the last checkpoint. At a checkpoint a unit halves its step when fewer than 75% of
    those steps raised the loss, or when it did not halve last time and its best loss
    did not improve; it then restarts from its best iterate."""

    def __init__(self, unit: Tensor, cur: list[Tensor | None], grads: list[Tensor], eps: float,
                 dtype: torch.dtype) -> None:
        self.eta = torch.full(unit.shape, 2.0 * eps, device=unit.device, dtype=dtype)
        self.x_best = [c.clone() if c is not None else None for c in cur]
        self.g_best = [g.clone() for g in grads]
        self.loss_best, self.loss_prev = unit.clone(), unit.clone()
        self.loss_at_check = unit.clone()
        self.halved_at_check = torch.ones(unit.shape, dtype=torch.bool, device=unit.device)
        self.n_up = torch.zeros(unit.shape, device=unit.device)
        self.since = 0

    def record(self, unit: Tensor, cur: list[Tensor | None], grads: list[Tensor]) -> None:
        """Count a step that raised the loss; keep the iterate and gradient of a new best loss."""
        self.n_up += (unit > self.loss_prev).to(self.n_up.dtype)
        self.loss_prev = unit
        up = unit > self.loss_best
        for j, c in enumerate(cur):
            if c is not None:
                self.x_best[j] = torch.where(_per_unit(up, c), c, self.x_best[j])
        present = [c for c in cur if c is not None]
        self.g_best = [torch.where(_per_unit(up, c), g, gb) for c, g, gb in zip(present, grads, self.g_best)]
        self.loss_best = torch.where(up, unit, self.loss_best)
        self.since += 1

    def at_checkpoint(self, cur: list[Tensor | None], prev: list[Tensor | None], grads: list[Tensor]) -> list[Tensor]:
        """Halve the step of the units that oscillate or stall; those restart from their best
        iterate (``cur`` and ``prev`` are updated in place, no momentum across the restart).
        Returns the gradients to step with."""
        oscillating = self.n_up < 0.75 * self.since
        stalled = ~self.halved_at_check & (self.loss_at_check >= self.loss_best)
        halve = oscillating | stalled
        self.halved_at_check = halve
        self.loss_at_check = self.loss_best.clone()
        self.eta = torch.where(halve, self.eta / 2, self.eta)
        new_grads = []
        k = 0
        for j, c in enumerate(cur):
            if c is None:
                continue
            sel = _per_unit(halve, c)
            cur[j] = torch.where(sel, self.x_best[j], c)
            prev[j] = torch.where(sel, self.x_best[j], prev[j])
            new_grads.append(torch.where(sel, self.g_best[k], grads[k]))
            k += 1
        self.n_up.zero_()
        self.since = 0
        return new_grads


@dataclass
class _ApgdBest:
    """The most damaging iterate of every unit over all steps and restarts: the fewest
    correct queries, then the highest loss. A unit keeps its first all-wrong point."""

    episodes: Episode
    per_query: bool
    x_support: Tensor
    x_query: Tensor
    wrong: Tensor
    loss: Tensor
    n_all: float

    @classmethod
    def start(cls, episodes: Episode, per_query: bool) -> "_ApgdBest":
        xs, yq = episodes.x_support, episodes.y_query
        unit_shape = yq.shape if per_query else yq.shape[:1]
        return cls(episodes, per_query, xs.clone(), episodes.x_query.clone(),
                   torch.full(unit_shape, -1.0, device=xs.device), torch.full(unit_shape, -math.inf, device=xs.device),
                   float(yq.shape[-1]) if not per_query else 1.0)

    def all_fooled(self) -> bool:
        return bool((self.wrong >= self.n_all).all())

    def keep(self, ds: Tensor | None, dq: Tensor | None, unit: Tensor, wrong: Tensor) -> None:
        """Keep ``(ds, dq)`` for the units it damages more."""
        # Ties on the wrong count go to the higher loss; the first restart's loss is not
        # comparable with a targeted restart's, but a tie on damage is a tie either way.
        better = (wrong > self.wrong) | ((wrong == self.wrong) & (unit > self.loss))
        # A unit keeps its first all-wrong point: alone it would stop there (early exit), so
        # the result does not depend on which other episodes share its chunk.
        better &= self.wrong < self.n_all
        self.wrong.copy_(torch.where(better, wrong, self.wrong))
        self.loss.copy_(torch.where(better, unit, self.loss))
        sel = better.view(*better.shape, 1, 1, 1) if self.per_query else better.view(-1, 1, 1, 1, 1)
        if ds is not None:
            self.x_support.copy_(torch.where(sel, self.episodes.x_support + ds, self.x_support))
        if dq is not None:
            self.x_query.copy_(torch.where(sel, self.episodes.x_query + dq, self.x_query))

    def episode(self, target: str) -> Episode:
        """The episodes with the best iterates on the attacked parts."""
        xs, ys, xq, yq = self.episodes.tensors()
        do_s, do_q = perturbs(target)
        return Episode(self.x_support if do_s else xs, ys, self.x_query if do_q else xq, yq)


def sign_search(victim: Victim, episodes: Episode, *, eps: float, target: str, queries: int,
                generator: torch.Generator, p_init: float = 0.1, poison_fraction: float = 1.0) -> Episode:
    """Gradient-free random search over the corners of the Linf ball (support, or support
    and queries): start from a random sign perturbation ``eps * s``, then for ``queries``
    iterations flip the signs of a random subset of pixels (a fraction ``p_init`` at
    first, shrinking as in Square's schedule) and keep the flip when the episode ends with
    more wrong queries, or as many and a higher margin loss (:func:`query_loss`, summed).
    It uses the learner's outputs only, so it is the reference against gradient masking
    of the poisoning attacks (see :func:`poisoning_checks`), and, on the query target, of
    query attacks on a transductive learner, whose logits depend on the whole query set
    (Square evaluates subsets of the queries, so it cannot attack one): there the queries'
    signs are searched jointly, per episode."""
    if target not in TARGETS:
        raise MrbenchError(f"sign_search attacks the query, support or both, not {target!r}.")
    xs, ys, xq, yq = episodes.tensors()
    dev, dtype = xs.device, xs.dtype
    gd = generator.device
    if target == "query":
        parts = [(xq, None)]
    else:
        mask = support_mask(xs.shape, poison_fraction, generator, dev)
        parts = [(xs, mask)] + ([(xq, None)] if target == "both" else [])

    def signs(x: Tensor) -> Tensor:
        return (torch.randint(0, 2, x.shape, generator=generator, device=gd).to(dtype) * 2 - 1).to(dev)

    cur = [signs(x) for x, _ in parts]

    def score(sg: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        adv = [x + _box(x, eps * s, m, eps, "linf") for (x, m), s in zip(parts, sg)]
        with torch.no_grad():
            logits = (victim.logits(xs, ys, adv[0]) if target == "query" else
                      victim.logits(adv[0], ys, adv[1] if len(adv) > 1 else xq))
        wrong = (logits.argmax(-1) != yq).to(dtype).sum(-1)
        return wrong, query_loss(logits, yq, "margin").sum(-1), adv

    best_wrong, best_loss, best_adv = score(cur)
    for i in range(queries):
        p = p_init * (0.5 ** sum(i >= int(f * queries) for f in (0.1, 0.3, 0.5, 0.7, 0.9)))
        flip = [(torch.rand(s.shape, generator=generator, device=gd) < p).to(dev) for s in cur]
        cand = [torch.where(f, -s, s) for f, s in zip(flip, cur)]
        wrong, loss, adv = score(cand)
        better = (wrong > best_wrong) | ((wrong == best_wrong) & (loss > best_loss))
        sel = better.view(-1, 1, 1, 1, 1)
        cur = [torch.where(sel, c, s) for c, s in zip(cand, cur)]
        best_adv = [torch.where(sel, a, b) for a, b in zip(adv, best_adv)]
        best_wrong = torch.where(better, wrong, best_wrong)
        best_loss = torch.where(better, loss, best_loss)
        if bool((best_wrong >= yq.shape[-1]).all()):
            break
    if target == "query":
        return Episode(xs, ys, best_adv[0], yq)
    return Episode(best_adv[0], ys, best_adv[1] if target == "both" else xq, yq)


# --- the harness's checks -------------------------------------------------------------


def snapshot(episodes: Episode) -> tuple[Tensor, ...]:
    return tuple(t.detach().clone() for t in episodes.tensors())


def check_perturbation(attack_id: str, norm: str, eps: float, target: str, clean: Episode,
                       before: Sequence[Tensor], adv: Episode, *, max_support_changed: int | None = None) -> None:
    """Fail loudly (naming the attack) unless ``adv`` is a valid perturbation of ``clean``.

    Checks: ``clean`` equals its snapshot ``before`` (not mutated); shapes, dtypes and
    labels unchanged; images in [0, 1]; every image within ``eps`` in ``norm``; the
    part the target does not cover is bit-identical; at most ``max_support_changed``
    support images changed per episode.
    """
    def fail(what: str) -> None:
        raise MrbenchError(f"Attack {attack_id!r} ({norm}, eps={format_eps(eps)}, target={target}) {what}.",
                           "This is a bug in the attack plugin: report it to its maintainer.")

    names = ("x_support", "y_support", "x_query", "y_query")
    for name, t, b in zip(names, clean.tensors(), before):
        if not torch.equal(t, b):
            fail(f"mutated its input episode ({name})")
    for name, a, c in zip(names, adv.tensors(), clean.tensors()):
        if a.shape != c.shape or a.dtype != c.dtype:
            fail(f"returned {name} of shape {tuple(a.shape)} {a.dtype}, expected {tuple(c.shape)} {c.dtype}")
    if not torch.equal(adv.y_support, clean.y_support) or not torch.equal(adv.y_query, clean.y_query):
        fail("changed labels")
    do_s, do_q = perturbs(target)
    for name, a, c, allowed in (("x_support", adv.x_support, clean.x_support, do_s),
                                ("x_query", adv.x_query, clean.x_query, do_q)):
        if not torch.isfinite(a).all() or a.min() < 0 or a.max() > 1:
            fail(f"left [0, 1] in {name} (min {float(a.min()):.4g}, max {float(a.max()):.4g})")
        d = (a - c).flatten(-3)
        if not allowed:
            if bool((d != 0).any()):
                fail(f"changed {name}, which target {target!r} does not cover")
            continue
        size = d.abs().amax(-1) if norm == "linf" else d.norm(dim=-1)
        tol = 1e-6 + (1e-5 * eps if norm == "l2" else 0.0)
        if bool((size > eps + tol).any()):
            fail(f"left the {norm} ball in {name}: largest perturbation {float(size.max()):.6g} > eps {eps:.6g}")
        if name == "x_support" and max_support_changed is not None:
            changed = int((d != 0).any(-1).sum(-1).max())
            if changed > max_support_changed:
                fail(f"changed {changed} support images of an episode, more than {max_support_changed} allowed")


def run_attack(attack: "Attack", victim: Victim, episodes: Episode, eps: float, target: str,
               generator: torch.Generator) -> Tensor:
    """Perturb with ``attack``, check the result, return per-query correctness ``[E, Q]`` (bool)."""
    check_attack(attack, target, victim.n_way)
    before = snapshot(episodes)
    adv = attack.perturb(victim, episodes, eps, target, generator)
    frac = getattr(attack.options, "poison_fraction", 1.0)
    n_s = episodes.x_support.shape[1]
    check_perturbation(attack.id, attack.norm, eps, target, episodes, before, adv,
                       max_support_changed=None if frac >= 1 else max(1, math.ceil(frac * n_s - 1e-9)))
    with torch.no_grad():
        logits = victim.logits(adv.x_support, adv.y_support, adv.x_query)
    return logits.argmax(-1) == adv.y_query


# --- attack-strength sanity checks ----------------------------------------------------


@dataclass
class SanityResult:
    """Outcome of the sanity checks of one evaluation: ``checks`` name -> record."""

    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, passed: bool, detail: str, **numbers: float) -> None:
        self.checks[name] = {"passed": bool(passed), "detail": detail, **{k: round(float(v), 6) for k, v in numbers.items()}}

    @property
    def failures(self) -> list[str]:
        return [f"{k}: {v['detail']}" for k, v in self.checks.items() if not v["passed"]]


SANITY_TOL = 0.03
"""Slack (absolute accuracy) of the monotonicity checks: random starts make PGD's
accuracy noisy at the level of a few queries."""


def monotone_in_eps(metrics: dict[str, dict[str, Any]], scenarios: Sequence[AttackCell], out: SanityResult) -> None:
    """From an evaluation's own eps sweep: each attack/target's accuracy is non-increasing in eps."""
    by_key: dict[tuple[str, tuple, str], list[tuple[float, float]]] = {}
    for sc in scenarios:
        if sc.name in metrics:
            by_key.setdefault((sc.attack, sc.options, sc.target), []).append((sc.eps, metrics[sc.name]["accuracy"]))
    for (attack, _opts, target), pts in sorted(by_key.items(), key=lambda kv: (kv[0][0], kv[0][2])):
        if len(pts) < 2:
            continue
        pts.sort()
        bad = [(a, b) for a, b in zip(pts, pts[1:]) if b[1] > a[1] + SANITY_TOL]
        out.add(f"eps-monotone:{attack}:{target}", not bad,
                "accuracy non-increasing in eps" if not bad else
                f"accuracy rose from {bad[0][0][1]:.3f} at eps {format_eps(bad[0][0][0])} to {bad[0][1][1]:.3f} at "
                f"eps {format_eps(bad[0][1][0])}")


MARGIN_TOL = 0.05
"""How much stronger (absolute accuracy) the margin-loss reference may be than PGD on the
query target's sanity episodes. On omniglot-5w1s (first 25 episodes, 16/255) a margin-loss
PGD-20 was 8.5 and 9.1 points below the cross-entropy PGD-20 on relation networks and
SimpleShot, whose PGD-20 columns a margin PGD-100 x 5 restarts beats by 12 and 11; where
the PGD-20 column held up, that stronger attack beat it by at most 4
(docs/results/easyfsl/margin-checks.md)."""


POISON_NEAR_ZERO = 0.05
"""Accuracy a poisoning attack (support, both) must reach at an eps spanning the whole
pixel range: the support images can then be any images, and swapping them between
classes alone leaves about 1% of the queries correct. Chance is no bar there: an attack
that only makes every query predict one class scores exactly chance."""

def poison_reference(steps: int, refs: SanityReferences = DEFAULT_REFERENCES) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The poisoning attack the sanity checks vet when the evaluation runs no poisoning
    ensemble on the target: the suite's ``poison`` reference (by default APGD on the
    per-query CW margin through adaptation), with as many steps as the evaluation's PGD
    (at least 20)."""
    return refs.poison_reference(steps)


def sanity_checks(registry: Any, victim: Victim, episodes: Episode, *, eps: float, norm: str, target: str,
                  steps: int, generator_seed: int,
                  poison: tuple[str, Sequence[tuple[str, Any]]] | None = None,
                  refs: SanityReferences = DEFAULT_REFERENCES) -> SanityResult:
    """Attack-strength checks on a few episodes, with the reference attacks the suite
    declares (``refs``, :class:`bench.protocol.sanity.SanityReferences`; PGD, FGSM and
    Square by default):

    - ``steps-monotone``: PGD (the ``iterative`` reference) with ``steps`` is at least as
      strong as with ``steps // 4``;
    - ``pgd-vs-fgsm``: PGD is at least as strong as FGSM (the ``single_step`` reference,
      where the suite declares one for the norm);
    - ``eps-monotone``: PGD at ``eps`` is at least as strong as at ``eps / 2``;
    - ``large-eps``: PGD at an eps that spans the whole pixel range brings accuracy near
      or below chance (``1/n_way + 0.1``);
    - ``margin-loss`` (query target): PGD on the CW logit margin (the ``margin``
      reference, with ``steps``) is not stronger than PGD by more than
      :data:`MARGIN_TOL`. The cross-entropy steers PGD badly where it saturates or where
      the logits live on a small scale (cosine similarities, sigmoid relation scores: a
      flat softmax raises every wrong class alike); the same budget on the margin then
      finds what PGD misses, and the PGD column is an overestimate, not a robust accuracy;
    - ``gradient-free`` (query target): Square (the ``gradient_free`` reference) is not
      far stronger than PGD (by more than 0.1), a sign of gradient masking.

    For the poisoning targets (``support``, ``both``) also :func:`poisoning_checks` on
    the ``poison`` attack (``(id, options)``; default :func:`poison_reference`).
    An unknown reference id is reported with the known attacks.

    Each failure is a reason to mark the result unreliable.
    """
    out = SanityResult()
    pgd_id = refs.for_norm("iterative", norm)
    if pgd_id is None:
        raise MrbenchError(f"The suite declares no iterative sanity reference attack for the {norm} norm.",
                           f"Add it to the suite's [attacks.sanity] table: iterative = {{ {norm} = \"<attack id>\" }}.")
    fgsm_id, free_id = refs.for_norm("single_step", norm), refs.for_norm("gradient_free", norm)
    margin_id = refs.for_norm("margin", norm)
    big = 1.0 if norm == "linf" else math.sqrt(episodes.x_query[0, 0].numel())

    def acc(attack_id: str, e: float, **opts: Any) -> float:
        g = torch.Generator().manual_seed(generator_seed)
        atk = registry.create("attack", attack_id, opts)
        correct = run_attack(atk, victim, episodes, e, target, g)
        return float(correct.float().mean())

    a_pgd = acc(pgd_id, eps, steps=steps)
    a_few = acc(pgd_id, eps, steps=max(1, steps // 4))
    a_half = acc(pgd_id, eps / 2, steps=steps)
    a_fgsm = acc(fgsm_id, eps) if fgsm_id is not None else None
    a_big = acc(pgd_id, big, steps=steps)
    chance = 1.0 / victim.n_way
    out.add("steps-monotone", a_pgd <= a_few + SANITY_TOL,
            f"PGD-{steps} {a_pgd:.3f} vs PGD-{max(1, steps // 4)} {a_few:.3f}", pgd=a_pgd, pgd_few=a_few)
    out.add("eps-monotone", a_pgd <= a_half + SANITY_TOL,
            f"eps {format_eps(eps)}: {a_pgd:.3f} vs eps/2: {a_half:.3f}", pgd=a_pgd, pgd_half_eps=a_half)
    if a_fgsm is not None:
        out.add("pgd-vs-fgsm", a_pgd <= a_fgsm + SANITY_TOL, f"PGD {a_pgd:.3f} vs FGSM {a_fgsm:.3f}",
                pgd=a_pgd, fgsm=a_fgsm)
    out.add("large-eps", a_big <= chance + 0.1,
            f"PGD at eps {big:.4g} (the whole pixel range): {a_big:.3f}, chance {chance:.3f}", pgd_large_eps=a_big)
    if target == "query" and margin_id is not None:
        a_margin = acc(margin_id, eps, steps=steps)
        out.add("margin-loss", a_margin >= a_pgd - MARGIN_TOL,
                f"{margin_id} (margin loss, {steps} steps) {a_margin:.3f} vs PGD {a_pgd:.3f}", margin=a_margin, pgd=a_pgd)
    if target == "query" and victim.transductive and norm == "linf":
        # Square scores subsets of the queries, which a transductive learner cannot: search the
        # queries' signs jointly per episode instead (the suite's poison_gradient_free attack).
        a_sq = acc(refs.poison_gradient_free, eps, n_queries=min(1000, 50 * steps))
        out.add("gradient-free", a_sq >= a_pgd - 0.1,
                f"{refs.poison_gradient_free} (gradient-free, the queries jointly: the learner is transductive) "
                f"{a_sq:.3f} vs PGD {a_pgd:.3f}", sign_search=a_sq, pgd=a_pgd)
    elif target == "query" and free_id is not None:
        a_sq = acc(free_id, eps, **dict(refs.gradient_free_options))
        out.add("gradient-free", a_sq >= a_pgd - 0.1,
                f"Square (gradient-free) {a_sq:.3f} vs PGD {a_pgd:.3f}", square=a_sq, pgd=a_pgd)
    elif norm == "linf":
        pid, popts = poison or poison_reference(steps, refs)
        poisoning_checks(registry, victim, episodes, eps=eps, target=target, steps=steps, generator_seed=generator_seed,
                         attack=pid, options=dict(popts), out=out, refs=refs)
    return out


def poisoning_checks(registry: Any, victim: Victim, episodes: Episode, *, eps: float, target: str, steps: int,
                     generator_seed: int, attack: str, options: dict[str, Any],
                     out: SanityResult | None = None, refs: SanityReferences = DEFAULT_REFERENCES) -> SanityResult:
    """Strength checks of a Linf poisoning attack (``support`` or ``both`` target) on a few
    episodes, each failure a reason to mark the result unreliable:

    - ``poison-vs-pgd``: on *every* episode it leaves no more queries correct than
      PGD-``steps`` (the suite's Linf ``iterative`` reference: cross-entropy, through
      adaptation);
    - ``poison-large-eps``: at eps 1 (the whole pixel range) accuracy is near zero
      (:data:`POISON_NEAR_ZERO`), not merely at chance;
    - ``poison-eps-monotone``: at ``eps`` it is at least as strong as at ``eps / 2``;
    - ``poison-steps-monotone``: with its ``steps`` it is at least as strong as with a
      quarter of them (when it has a ``steps`` option);
    - ``poison-gradient-free``: random search over the sign corners of the ball
      (the ``poison_gradient_free`` reference, ``sign-search`` by default, gradient-free, ``min(1000, 50 * steps)`` model evaluations per
      episode) is not far stronger (by more than 0.1), a sign of gradient masking
      through adaptation.
    """
    out = out if out is not None else SanityResult()

    def correct(attack_id: str, e: float, **opts: Any) -> Tensor:
        g = torch.Generator().manual_seed(generator_seed)
        return run_attack(registry.create("attack", attack_id, opts), victim, episodes, e, target, g).sum(-1)

    total = float(episodes.y_query[0].numel())
    name = attack + "".join(f"[{k}={v}]" for k, v in sorted(options.items()))
    mine = correct(attack, eps, **options)
    ref = correct(refs.for_norm("iterative", "linf"), eps, steps=steps)
    a, a_pgd = float(mine.sum()) / (total * len(mine)), float(ref.sum()) / (total * len(ref))
    worse = (mine > ref).nonzero()[:, 0].tolist()
    out.add("poison-vs-pgd", not worse,
            f"{name} {a:.3f} vs PGD-{steps} {a_pgd:.3f}" + (f"; weaker than PGD on episodes {worse}" if worse else
                                                            ", at least as strong on every episode"),
            poison=a, pgd=a_pgd, episodes_weaker=len(worse))
    a_big = float(correct(attack, 1.0, **options).sum()) / (total * len(mine))
    out.add("poison-large-eps", a_big <= POISON_NEAR_ZERO,
            f"{name} at eps 1 (the whole pixel range): {a_big:.3f}, expected <= {POISON_NEAR_ZERO}",
            poison_large_eps=a_big)
    a_half = float(correct(attack, eps / 2, **options).sum()) / (total * len(mine))
    out.add("poison-eps-monotone", a <= a_half + SANITY_TOL, f"eps {format_eps(eps)}: {a:.3f} vs eps/2: {a_half:.3f}",
            poison=a, poison_half_eps=a_half)
    n_steps = options.get("steps", getattr(registry.create("attack", attack, options).options, "steps", None))
    if n_steps is not None and n_steps >= 4:
        a_few = float(correct(attack, eps, **{**options, "steps": n_steps // 4}).sum()) / (total * len(mine))
        out.add("poison-steps-monotone", a <= a_few + SANITY_TOL, f"{n_steps} steps {a:.3f} vs {n_steps // 4}: {a_few:.3f}",
                poison=a, poison_few_steps=a_few)
    a_rs = float(correct(refs.poison_gradient_free, eps, n_queries=min(1000, 50 * steps)).sum()) / (total * len(mine))
    out.add("poison-gradient-free", a_rs >= a - 0.1, f"sign-search (gradient-free) {a_rs:.3f} vs {name} {a:.3f}",
            sign_search=a_rs, poison=a)
    return out
