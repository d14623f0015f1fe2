"""First-party attacks.

Query evasion runs torchattacks on the adapted learners wrapped as one ``nn.Module``
(:class:`bench.attacks.QueryModule`): attacks that always evaluate the whole batch
(FGSM, PGD, CW) attack every episode of a chunk in one call; attacks that evaluate
subsets of the points (APGD, Square, FAB and the AutoAttack ensemble) run one episode
at a time. Support poisoning and joint attacks differentiate through ``adapt`` with
mrbench's own batched PGD (:func:`bench.attacks.pgd`), which torchattacks cannot do.

Step sizes are given relative to eps (``step_size`` times eps), so one option set
serves an eps sweep.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field

from bench.attacks import Victim, apgd, pgd, project, sign_search, torchattacks_query
from bench.components import Attack, Episode, Options


def _ta():
    import torchattacks

    return torchattacks


class _PGDOptions(Options):
    steps: int = Field(20, ge=1, description="gradient steps")
    step_size: float | None = Field(None, gt=0, description="step size as a multiple of eps; default 2.5/steps (Madry et al.)")
    random_start: bool = Field(True, description="start from a uniform random point of the ball")
    restarts: int = Field(1, ge=1, description="independent restarts; the worst case per query (or episode) is kept")
    poison_fraction: float = Field(1.0, gt=0, le=1, description="fraction of support images a support/both attack may change")


def _rel_step(options: Any) -> float:
    return options.step_size if options.step_size is not None else 2.5 / options.steps


class _OwnTargets:
    """Support and joint attacks through adaptation with mrbench's batched PGD."""

    def _own(self, victim: Victim, episodes: Episode, eps: float, target: str, generator: torch.Generator,
             *, steps: int, step_size: float, random_start: bool, restarts: int) -> Episode:
        return pgd(victim, episodes, eps=eps, norm=self.norm, target=target, steps=steps, step_size=step_size * eps,
                   random_start=random_start, restarts=restarts, generator=generator,
                   poison_fraction=self.options.poison_fraction)


class FGSM(_OwnTargets, Attack):
    """Fast gradient sign method (Goodfellow et al. 2015): one Linf step of size eps.

    Query target: ``torchattacks.FGSM``; support / both: one signed step through
    adaptation."""

    id = "fgsm"
    norm = "linf"
    targets = ("query", "support", "both")

    class Options(Options):
        poison_fraction: float = Field(1.0, gt=0, le=1)

    def perturb(self, victim, episodes, eps, target, generator):
        if target == "query":
            return torchattacks_query(victim, episodes, lambda m: _ta().FGSM(m, eps=eps), generator, per_episode=False)
        return self._own(victim, episodes, eps, target, generator, steps=1, step_size=1.0, random_start=False, restarts=1)


class _PGD(_OwnTargets, Attack):
    targets = ("query", "support", "both")
    Options = _PGDOptions

    def _library(self, module, eps: float):
        raise NotImplementedError

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        if target != "query":
            return self._own(victim, episodes, eps, target, generator, steps=o.steps, step_size=_rel_step(o),
                             random_start=o.random_start, restarts=o.restarts)
        best = episodes
        for r in range(o.restarts):
            adv = torchattacks_query(victim, episodes, lambda m: self._library(m, eps), generator, per_episode=False)
            if r == 0:
                best = adv
                continue
            with torch.no_grad():  # keep, per query, a restart that fools the learner
                wrong = victim.logits(episodes.x_support, episodes.y_support, adv.x_query).argmax(-1) != episodes.y_query
                done = victim.logits(episodes.x_support, episodes.y_support, best.x_query).argmax(-1) != episodes.y_query
            take = (wrong & ~done).view(*wrong.shape, 1, 1, 1)
            best = Episode(best.x_support, best.y_support, torch.where(take, adv.x_query, best.x_query), best.y_query)
        return best


class PGDLinf(_PGD):
    """Projected gradient descent in the Linf ball (Madry et al. 2018) on cross-entropy.

    Query target: ``torchattacks.PGD``; support / both: mrbench's batched PGD through
    adaptation (worst iterate kept)."""

    id = "pgd-linf"
    norm = "linf"

    def _library(self, module, eps):
        o = self.options
        return _ta().PGD(module, eps=eps, alpha=_rel_step(o) * eps, steps=o.steps, random_start=o.random_start)


class PGDL2(_PGD):
    """PGD in the L2 ball (per image). Query target: ``torchattacks.PGDL2``."""

    id = "pgd-l2"
    norm = "l2"

    def _library(self, module, eps):
        o = self.options
        return _ta().PGDL2(module, eps=eps, alpha=_rel_step(o) * eps, steps=o.steps, random_start=o.random_start)


