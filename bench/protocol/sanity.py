"""The reference attacks of the attack-strength sanity checks, as a suite declares them.

:func:`bench.attacks.sanity_checks` vets an evaluation's attacks against reference
attacks: an iterative gradient attack (its steps, eps and a single-step attack bracket
it), a margin-loss attack with the same steps (a much stronger one means the
cross-entropy saturates or its logits are too flat to steer PGD, so the column is too
optimistic), a gradient-free attack (a much stronger one is a sign of gradient masking), and for
the poisoning targets a margin-loss attack through adaptation and a gradient-free search
over the support perturbations. Which attacks play these roles is part of the protocol,
so the suite says so in its ``[attacks.sanity]`` table; every role it leaves out (and
every norm it leaves out of a per-norm role) keeps :data:`DEFAULT`, the first-party
attacks every suite so far has used::

    [attacks.sanity]
    iterative = { linf = "pgd-linf", l2 = "pgd-l2" }
    single_step = { linf = "fgsm" }
    margin = { linf = "pgd-margin" }
    gradient_free = { linf = "square", l2 = "square-l2" }
    gradient_free_options = { n_queries = 1000 }
    poison = "apgd-margin"
    poison_options = { loss = "cw" }
    poison_gradient_free = "sign-search"

The ids are looked up in the registry when the checks run, so a third-party attack can
play any role (an unknown id is reported with the known ones).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping

from bench.errors import MrbenchError

__all__ = ["DEFAULT", "SanityReferences", "sanity_references"]

_NORMS = ("linf", "l2")


def _ro(d: Mapping[str, Any]) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(d.items()))


@dataclass(frozen=True)
class SanityReferences:
    """Which attacks the sanity checks run, per role.

    :param iterative: per norm, the iterative gradient attack (it takes ``steps``); the
        checks run it at the evaluation's eps and steps, at eps/2, at a quarter of the
        steps and at an eps spanning the whole pixel range.
    :param single_step: per norm, a single-step attack the iterative one must beat
        (no check for a norm without one).
    :param margin: per norm, the margin-loss attack of the query target's loss check
        (it takes ``steps``: the evaluation's); it must not be far stronger than the
        iterative reference (no check for a norm without one).
    :param gradient_free: per norm, the gradient-free attack of the query target's
        masking check, with ``gradient_free_options``.
    :param poison: the margin-loss poisoning attack the checks vet when the evaluation
        runs no poisoning ensemble on a support or both target (``poison_options``,
        plus ``steps``: as many as the evaluation's PGD, at least 20).
    :param poison_gradient_free: the gradient-free poisoning attack (it takes
        ``n_queries``) of the support and both targets' masking check.
    :param poison_ensemble: the suite's poisoning ensemble (``[attacks] poison_ensemble``):
        when an evaluation runs it on a support or both target, the checks vet it
        instead of ``poison``.
    """

    iterative: tuple[tuple[str, str], ...] = (("l2", "pgd-l2"), ("linf", "pgd-linf"))
    single_step: tuple[tuple[str, str], ...] = (("linf", "fgsm"),)
    margin: tuple[tuple[str, str], ...] = (("linf", "pgd-margin"),)
    gradient_free: tuple[tuple[str, str], ...] = (("l2", "square-l2"), ("linf", "square"))
    gradient_free_options: tuple[tuple[str, Any], ...] = (("n_queries", 1000),)
    poison: str = "apgd-margin"
    poison_options: tuple[tuple[str, Any], ...] = (("loss", "cw"),)
    poison_gradient_free: str = "sign-search"
    poison_ensemble: str = "apgd-ensemble"

    def for_norm(self, role: str, norm: str) -> str | None:
        """The attack id playing ``role`` (``iterative``, ``single_step``, ``margin``, ``gradient_free``)
        for ``norm``; ``None`` where the suite declares none."""
        return dict(getattr(self, role)).get(norm)

    def poison_reference(self, steps: int) -> tuple[str, tuple[tuple[str, Any], ...]]:
        """The poisoning attack vetted when the evaluation runs no poisoning ensemble on the
        target: ``poison`` with ``poison_options`` and ``max(20, steps)`` steps."""
        return self.poison, _ro({**dict(self.poison_options), "steps": max(20, steps)})


DEFAULT = SanityReferences()
"""The references of a suite without an ``[attacks.sanity]`` table."""

_PER_NORM = ("iterative", "single_step", "margin", "gradient_free")
_OPTIONS = ("gradient_free_options", "poison_options")
_IDS = ("poison", "poison_gradient_free")


def sanity_references(attacks: Mapping[str, Any] | None, where: str = "the suite") -> SanityReferences:
    """The references a suite's ``[attacks]`` table declares (its ``sanity`` sub-table and
    its ``poison_ensemble``), the :data:`DEFAULT` for every role it leaves out.

    :raises MrbenchError: an unknown key, a norm other than ``linf``/``l2``, or a value
        of the wrong type, naming the key and what it takes.
    """
    attacks = attacks or {}
    table = attacks.get("sanity") or {}
    if not isinstance(table, Mapping):
        raise MrbenchError(f"[attacks.sanity] of {where} must be a table, not {type(table).__name__}.",
                           "See bench/protocol/sanity.py for its keys.")
    known = [f.name for f in fields(SanityReferences) if f.name != "poison_ensemble"]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise MrbenchError(f"[attacks.sanity] of {where} has unknown key(s) {', '.join(unknown)}.",
                           f"Its keys: {', '.join(known)}.")
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key in _PER_NORM:
            if not isinstance(value, Mapping) or set(value) - set(_NORMS) or \
                    not all(isinstance(v, str) and v for v in value.values()):
                raise MrbenchError(f"[attacks.sanity] {key} of {where} must map norms to attack ids, "
                                   f"e.g. {{ linf = \"pgd-linf\" }}; got {value!r}.",
                                   f"Its norms: {', '.join(_NORMS)}.")
            values[key] = _ro({**dict(getattr(DEFAULT, key)), **value})  # declared norms override
        elif key in _OPTIONS:
            if not isinstance(value, Mapping):
                raise MrbenchError(f"[attacks.sanity] {key} of {where} must be a table of options; got {value!r}.",
                                   "e.g. { n_queries = 1000 }.")
            values[key] = _ro(value)
        else:
            if not isinstance(value, str) or not value:
                raise MrbenchError(f"[attacks.sanity] {key} of {where} must be an attack id; got {value!r}.",
                                   "`mrbench plugins` lists the attacks.")
            values[key] = value
    if attacks.get("poison_ensemble"):
        values["poison_ensemble"] = str(attacks["poison_ensemble"])
    return SanityReferences(**values)
