"""Contract checks every attack plugin must pass (:data:`ATTACK_CHECKS`).

The checks attack :class:`PixelCentroid`, a nearest-centroid learner on raw pixels:
cheap, exactly differentiable, and linear in the queries for two classes, so the
one-step FGSM is the strongest query attack in the Linf ball there and a gradient
attack that is weaker than it is broken. They check, for every target the attack declares,
through the harness's own invariant checker (:func:`bench.attacks.check_perturbation`):
the perturbation stays in the eps ball and in [0, 1], the input is not mutated, the
untargeted part and the labels are bit-identical, the result is deterministic under
the seeded generator (whatever the global RNGs hold), targets it does not declare are
refused by the harness, and a gradient attack on the queries is at least as strong
as FGSM (through adaptation: it makes some query wrong).

Run them on an instance with cheap options (few steps): every check runs the attack
a few times per declared target.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F

from bench.components import Algorithm, Attack, Episode, EpisodeSpec
from bench.errors import MrbenchError, OptionsError
from bench.protocol.scenarios import NORMS, PERTURBED, TARGETS, perturbs
from bench.testing._common import KEBAB, ContractError, global_rng_consumed, same_episode, scrambled_global_rngs

if TYPE_CHECKING:
    from torch import Tensor

    from bench.components import Params

ATTACK_EPS = {"linf": 16 / 255, "l2": 0.5}
"""The budget each check attacks with, per norm. On :func:`attack_episodes` the one-step
attack (FGSM, or its L2 form) brings the linear learner's every query about twice over
its decision boundary at these budgets."""


class PixelCentroid(Algorithm):
    """Nearest class mean on raw pixels, ``logits = -||x - c_k||^2``: the victim of the
    attack contract checks. With two classes the margin is linear in the query."""

    id = "pixel-centroid"
    bn_policy = "no normalisation"

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        return {"scale": torch.ones(())}

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        onehot = F.one_hot(y_support, n_way).to(x_support.dtype)
        return (onehot.T @ x_support.flatten(1)) / onehot.sum(0)[:, None]

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        return -params["scale"] * (x_query.flatten(1)[:, None, :] - state[None]).square().sum(-1)


def attack_episodes(n_way: int = 2, n_episodes: int = 2, n_query: int = 2, size: int = 8, seed: int = 0) -> Episode:
    """1-shot episodes of ``size x size`` images for the attack checks.

    Class patterns differ by +-0.03 per pixel around a shared grey image (so every query
    can be flipped at the budgets of :data:`ATTACK_EPS`, and no attack has to reach the
    [0, 1] box to do it); the first image row is black and the last white in every image,
    so an attack that does not clip to [0, 1] leaves the box there. Queries are their
    class pattern plus noise of +-0.005.
    """
    g = torch.Generator().manual_seed(seed)
    base = 0.2 + 0.6 * torch.rand(n_episodes, 1, 1, size, size, generator=g)
    signs = torch.randint(0, 2, (n_episodes, n_way, 1, size, size), generator=g) * 2 - 1
    support = base + 0.03 * signs
    query = support.repeat_interleave(n_query, 1)
    query = query + 0.005 * (2 * torch.rand(query.shape, generator=g) - 1)
    for x in (support, query):
        x[..., 0, :] = 0.0
        x[..., -1, :] = 1.0
    labels = torch.arange(n_way)
    return Episode(support, labels.expand(n_episodes, n_way).contiguous(), query,
                   labels.repeat_interleave(n_query).expand(n_episodes, -1).contiguous())


def _setup(attack: Attack) -> tuple[Any, Episode, float]:
    from bench.attacks import Victim

    n_way = max(2, int(attack.min_way))
    algo = PixelCentroid()
    victim = Victim(algo, algo.init(EpisodeSpec(n_way, 1, 2, (1, 8, 8)), torch.Generator()), n_way)
    eps = ATTACK_EPS.get(attack.norm)
    if eps is None:
        raise ContractError(f"{attack.id}: norm {attack.norm!r} is not one of {', '.join(ATTACK_EPS)}")
    return victim, attack_episodes(n_way), eps


def _perturb(attack: Attack, victim: Any, episodes: Episode, eps: float, target: str, seed: int = 3) -> Episode:
    out = attack.perturb(victim, episodes, eps, target, torch.Generator().manual_seed(seed))
    if not isinstance(out, Episode):
        raise ContractError(f"{attack.id}: perturb returned {type(out).__name__}, not a bench.components.Episode")
    return out


def _max_support_changed(attack: Attack, episodes: Episode) -> int | None:
    # As the harness does (bench.attacks.run_attack): a poison_fraction option bounds the support images changed.
    frac = getattr(attack.options, "poison_fraction", 1.0)
    return None if frac >= 1 else max(1, math.ceil(frac * episodes.x_support.shape[1] - 1e-9))


def _harness_check(attack: Attack, eps: float, target: str, clean: Episode, before: tuple, adv: Episode) -> None:
    from bench.attacks import check_perturbation

    try:
        check_perturbation(attack.id, attack.norm, eps, target, clean, before, adv,
                           max_support_changed=_max_support_changed(attack, clean))
    except MrbenchError as exc:
        raise ContractError(exc.message) from None


def check_attack_metadata(attack: Attack) -> None:
    """A kebab-case ``id``, a known ``norm``, ``targets`` a non-empty subset of
    ``query``/``support``/``both``, ``min_way`` >= 2, a boolean ``gradient_free`` and
    options that serialise into result entries."""
    problems = []
    if not KEBAB.fullmatch(str(attack.id)):
        problems.append(f"id {attack.id!r} is not kebab-case")
    if attack.norm not in NORMS:
        problems.append(f"norm {attack.norm!r} is not one of {', '.join(NORMS)}")
    targets = tuple(attack.targets)
    if not targets or len(set(targets)) != len(targets) or not set(targets) <= set(TARGETS):
        problems.append(f"targets {targets!r} must be distinct values from {', '.join(TARGETS)}")
    if not isinstance(attack.min_way, int) or attack.min_way < 2:
        problems.append(f"min_way {attack.min_way!r} must be an int >= 2")
    if not isinstance(attack.gradient_free, bool):
        problems.append("gradient_free must be a bool")
    if problems:
        raise ContractError(f"{attack.id}: " + "; ".join(problems))
    attack.options.model_dump(mode="json")


def check_attack_stays_in_its_ball(attack: Attack) -> None:
    """For every declared target, the harness's checker accepts the result: shapes,
    dtypes and labels kept, images in [0, 1], each perturbed image within ``eps`` in the
    attack's norm, at most the ``poison_fraction`` of support images changed."""
    victim, clean, eps = _setup(attack)
    for target in attack.targets:
        before = tuple(t.clone() for t in clean.tensors())
        adv = _perturb(attack, victim, clean, eps, target)
        _harness_check(attack, eps, target, clean, before, adv)