class _NonNegativeLogits(torch.nn.Module):
    """A query module's logits minus their per-row minimum: the same softmax and argmax,
    every logit >= 0. torchattacks' CW takes the largest other-class logit as
    ``max((1 - onehot) * logits)``, which is the masked-out 0 whenever every logit is
    negative (distance-based learners: ProtoNet's are minus squared distances); its loss
    is then constant and CW returns the clean images."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.module(x)
        return logits - logits.min(dim=-1, keepdim=True).values


class CWL2(Attack):
    """Carlini-Wagner L2 (``torchattacks.CW``), projected onto the eps L2 ball.

    CW minimises the perturbation size rather than staying in a budget; the result is
    projected onto the ball of radius eps (and [0, 1]) so it is scored under the same
    threat model as the others. It attacks the logits shifted to be non-negative
    (:class:`_NonNegativeLogits`; version 2: version 1 left every learner with negative
    logits unattacked)."""

    id = "cw-l2"
    version = "2"
    norm = "l2"
    targets = ("query",)

    class Options(Options):
        c: float = Field(1.0, gt=0, description="weight of the classification term")
        kappa: float = Field(0.0, ge=0, description="confidence margin")
        steps: int = Field(100, ge=1)
        lr: float = Field(0.01, gt=0)

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        adv = torchattacks_query(victim, episodes, lambda m: _ta().CW(_NonNegativeLogits(m), c=o.c, kappa=o.kappa, steps=o.steps, lr=o.lr),
                                 generator, per_episode=False)
        d = project(adv.x_query - episodes.x_query, eps, "l2")
        xq = (episodes.x_query + d).clamp(0, 1)
        return Episode(episodes.x_support, episodes.y_support, xq, episodes.y_query)


def _seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device).item())


class APGDCE(Attack):
    """Auto-PGD with cross-entropy (Croce & Hein 2020). Query target: ``torchattacks.APGD``,
    one episode at a time; support / both: mrbench's own APGD through adaptation
    (:func:`bench.attacks.apgd`, the loss of the clean queries after adaptation on the
    poisoned support)."""

    id = "apgd-ce"
    norm = "linf"
    targets = ("query", "support", "both")
    loss = "ce"

    class Options(Options):
        steps: int = Field(100, ge=1, description="iterations (AutoAttack's standard: 100)")
        restarts: int = Field(1, ge=1)

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        if target != "query":
            return apgd(victim, episodes, eps=eps, target=target, steps=o.steps, restarts=o.restarts, loss="ce",
                        generator=generator)
        return torchattacks_query(
            victim, episodes,
            lambda m: _ta().APGD(m, norm="Linf", eps=eps, steps=o.steps, n_restarts=o.restarts, loss=self.loss,
                                 seed=_seed(generator)),
            generator, per_episode=True)


class APGDDLR(APGDCE):
    """Auto-PGD with the difference-of-logits-ratio loss, ``torchattacks.APGD``; needs at
    least 3 ways. Query target only: ``apgd-margin`` attacks every target with DLR."""

    id = "apgd-dlr"
    loss = "dlr"
    min_way = 3
    targets = ("query",)


class _OwnAPGDOptions(Options):
    steps: int = Field(100, ge=1, description="iterations (AutoAttack's standard: 100)")
    restarts: int = Field(1, ge=1, description="random starts (targeted: per target class); the worst is kept")
    poison_fraction: float = Field(1.0, gt=0, le=1, description="fraction of support images a support/both attack may change")


_MARGIN = Field("margin", description="margin: DLR where n_way >= 3, the CW logit margin below; or dlr, cw")


class APGDMargin(Attack):
    """Auto-PGD on a margin loss, mrbench's own :func:`bench.attacks.apgd` on every target
    (through adaptation for support / both). ``loss``: ``margin`` (default), DLR (Croce &
    Hein 2020) where ``n_way >= 3`` and the CW logit margin with 2 ways; or ``cw`` or
    ``dlr`` explicitly. Computed per query, so misclassified queries do not take the
    gradient from the ones still correct (see :func:`bench.attacks.query_loss`)."""

    id = "apgd-margin"
    norm = "linf"
    targets = ("query", "support", "both")

    class Options(_OwnAPGDOptions):
        loss: Literal["margin", "dlr", "cw"] = _MARGIN

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return apgd(victim, episodes, eps=eps, target=target, steps=o.steps, restarts=o.restarts, loss=o.loss,
                    generator=generator, poison_fraction=o.poison_fraction)


class PGDMargin(_PGD):
    """PGD in the Linf ball on a margin loss (``loss``: as ``apgd-margin``'s, default the CW
    margin), mrbench's own :func:`bench.attacks.pgd` on every target (through adaptation
    for support / both): the fixed-step reference the APGD ensemble is compared with."""

    id = "pgd-margin"
    norm = "linf"

    class Options(_PGDOptions):
        loss: Literal["margin", "dlr", "cw"] = Field("cw", description="cw (default), dlr, or margin (DLR where "
                                                     "n_way >= 3, CW below)")

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return pgd(victim, episodes, eps=eps, norm=self.norm, target=target, steps=o.steps,
                   step_size=_rel_step(o) * eps, random_start=o.random_start, restarts=o.restarts,
                   generator=generator, poison_fraction=o.poison_fraction, loss=o.loss)


class APGDTargeted(Attack):
    """Targeted Auto-PGD, mrbench's own :func:`bench.attacks.apgd` on every target: each
    query is pushed toward each of its ``n_target_classes`` most likely wrong classes
    (under the clean episode) in turn, with targeted DLR where ``n_way >= 4`` and the
    target's log-probability below that (the support-poisoning papers' targeted attack,
    per query)."""

    id = "apgd-targeted"
    norm = "linf"
    targets = ("query", "support", "both")

    class Options(_OwnAPGDOptions):
        n_target_classes: int | None = Field(None, ge=1, description="wrong classes targeted in turn (default n_way - 1)")

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return apgd(victim, episodes, eps=eps, target=target, steps=o.steps, restarts=o.restarts, loss="targeted",
                    n_target_classes=o.n_target_classes, generator=generator, poison_fraction=o.poison_fraction)


class APGDEnsemble(Attack):
    """The poisoning ensemble for the support and both targets: APGD through adaptation
    (:func:`bench.attacks.apgd`) with the CW margin, targeted APGD (toward each of the
    ``n_target_classes`` most likely wrong classes), APGD-DLR (``n_way >= 3``) and
    APGD-CE, each for ``steps`` iterations with ``restarts`` random starts (targeted: per
    target class). An attacker poisons the support set once per episode, so each episode
    gets the single member run that leaves the fewest of its queries correct, never a
    per-query mix of different poisoned supports. Members run in that order, and an
    episode whose every query is already wrong is not attacked further."""

    id = "apgd-ensemble"
    norm = "linf"
    targets = ("support", "both")

    class Options(Options):
        steps: int = Field(100, ge=1, description="iterations of every member run (AutoAttack's standard: 100)")
        restarts: int = Field(1, ge=1, description="random starts of every member (targeted: per target class)")
        n_target_classes: int = Field(3, ge=1, description="targeted APGD: wrong classes targeted in turn (at most n_way - 1)")
        poison_fraction: float = Field(1.0, gt=0, le=1, description="fraction of support images that may change")

    def members(self, n_way: int) -> list[str]:
        """The members' losses (:func:`bench.attacks.query_loss`), in the order they run."""
        return ["cw", "targeted"] + (["dlr"] if n_way >= 3 else []) + ["ce"]

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        best = episodes
        best_correct = None
        for loss in self.members(victim.n_way):
            todo = torch.arange(episodes.x_support.shape[0]) if best_correct is None else (best_correct > 0).nonzero()[:, 0]
            if todo.numel() == 0:
                break
            sub = episodes[todo] if todo.numel() < episodes.x_support.shape[0] else episodes
            adv = apgd(victim, sub, eps=eps, target=target, steps=o.steps, loss=loss,
                       restarts=o.restarts, n_target_classes=o.n_target_classes,
                       generator=generator, poison_fraction=o.poison_fraction)
            with torch.no_grad():
                correct = (victim.logits(adv.x_support, adv.y_support, adv.x_query).argmax(-1) == adv.y_query).sum(-1)
            if best_correct is None:
                best, best_correct = adv, correct
                continue
            take = correct < best_correct[todo]
            idx = todo[take]
            if idx.numel():
                best = Episode(*(b.index_copy(0, idx, a[take]) if i in (0, 2) else b
                                 for i, (b, a) in enumerate(zip(best.tensors(), adv.tensors()))))
                best_correct = best_correct.index_copy(0, idx, correct[take])
        return best


