"""Scenarios: the cells an evaluation measures, and the only grammar of their names.

A result entry's ``metrics`` are keyed by scenario name. Four kinds exist:

``clean``                        :class:`Clean`: the suite's episodes as they are.
``<shift>@<severity>``           :class:`ShiftCell`, e.g. ``gaussian-noise@3``.
``<attack>[k=v]...@<eps>:<target>``
                                 :class:`AttackCell`, e.g. ``pgd-linf[steps=40]@16/255:query``;
                                 non-default options are part of the name, so two budgets
                                 never share a column.
``ensemble@<eps>:<target>``      :class:`Ensemble`: every attack of one (eps, target) combined.

``cell.name`` writes a name and :func:`parse` reads it back (``parse(n).name == n``).
The inputs people type are read here too, so every spelling goes through one parser:
the CLI's ``--shift ID[:SEV]`` and ``--attacks ID[k=v,...] --eps E --target T``
(:func:`shifts_from_cli`, :func:`attacks_from_cli`), a grid's scenarios (:func:`from_grid`,
which also takes ``shift:severity``) and a suite's ``[shifts]`` table (:func:`shift_grid`).
A shift is written ``id@severity`` or ``id:severity`` on input; attack options
``[a=1,b=2]`` or ``[a=1][b=2]``.

:func:`check_attack` (and :meth:`AttackCell.check`) is the one place that decides whether
an attack can run on a target and on episodes of ``n_way`` ways.

This module imports neither torch nor the registry, so the report, the leaderboard and
the CLI read names cheaply.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Sequence, Union, get_args

from bench.errors import MrbenchError

if TYPE_CHECKING:
    from bench.suites import Suite

Target = Literal["query", "support", "both"]
"""What an attack perturbs: the queries (evasion), the support set (poisoning), or both."""
Norm = Literal["linf", "l2"]
Kind = Literal["clean", "shift", "attack", "ensemble"]

TARGETS: tuple[Target, ...] = get_args(Target)
NORMS: tuple[Norm, ...] = get_args(Norm)
KINDS: tuple[Kind, ...] = get_args(Kind)
PERTURBED: dict[Target, frozenset[str]] = {
    "query": frozenset({"x_query"}), "support": frozenset({"x_support"}), "both": frozenset({"x_support", "x_query"}),
}
"""The parts of an episode each target perturbs (the rest must come back unchanged)."""
ADVERSARIAL_TRAINING_TARGETS: tuple[Target, ...] = ("query", "support")
"""What adversarial meta-training may attack: adversarial querying or poisoned support sets."""

Options = tuple[tuple[str, Any], ...]
"""An attack's non-default options as sorted ``(key, value)`` pairs (hashable, part of the name)."""

_EPS = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)(?:\s*/\s*(\d+(?:\.\d*)?))?\s*$")
_ID = r"[^@\[\]:\s]+"
_SHIFT_NAME = re.compile(rf"^(?P<id>{_ID})@(?P<sev>\d+)$")
_ATTACK_NAME = re.compile(rf"^(?P<id>{_ID})(?P<opts>(?:\[[^\]]*\])*)@(?P<eps>[^:@\s]+):(?P<target>[^:@\s]+)$")
_NAMES_HELP = ("Scenario names are clean, SHIFT@SEVERITY (gaussian-noise@3), ATTACK[key=value]...@EPS:TARGET "
               f"(pgd-linf[steps=40]@16/255:query) or ensemble@EPS:TARGET; targets: {', '.join(TARGETS)}.")


# --------------------------------------------------------------------------- eps


def parse_eps(text: str | float) -> float:
    """``"16/255"`` -> 0.0627..., ``"0.5"`` -> 0.5; a clear error for anything else."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        m = _EPS.match(str(text))
        if not m:
            raise MrbenchError(f"Cannot read eps {text!r}.", "Write it as a number (0.5) or a fraction of 255 (16/255).")
        denominator = float(m.group(2)) if m.group(2) else 1.0
        value = float(m.group(1)) / denominator if denominator else math.inf
    if not math.isfinite(value) or value < 0:
        raise MrbenchError(f"eps must be a finite number >= 0, got {text!r}.")
    return value


def format_eps(eps: float) -> str:
    """A stable, readable name for ``eps``: ``16/255`` when it is a multiple of 1/255."""
    frac = Fraction(eps).limit_denominator(255 * 8)
    if abs(float(frac) - eps) < 1e-12 and (frac * 255).denominator == 1 and eps != 0:
        return f"{int(frac * 255)}/255"
    return repr(float(eps))


# --------------------------------------------------------------------------- cells


@dataclass(frozen=True)
class Clean:
    """The suite's episodes, unchanged."""

    kind: ClassVar[Kind] = "clean"

    @property
    def name(self) -> str:
        return "clean"

    @property
    def label(self) -> str:
        return "clean"