def check_attack_does_not_mutate_its_input(attack: Attack) -> None:
    """``perturb`` leaves the clean episodes it gets exactly as they were (it returns new
    tensors for what it changes)."""
    victim, clean, eps = _setup(attack)
    for target in attack.targets:
        before = tuple(t.clone() for t in clean.tensors())
        _perturb(attack, victim, clean, eps, target)
        for name, b, t in zip(("x_support", "y_support", "x_query", "y_query"), before, clean.tensors()):
            if not torch.equal(b, t):
                raise ContractError(f"Attack {attack.id!r} (target={target}) mutated its input episode ({name}); "
                                    "return new tensors (e.g. x + delta) instead of changing the ones it gets in place")


def check_attack_deterministic(attack: Attack) -> None:
    """Same generator seed, same adversarial episodes, whatever torch's, numpy's and
    Python's global RNGs hold; the global torch RNG is left as it was (every random
    number comes from the ``generator`` argument; a library that draws from the global
    RNG runs under :func:`bench.attacks.seeded_global_rng`)."""
    victim, clean, eps = _setup(attack)
    for target in attack.targets:
        with scrambled_global_rngs(1):
            first, consumed = global_rng_consumed(lambda: _perturb(attack, victim, clean, eps, target))
        if consumed:
            raise ContractError(
                f"Attack {attack.id!r} (target={target}) drew from torch's global RNG; draw every random number from "
                "the generator argument (wrap a library that uses the global RNG in bench.attacks.seeded_global_rng, "
                "or use bench.attacks.run_torchattacks)")
        with scrambled_global_rngs(2):
            second = _perturb(attack, victim, clean, eps, target)
        differs = same_episode(first, second)
        if differs is not None:
            raise ContractError(
                f"Attack {attack.id!r} (target={target}) is not deterministic under its generator: two runs with the "
                f"same seed gave different {differs}; draw every random number from the generator argument")


def check_attack_honours_its_targets(attack: Attack) -> None:
    """Each declared target changes that part of the episode and nothing else (the rest
    bit-identical); the harness refuses every target the attack does not declare."""
    from bench.attacks import run_attack

    victim, clean, eps = _setup(attack)
    for target in attack.targets:
        adv = _perturb(attack, victim, clean, eps, target)
        changed = {name for name, a, c in (("x_support", adv.x_support, clean.x_support),
                                           ("x_query", adv.x_query, clean.x_query)) if not torch.equal(a, c)}
        allowed = PERTURBED[target]
        if changed - allowed:
            raise ContractError(f"Attack {attack.id!r} (target={target}) changed {', '.join(sorted(changed - allowed))}, "
                                f"which target {target!r} does not cover; return that part unchanged")
        if not changed:
            raise ContractError(f"Attack {attack.id!r} declares target {target!r} but changed nothing on episodes "
                                "whose every query it can flip; drop the target or attack it")
    for target in sorted(set(TARGETS) - set(attack.targets)):
        try:
            run_attack(attack, victim, clean, eps, target, torch.Generator().manual_seed(3))
        except MrbenchError as exc:
            if "cannot attack" in str(exc):
                continue
            raise
        raise ContractError(f"The harness ran attack {attack.id!r} on target {target!r}, which it does not declare")