class APGDT(Attack):
    """Targeted Auto-PGD (DLR-targeted), ``torchattacks.APGDT`` with
    ``n_target_classes = n_way - 1`` (every other class); needs at least 4 ways."""

    id = "apgd-t"
    norm = "linf"
    targets = ("query",)
    min_way = 4

    class Options(Options):
        steps: int = Field(100, ge=1)
        restarts: int = Field(1, ge=1)

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return torchattacks_query(
            victim, episodes,
            lambda m: _ta().APGDT(m, norm="Linf", eps=eps, steps=o.steps, n_restarts=o.restarts,
                                  n_classes=victim.n_way, seed=_seed(generator)),
            generator, per_episode=True)


class Square(Attack):
    """Square Attack (Andriushchenko et al. 2020), gradient-free, ``torchattacks.Square``."""

    id = "square"
    norm = "linf"
    targets = ("query",)
    gradient_free = True
    _ta_norm = "Linf"

    class Options(Options):
        n_queries: int = Field(5000, ge=1, description="model queries per point (AutoAttack's standard: 5000)")
        p_init: float = Field(0.8, gt=0, le=1)

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return torchattacks_query(
            victim, episodes,
            lambda m: _ta().Square(m, norm=self._ta_norm, eps=eps, n_queries=o.n_queries, p_init=o.p_init,
                                   seed=_seed(generator)),
            generator, per_episode=True)