@dataclass(frozen=True)
class ShiftCell:
    """A distribution shift at one severity; named ``<shift>@<severity>``.

    It unpacks as the ``(shift, severity)`` pair that :func:`bench.evaluate` takes.
    """

    shift: str
    severity: int
    kind: ClassVar[Kind] = "shift"

    @property
    def name(self) -> str:
        return f"{self.shift}@{self.severity}"

    @property
    def label(self) -> str:
        return self.shift

    def __iter__(self) -> Iterator[Any]:
        return iter((self.shift, self.severity))


@dataclass(frozen=True)
class AttackCell:
    """One attack cell of an evaluation: attack id, eps, target and options.

    Its name is ``<attack>@<eps>:<target>``, e.g. ``pgd-linf@16/255:query``; non-default
    options are part of it (``pgd-linf[steps=40]@16/255:query``).
    """

    attack: str
    eps: float
    target: str
    options: Options = ()
    kind: ClassVar[Kind] = "attack"

    @property
    def label(self) -> str:
        """The attack id with its options, e.g. ``pgd-linf[steps=40]``."""
        return self.attack + "".join(f"[{k}={v}]" for k, v in self.options)

    @property
    def eps_name(self) -> str:
        return format_eps(self.eps)

    @property
    def name(self) -> str:
        return f"{self.label}@{self.eps_name}:{self.target}"

    def check(self, attack: Any, n_way: int | None = None, *, where: str | None = None) -> None:
        """Raise unless ``attack`` (its class or an instance) can run this cell; see :func:`check_attack`."""
        check_attack(attack, self.target, n_way, where=where)


@dataclass(frozen=True)
class Ensemble:
    """Every attack of one ``(eps, target)`` combined (see :func:`bench.attacks.combine_ensemble`);
    named ``ensemble@<eps>:<target>``."""

    eps: float
    target: str
    kind: ClassVar[Kind] = "ensemble"

    @property
    def label(self) -> str:
        return "ensemble"

    @property
    def eps_name(self) -> str:
        return format_eps(self.eps)

    @property
    def name(self) -> str:
        return f"ensemble@{self.eps_name}:{self.target}"


Scenario = Union[Clean, ShiftCell, AttackCell, Ensemble]


def perturbs(target: str) -> tuple[bool, bool]:
    """Whether ``target`` perturbs ``(the support images, the query images)``; neither for an unknown target."""
    parts = PERTURBED.get(target, frozenset())  # type: ignore[call-overload]
    return "x_support" in parts, "x_query" in parts


def check_attack(attack: Any, target: str, n_way: int | None = None, *, where: str | None = None) -> None:
    """The one check that ``attack`` can attack ``target`` on episodes of ``n_way`` ways.

    :param attack: an attack class or instance (its ``id``, ``targets`` and ``min_way``).
    :param n_way: the episodes' ways; ``None`` skips the ``min_way`` check.
    :param where: what is being read, put before the message (e.g. a grid scenario).
    :raises MrbenchError: the target is not among the attack's, or ``n_way`` is below its ``min_way``.
    """
    prefix = f"{where}: " if where else ""
    if target not in attack.targets:
        raise MrbenchError(f"{prefix}Attack {attack.id!r} cannot attack the {target}.",
                           f"Its targets: {', '.join(attack.targets)}; see `mrbench attacks`.")
    if n_way is not None and n_way < attack.min_way:
        raise MrbenchError(f"{prefix}Attack {attack.id!r} needs episodes of at least {attack.min_way} ways, "
                           f"got {n_way}.", "Use another attack for this suite (see `mrbench attacks`).")


# --------------------------------------------------------------------------- names


def parse(name: str) -> Scenario:
    """The scenario a result entry's ``metrics`` key names; the inverse of ``.name``.

    :raises MrbenchError: ``name`` is not a scenario name, or not the canonical spelling
        (``pgd-linf@0.50:query`` for ``pgd-linf@0.5:query``); the message says what is valid.
    """
    cell = _read_name(name)
    if cell.name != name:
        raise MrbenchError(f"Scenario {name!r} is not written as mrbench writes it ({cell.name!r}).", _NAMES_HELP)
    return cell