def reference_fgsm(victim: Any, episodes: Episode, eps: float, norm: str, target: str) -> Episode:
    """One step of size ``eps`` on the summed query cross-entropy, through adaptation for
    the support: the signed gradient (Linf, FGSM) or the normalised one (L2), clipped to
    [0, 1]. What :func:`check_attack_at_least_as_strong_as_fgsm` compares with."""
    xs, ys, xq, yq = episodes.tensors()
    parts = dict(zip(("x_support", "x_query"), perturbs(target)))
    leaves = {k: (xs if k == "x_support" else xq).clone().requires_grad_(True) for k, on in parts.items() if on}
    with torch.enable_grad():
        logits = victim.logits(leaves.get("x_support", xs), ys, leaves.get("x_query", xq))
        loss = F.cross_entropy(logits.flatten(0, 1), yq.flatten(), reduction="sum")
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
    out = {"x_support": xs, "x_query": xq}
    for k, g in grads.items():
        if norm == "linf":
            step = eps * g.sign()
        else:
            step = eps * g / g.flatten(-3).norm(dim=-1).clamp_min(1e-12)[..., None, None, None]
        out[k] = (out[k] + step).clamp(0, 1).detach()
    return Episode(out["x_support"], ys, out["x_query"], yq)


def _accuracy(victim: Any, episodes: Episode) -> float:
    with torch.no_grad():
        logits = victim.logits(episodes.x_support, episodes.y_support, episodes.x_query)
    return float((logits.argmax(-1) == episodes.y_query).float().mean())


def check_attack_at_least_as_strong_as_fgsm(attack: Attack) -> None:
    """A gradient attack on the queries leaves no more queries correct than one FGSM step
    (:func:`reference_fgsm`) on :class:`PixelCentroid`. With two classes the learner is
    linear in each query, so FGSM is optimal in the Linf ball there (and its L2 form in
    the L2 ball); an attack weaker than it follows a wrong or cut gradient, or a wrong
    loss. Through adaptation (``support``, ``both``) the loss is not linear in the
    support and no attack is bound to beat one step, so there the attack only has to
    make some query wrong, where one FGSM step makes some wrong. Gradient-free attacks
    (``gradient_free = True``) pass: the evaluation's sanity checks compare them with PGD."""
    if attack.gradient_free:
        return
    victim, clean, eps = _setup(attack)
    before = _accuracy(victim, clean)
    for target in attack.targets:
        ref = _accuracy(victim, reference_fgsm(victim, clean, eps, attack.norm, target))
        got = _accuracy(victim, _perturb(attack, victim, clean, eps, target))
        if target == "query" and got > ref + 1e-9:
            raise ContractError(
                f"Attack {attack.id!r} (target=query, {attack.norm} eps {eps:.4g}) is weaker than one FGSM step on a "
                f"linear learner: accuracy {got:.3f} under it vs {ref:.3f} under FGSM (clean {before:.3f}). Check the "
                "sign and the loss it ascends, its step size, and that its gradient reaches the attacked images")
        if target != "query" and ref < before and got >= before:
            raise ContractError(
                f"Attack {attack.id!r} (target={target}, {attack.norm} eps {eps:.4g}) made no query wrong: accuracy "
                f"{got:.3f} under it, {before:.3f} clean, {ref:.3f} after one FGSM step through adaptation. Check "
                "the sign and the loss it ascends, and that its gradient goes through adapt")


def check_attack_strict_options(attack: Attack) -> None:
    """Unknown options are an error (:class:`bench.errors.OptionsError`)."""
    try:
        type(attack)(no_such_option_xyz=1)
    except OptionsError:
        return
    raise ContractError(f"{attack.id}: an unknown option was accepted; derive Options from bench.components.Options")


ATTACK_CHECKS: list[Callable[[Attack], None]] = [
    check_attack_metadata,
    check_attack_stays_in_its_ball,
    check_attack_does_not_mutate_its_input,
    check_attack_deterministic,
    check_attack_honours_its_targets,
    check_attack_at_least_as_strong_as_fgsm,
    check_attack_strict_options,
]
"""Every attack contract check."""