class SquareL2(Square):
    """Square Attack in the L2 ball."""

    id = "square-l2"
    norm = "l2"
    _ta_norm = "L2"


class AutoAttack(Attack):
    """The AutoAttack standard ensemble (Croce & Hein 2020) with its official budgets:
    APGD-CE (100 iterations), APGD-T (100 iterations, ``n_way - 1`` target classes),
    FAB-T (100 iterations, ``n_way - 1`` target classes) and Square (5000 queries),
    each run on the points the previous ones did not fool (``torchattacks.MultiAttack``).
    torchattacks' own ``AutoAttack`` uses 10-iteration APGD, so it is not used.

    With fewer than 4 ways the targeted attacks are undefined; the ensemble then runs
    APGD-CE, untargeted FAB and Square, and says so in its ``describe()``.
    """

    id = "autoattack"
    norm = "linf"
    targets = ("query",)

    class Options(Options):
        version: Literal["standard"] = "standard"
        apgd_steps: int = Field(100, ge=1)
        fab_steps: int = Field(100, ge=1)
        square_queries: int = Field(5000, ge=1)

    def components(self, n_way: int) -> list[str]:
        return ["apgd-ce", "apgd-t", "fab-t", "square"] if n_way >= 4 else ["apgd-ce", "fab", "square"]

    def perturb(self, victim, episodes, eps, target, generator):
        o, ta, n = self.options, _ta(), victim.n_way

        def make(m):
            s = _seed(generator)
            parts = [ta.APGD(m, norm="Linf", eps=eps, steps=o.apgd_steps, n_restarts=1, loss="ce", seed=s)]
            if n >= 4:
                parts.append(ta.APGDT(m, norm="Linf", eps=eps, steps=o.apgd_steps, n_restarts=1, n_classes=n, seed=s))
                parts.append(ta.FAB(m, norm="Linf", eps=eps, steps=o.fab_steps, n_restarts=1, multi_targeted=True,
                                    n_classes=n, seed=s))
            else:
                parts.append(ta.FAB(m, norm="Linf", eps=eps, steps=o.fab_steps, n_restarts=1, n_classes=n, seed=s))
            parts.append(ta.Square(m, norm="Linf", eps=eps, n_queries=o.square_queries, n_restarts=1, seed=s))
            return ta.MultiAttack(parts)

        return torchattacks_query(victim, episodes, make, generator, per_episode=True)


class SignSearch(Attack):
    """Gradient-free random search over the sign corners of the Linf ball
    (:func:`bench.attacks.sign_search`), per episode: the check against gradient masking
    of the poisoning attacks through adaptation, and of query attacks on a transductive
    learner (the queries searched jointly; Square cannot attack one)."""

    id = "sign-search"
    norm = "linf"
    targets = ("query", "support", "both")
    gradient_free = True

    class Options(Options):
        n_queries: int = Field(1000, ge=1, description="model evaluations per episode")
        p_init: float = Field(0.1, gt=0, le=1, description="fraction of the signs flipped per step at first")
        poison_fraction: float = Field(1.0, gt=0, le=1, description="fraction of support images that may change")

    def perturb(self, victim, episodes, eps, target, generator):
        o = self.options
        return sign_search(victim, episodes, eps=eps, target=target, queries=o.n_queries, generator=generator,
                           p_init=o.p_init, poison_fraction=o.poison_fraction)


ATTACKS: list[type[Attack]] = [FGSM, PGDLinf, PGDL2, CWL2, APGDCE, APGDDLR, APGDT, Square, SquareL2, AutoAttack,
                               APGDMargin, APGDTargeted, APGDEnsemble, PGDMargin, SignSearch]