def _read_name(name: str) -> Scenario:
    """A scenario name in any accepted spelling of eps and options (attack options kept in order)."""
    if name == "clean":
        return Clean()
    m = _SHIFT_NAME.match(name)
    if m:
        return ShiftCell(m["id"], int(m["sev"]))
    m = _ATTACK_NAME.match(name)
    if not m:
        raise MrbenchError(f"Cannot read scenario {name!r}.", _NAMES_HELP)
    if m["target"] not in TARGETS:
        raise MrbenchError(f"Scenario {name!r}: unknown target {m['target']!r}.", _NAMES_HELP)
    try:
        eps = parse_eps(m["eps"])
    except MrbenchError as exc:
        raise MrbenchError(f"Scenario {name!r}: {exc.message}", " ".join(filter(None, (exc.hint, _NAMES_HELP)))) from None
    if m["id"] != "ensemble":
        return AttackCell(m["id"], eps, m["target"], tuple(_read_options(m["opts"], name).items()))
    if m["opts"]:
        raise MrbenchError(f"Scenario {name!r}: an ensemble has no options.", _NAMES_HELP)
    return Ensemble(eps, m["target"])


# --------------------------------------------------------------------------- inputs


def parse_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, booleans), else strings."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise MrbenchError(f"Option {pair!r} is not of the form key=value.", "Write e.g. `-o inner_lr=0.5`.")
        k, v = pair.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def split_list(text: str | None) -> list[str]:
    """Comma-separated list, commas inside ``[...]`` kept (``pgd-linf[steps=40,restarts=2]``)."""
    out, depth, cur = [], 0, ""
    for ch in text or "":
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def _read_options(text: str, spec: str) -> dict[str, Any]:
    """``[a=1,b=2]``, ``[a=1][b=2]`` (or a mix) -> options, in the order written."""
    unreadable = MrbenchError(f"Cannot read attack {spec!r}.", "Write ID or ID[key=value,...], e.g. pgd-linf[steps=40].")
    groups, depth, cur = [], 0, ""
    for ch in text:
        if ch == "[" and depth == 0:
            cur = ""
        elif ch == "]" and depth == 1:
            groups.append(cur)
        elif depth == 0:
            raise unreadable
        else:
            cur += ch
        depth += (ch == "[") - (ch == "]")
    if depth:
        raise unreadable
    return parse_options([pair for group in groups for pair in split_list(group)])


def parse_attack(spec: str) -> tuple[str, Options]:
    """``pgd-linf``, ``pgd-linf[steps=40,restarts=2]`` or ``pgd-linf[restarts=2][steps=40]`` -> (id, sorted options)."""
    attack_id, bracket, rest = spec.partition("[")
    opts = _read_options(bracket + rest, spec) if bracket else {}
    return attack_id.strip(), tuple(sorted(opts.items()))


def parse_shift(text: str, where: str) -> tuple[str, int | None]:
    """``ID@SEVERITY`` or ``ID:SEVERITY`` -> (id, severity); a bare ``ID`` -> (id, ``None``).

    :param where: what is being read, put before the text in the message (``--shift``, ``Grid scenario``).
    """
    sep = "@" if "@" in text else ":"
    shift_id, _, sev = text.partition(sep)
    if not sev:
        return shift_id.strip(), None
    try:
        return shift_id.strip(), int(sev)
    except ValueError:
        raise MrbenchError(f"{where} {text!r}: severity {sev!r} is not an integer.",
                           "Write ID@SEVERITY or ID:SEVERITY, e.g. gaussian-noise@3 (--shift also takes a bare ID "
                           "for every severity).") from None


def shift_grid(suite: "Suite") -> list[ShiftCell]:
    """The cells of the suite's ``[shifts]`` table, in order: every ``corruptions`` id at
    every one of ``severities``, then the ``extra`` cells (``"id@severity"``).

    :raises MrbenchError: the suite declares no shift grid, or the table is malformed.
    """
    table = suite.shifts
    if not table:
        raise MrbenchError(f"Suite {suite.ref} declares no shift grid.",
                           "Name the shifts instead: --shift gaussian-noise:3 (or a bare id for every severity).")
    try:
        severities = [int(s) for s in table.get("severities", [1, 2, 3, 4, 5])]
        cells = [ShiftCell(str(c), s) for c in table.get("corruptions", []) for s in severities]
        for item in table.get("extra", []):
            shift_id, sev = parse_shift(str(item), "extra")
            if sev is None:
                raise ValueError(f"extra {item!r} names no severity")
            cells.append(ShiftCell(shift_id, sev))
    except (TypeError, ValueError, MrbenchError) as exc:
        reason = (exc.message if isinstance(exc, MrbenchError) else str(exc)).rstrip(".")
        raise MrbenchError(f"The [shifts] table of {suite.path} is invalid: {reason}.",
                           'Use corruptions = ["id", ...], severities = [1, ...], extra = ["id@severity", ...].') from None
    return cells


