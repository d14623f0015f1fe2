"""The scenario model: names written and read back, every input spelling, the attack check."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest

from bench.errors import MrbenchError
from bench.plugins import get_registry
from bench.protocol.scenarios import (
    PERTURBED, TARGETS, AttackCell, Clean, Ensemble, ShiftCell, attacks_from_cli, check_attack, from_grid, parse,
    parse_attack, parse_shift, perturbs, shift_grid, shifts_from_cli,
)

ROOT = Path(__file__).resolve().parents[1]
ENTRIES = sorted(ROOT.glob("leaderboards/*/v*/entries/*.json"))
NAMES = sorted({(p.relative_to(ROOT).as_posix(), name)
                for p in ENTRIES for name in json.loads(p.read_text())["metrics"]})


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def suite(attacks: dict[str, Any] | None = None, shifts: dict[str, Any] | None = None) -> Any:
    """A stand-in for :class:`bench.suites.Suite`: the tables the grammar reads."""
    return SimpleNamespace(ref="s@v1", path=Path("s.toml"), attacks=attacks, shifts=shifts)


def test_committed_entries_exist():
    assert ENTRIES and NAMES


@pytest.mark.parametrize("path, name", NAMES)
def test_every_committed_name_round_trips_to_the_cell_the_entry_describes(path, name):
    cell = parse(name)
    assert cell.name == name
    info = (json.loads((ROOT / path).read_text()).get("scenarios") or {}).get(name)
    if name == "clean":
        assert cell == Clean() and cell.kind == "clean"
        return
    assert cell.kind in ("shift", "attack", "ensemble")
    if info is None:  # written before schema 3: no scenario description to compare with
        return
    assert cell.kind == info["kind"]
    if isinstance(cell, ShiftCell):
        assert (cell.shift, cell.severity) == (info["id"], info["severity"])
    else:
        assert cell.eps == pytest.approx(info["eps"], abs=1e-12) and cell.target == info["target"]
    if isinstance(cell, AttackCell):
        assert cell.attack == info["id"]
        assert all(info["options"][k] == v for k, v in cell.options)


@pytest.mark.parametrize("cell", [
    Clean(), ShiftCell("gaussian-noise", 3), AttackCell("pgd-linf", 16 / 255, "query"),
    AttackCell("pgd-linf", 8 / 255, "support", (("restarts", 2), ("steps", 40))),
    AttackCell("square", 0.5, "query", (("loss", "ce"),)), Ensemble(16 / 255, "both"), Ensemble(0.1, "query"),
])
def test_parse_inverts_name(cell):
    assert parse(cell.name) == cell


def test_names_are_todays():
    assert AttackCell("pgd-linf", 16 / 255, "query").name == "pgd-linf@16/255:query"
    assert AttackCell("pgd-linf", 8 / 255, "support", (("steps", 40),)).name == "pgd-linf[steps=40]@8/255:support"
    assert Ensemble(0.5, "both").name == "ensemble@0.5:both"
    assert ShiftCell("label-noise", 2).name == "label-noise@2"
    assert TARGETS == ("query", "support", "both")
    assert tuple(ShiftCell("contrast", 4)) == ("contrast", 4)  # unpacks as the pair evaluate() takes


@pytest.mark.parametrize("name, message", [
    ("weird", "Cannot read scenario 'weird'"),
    ("", "Cannot read scenario ''"),
    ("gaussian-noise@high", "Cannot read scenario"),
    ("pgd-linf@lots:query", r"Scenario 'pgd-linf@lots:query': Cannot read eps 'lots'"),
    ("pgd-linf@16/255:queries", "unknown target 'queries'"),
    ("pgd-linf@1/0:query", "eps must be a finite number >= 0, got '1/0'"),
    ("pgd-linf@0.50:query", r"not written as mrbench writes it \('pgd-linf@0.5:query'\)"),
    ("pgd-linf[steps=40,restarts=2]@0.5:query", "not written as mrbench writes it"),
    ("ensemble[steps=2]@0.5:query", "an ensemble has no options"),
    ("pgd-linf[steps=40@0.5:query", "Cannot read scenario"),
])
def test_malformed_names_say_what_is_valid(name, message):
    with pytest.raises(MrbenchError, match=message) as exc:
        parse(name)
    assert "SHIFT@SEVERITY" in str(exc.value) and "ensemble@EPS:TARGET" in str(exc.value)


def test_attack_spellings_give_one_cell(registry):
    want = parse("pgd-linf[restarts=2][steps=40]@8/255:support")
    assert parse_attack("pgd-linf[steps=40,restarts=2]") == parse_attack("pgd-linf[restarts=2][steps=40]") == (
        "pgd-linf", want.options)
    assert from_grid("pgd-linf[steps=40,restarts=2]@8/255:support", registry) == want
    assert from_grid("pgd-linf[restarts=2][steps=40]@8/255:support", registry) == want
    assert attacks_from_cli("pgd-linf[steps=40,restarts=2]", "8/255", "support", registry, suite()) == [want]
    assert from_grid("fgsm@16/255:query", registry) == parse("fgsm@16/255:query")


def test_shift_spellings_give_one_cell(registry):
    want = ShiftCell("gaussian-noise", 3)
    assert from_grid("gaussian-noise:3", registry) == from_grid("gaussian-noise@3", registry) == want
    assert shifts_from_cli(["gaussian-noise:3"], registry) == shifts_from_cli(["gaussian-noise@3"], registry) == [want]
    grid = suite(shifts={"corruptions": ["gaussian-noise"], "severities": [3], "extra": ["gaussian-noise@3",
                                                                                         "label-noise:2"]})
    assert shift_grid(grid) == [want, want, ShiftCell("label-noise", 2)]
    assert shifts_from_cli(["suite", "gaussian-noise:3"], registry, grid) == [want, ShiftCell("label-noise", 2)]
    assert parse_shift("contrast", "--shift") == ("contrast", None)
    assert from_grid("clean", registry) == Clean()


def test_cli_bare_shift_is_every_severity(registry):
    cls = registry.get("shift", "contrast")
    assert shifts_from_cli(["contrast"], registry) == [ShiftCell("contrast", s) for s in cls.severities]


def test_cli_attack_grid_skips_unsupported_targets(registry):
    grid = suite(attacks={"attacks": ["fgsm", "square"], "eps": ["16/255"], "targets": ["query", "support"]})
    cells = attacks_from_cli("suite", None, None, registry, grid)
    assert [c.name for c in cells] == ["fgsm@16/255:query", "fgsm@16/255:support", "square@16/255:query"]
    with pytest.raises(MrbenchError, match="Attack 'square' cannot attack the support"):
        attacks_from_cli("square", "16/255", "support", registry, grid)
    with pytest.raises(MrbenchError, match="declares no default attacks"):
        attacks_from_cli("suite", None, None, registry, suite())
    with pytest.raises(MrbenchError, match="No eps given"):
        attacks_from_cli("fgsm", None, None, registry, suite())
    with pytest.raises(MrbenchError, match="Cannot read eps 'lots'"):
        attacks_from_cli("fgsm", "lots", None, registry, suite())


@pytest.mark.parametrize("text, message", [
    ("gaussian-noise:high", "Grid scenario 'gaussian-noise:high': severity 'high' is not an integer"),
    ("gaussian-noise", "Grid scenario 'gaussian-noise': write <shift>@<severity>"),
    ("ensemble@8/255:query", "an ensemble is not run on its own"),
    ("square@8/255:support", "Grid scenario 'square@8/255:support': Attack 'square' cannot attack the support"),
    ("pgd-linf[steps=40@8/255:query", "Cannot read attack"),
])
def test_grid_errors(registry, text, message):
    with pytest.raises(MrbenchError, match=message):
        from_grid(text, registry)


def test_suite_shift_table_errors():
    with pytest.raises(MrbenchError, match="declares no shift grid"):
        shift_grid(suite())
    with pytest.raises(MrbenchError, match=r"\[shifts\] table of s.toml is invalid: extra 'label-noise@x'"):
        shift_grid(suite(shifts={"extra": ["label-noise@x"]}))
    with pytest.raises(MrbenchError, match="names no severity"):
        shift_grid(suite(shifts={"extra": ["label-noise"]}))


class _FourWay:
    id: ClassVar[str] = "four-way"
    targets: ClassVar[tuple[str, ...]] = ("query", "both")
    min_way: ClassVar[int] = 4


def test_the_one_attack_check():
    AttackCell("four-way", 0.1, "both").check(_FourWay, 5)
    check_attack(_FourWay(), "query", None)  # no n_way: the target alone
    with pytest.raises(MrbenchError, match=r"Attack 'four-way' cannot attack the support\. Its targets: query, both"):
        AttackCell("four-way", 0.1, "support").check(_FourWay, 5)
    with pytest.raises(MrbenchError, match=r"Attack 'four-way' needs episodes of at least 4 ways, got 3\."):
        AttackCell("four-way", 0.1, "query").check(_FourWay(), 3)
    with pytest.raises(MrbenchError, match=r"^Grid scenario 'x': Attack 'four-way' cannot attack the support"):
        check_attack(_FourWay, "support", where="Grid scenario 'x'")


def test_each_target_says_what_it_perturbs():
    assert set(PERTURBED) == set(TARGETS)
    assert [perturbs(t) for t in TARGETS] == [(False, True), (True, False), (True, True)]
    assert perturbs("nothing") == (False, False)