def shifts_from_cli(specs: Sequence[str] | None, registry: Any, suite: "Suite | None" = None) -> list[ShiftCell]:
    """``--shift`` values: ``ID@SEVERITY`` or ``ID:SEVERITY`` -> one cell; a bare ``ID`` ->
    every severity of that shift; ``suite`` -> the suite's ``[shifts]`` grid.

    :param registry: the component registry (an unknown id lists the known ones).
    :param suite: the suite ``suite`` refers to.
    """
    out: list[ShiftCell] = []
    for spec in specs or ():
        if spec == "suite":
            for cell in shift_grid(suite):  # type: ignore[arg-type]
                registry.get("shift", cell.shift)
                out.append(cell)
            continue
        shift_id, sev = parse_shift(spec, "--shift")
        cls = registry.get("shift", shift_id)
        out += [ShiftCell(shift_id, s) for s in cls.severities] if sev is None else [ShiftCell(shift_id, sev)]
    return list(dict.fromkeys(out))  # `suite` plus a cell it already has: once


def attacks_from_cli(attacks: str | None, eps: str | None, targets: str | None, registry: Any,
                     suite: "Suite") -> list[AttackCell]:
    """``--attacks A,B --eps E1,E2 --target T1,T2`` (or ``--attacks suite``, the suite's
    ``[attacks]`` table) -> the cells, attack by attack, target by target, eps by eps.

    Where several targets are asked for (or the suite's grid), each attack runs on the
    targets it supports; a single target it cannot attack is an error.
    """
    if not attacks:
        return []
    defaults = suite.attacks or {}
    if attacks == "suite":
        if not defaults.get("attacks"):
            raise MrbenchError(f"Suite {suite.ref} declares no default attacks.",
                               "Name them: --attacks pgd-linf,fgsm --eps 16/255 --target query.")
        specs = list(defaults["attacks"])
    else:
        specs = split_list(attacks)
    eps_list = split_list(eps) if eps else [str(e) for e in defaults.get("eps", [])]
    target_list = split_list(targets) if targets else list(defaults.get("targets", ["query"]))
    if not eps_list:
        raise MrbenchError("No eps given and the suite declares none.", "Pass --eps, e.g. --eps 16/255.")
    grid = attacks == "suite" or len(target_list) > 1
    out = []
    for spec in specs:
        attack_id, opts = parse_attack(spec)
        cls = registry.get("attack", attack_id)
        for t in target_list:
            if grid and t not in cls.targets:
                continue
            check_attack(cls, t)
            out += [AttackCell(attack_id, parse_eps(e), t, opts) for e in eps_list]
    return out


def from_grid(text: str, registry: Any) -> Scenario:
    """A grid file's scenario: ``clean``, a scenario name, ``<shift>:<severity>``, or an
    attack with options written ``[a=1,b=2]`` (sorted, as on the CLI).

    :raises MrbenchError: an unknown id (listing the known ones), an attack that cannot
        attack the target, an ensemble (it follows from its members), or a malformed text.
    """
    where = f"Grid scenario {text!r}"
    if "@" in text and ":" in text.rpartition("@")[2]:
        head, _, tail = text.rpartition("@")
        attack_id, opts = parse_attack(head)
        cell = _read_name(f"{attack_id}@{tail}")
        if isinstance(cell, Ensemble):
            raise MrbenchError(f"{where}: an ensemble is not run on its own.",
                               "List its attacks; the ensemble of an (eps, target) follows from them.")
        cell = AttackCell(attack_id, cell.eps, cell.target, opts)  # type: ignore[union-attr]
        cell.check(registry.get("attack", attack_id), where=where)
        return cell
    if text == "clean":
        return Clean()
    shift_id, sev = parse_shift(text, "Grid scenario")
    cls = registry.get("shift", shift_id)
    if sev is None:
        raise MrbenchError(f"{where}: write <shift>@<severity> (or <shift>:<severity>), e.g. gaussian-noise@3.",
                           f"Severities of {shift_id}: {', '.join(map(str, cls.severities))}.")
    return ShiftCell(shift_id, sev)
