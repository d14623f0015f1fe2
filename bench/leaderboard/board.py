"""Leaderboard folders: discovery, loading, and the checks every entry must pass.

:func:`load_boards` reads every suite version folder with entries, validates each entry
against the schema, its suite (pinned manifest and revision) and its per-episode file,
resolves supersessions and withdrawals, and reports every problem at once (file and
field) in one :class:`~bench.errors.MrbenchError`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from bench.errors import MrbenchError
from bench.protocol.scenarios import AttackCell, Ensemble, format_eps, parse
from bench.results import episodes_file
from bench.results.schema import ResultEntry, check_entry
from bench.results.stats import mean_ci95
from bench.suites import Suite, all_suites, read_suite, suites_dirs

TABLE_FILES = ("table.csv", "table.md", "table.html")
"""The files generated in every suite version folder with entries (and compared by :func:`bench.leaderboard.check`)."""
WITHDRAWAL_KIND = "mrbench-withdrawal"
WITHDRAWALS_DIR = "withdrawals"
_ABS_TOL = 1e-12  # evaluate() writes exact floats (repr), so a recomputed mean agrees to the last bit
_VERSION_DIR = re.compile(r"^v(\d+)$")
_CHECK_HINT = ("Entry files are append-only: restore an edited entry, or correct a published one with a new entry "
               "that supersedes it; regenerate stale tables with `mrbench leaderboard build`.")


@dataclass(frozen=True)
class Entry:
    """A result entry file of a leaderboard.

    :param path: the JSON file.
    :param entry: its validated content.
    :param episodes: scenario -> per-episode accuracies in episode order (live entries only).
    :param superseded_by: file name of the entry that corrects this one, if any.
    :param weights: the weights digest of its checkpoint, resolved through the zoo for
        entries that name only the checkpoint file (``None``: not in the zoo).
    """

    path: Path
    entry: ResultEntry
    episodes: dict[str, list[float]] = field(default_factory=dict)
    superseded_by: str | None = None
    weights: str | None = None

    @property
    def model(self) -> tuple:
        """What makes two entries the same model: weights, algorithm id and options."""
        return (self.weights or self.entry.checkpoint.sha256, self.entry.algorithm.id,
                json.dumps(self.entry.algorithm.options, sort_keys=True))

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class Board:
    """One suite version's leaderboard: its folder, suite and entries (sorted by file name)."""

    folder: Path
    suite: Suite
    entries: tuple[Entry, ...]
    withdrawals: tuple["Withdrawal", ...] = ()

    @property
    def withdrawn(self) -> list[Entry]:
        """Entries taken out of the table by a withdrawal notice."""
        return [e for e in self.entries if (e.superseded_by or "").startswith(f"{WITHDRAWALS_DIR}/")]

    @property
    def live(self) -> list[Entry]:
        return [e for e in self.entries if e.superseded_by is None]

    @property
    def ranked(self) -> list[Entry]:
        """One live entry per model (weights, algorithm, options): its first full-suite entry
        (by creation time, then file name). These are the rows."""
        rows: dict[tuple, Entry] = {}
        for e in sorted(self.live, key=lambda e: (e.entry.created, e.name)):
            if not is_ensemble_entry(e.entry, self.suite):
                rows.setdefault(e.model, e)
        return sorted(rows.values(), key=lambda e: e.name)

    @property
    def supplements(self) -> list[Entry]:
        """The other live entries: ensemble-subset runs and further evaluations of a ranked
        model (external evaluations: another attack run on a published model). Their
        scenarios show in their model's row."""
        rows = {id(e) for e in self.ranked}
        return [e for e in self.live if id(e) not in rows]

    @property
    def ensemble_entries(self) -> list[Entry]:
        """Live entries on the suite's ensemble subset: shown in the rows of their checkpoint's entries."""
        return [e for e in self.live if is_ensemble_entry(e.entry, self.suite)]


@dataclass
class Problems:
    items: list[str] = field(default_factory=list)

    def add(self, where: Path | str, field_: str, message: str) -> None:
        self.items.append(f"{display_path(where)}: {field_}: {message}")

    def raise_if_any(self, what: str) -> None:
        if self.items:
            n = len(self.items)
            raise MrbenchError(f"{what} failed ({n} problem{'s' if n > 1 else ''}): " + "; ".join(self.items) + ".",
                               _CHECK_HINT)


def display_path(path: Path | str) -> str:
    """``path`` relative to the working directory where it is under it, else as given."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --- discovery ---------------------------------------------------------------


def leaderboard_roots(root: str | Path | None = None) -> list[Path]:
    """The folders holding leaderboards: ``root`` if given, else the suite folders
    (``MRBENCH_SUITES``, then the repository's ``leaderboards/``; see :func:`bench.suites.suites_dirs`).

    :param root: a leaderboards folder (``<root>/<suite>/v<N>/``).
    """
    return [Path(root)] if root is not None else suites_dirs()


def board_folders(root: str | Path | None = None) -> list[Path]:
    """Suite version folders that have entries or generated tables, in a stable order.

    :param root: see :func:`leaderboard_roots`.
    """
    seen: set[Path] = set()
    out = []
    for r in leaderboard_roots(root):
        for d in sorted(r.glob("*/v*")):
            if not (d.is_dir() and _VERSION_DIR.match(d.name)):
                continue
            has_board = (d / "entries").is_dir() or any((d / f).exists() for f in TABLE_FILES)
            if has_board and d.resolve() not in seen:
                seen.add(d.resolve())
                out.append(d)
    return out


# --- loading and checking entries -------------------------------------------


def read_episodes(path: Path, problems: Problems) -> episodes_file.Counts:
    """Per-episode results ``scenario -> episode -> (correct, total)`` from an ``*.episodes.csv``,
    checked by :func:`bench.results.episodes_file.validate`; its problems go to ``problems``."""
    counts, found = episodes_file.validate(path)
    for where, message in found:
        problems.add(path, where, message)
    return counts


def _check_against_episodes(entry: ResultEntry, path: Path, problems: Problems) -> dict[str, list[float]]:
    if entry.episodes_file is None:
        problems.add(path, "episodes_file", "is null; a leaderboard entry needs its per-episode results")
        return {}
    ep_path = path.with_name(entry.episodes_file)
    if not ep_path.is_file():
        problems.add(path, "episodes_file", f"{entry.episodes_file} does not exist next to the entry")
        return {}
    before = len(problems.items)
    rows = read_episodes(ep_path, problems)
    if len(problems.items) > before:
        return {}
    for extra in sorted(set(rows) - set(entry.metrics)):
        problems.add(ep_path, "scenario", f"{extra!r} has per-episode results but no metrics.{extra} in {path.name}")
    out: dict[str, list[float]] = {}
    for name, m in entry.metrics.items():
        per = rows.get(name, {})
        where = f"metrics.{name}"
        if sorted(per) != list(range(m.n_episodes)):
            detail = f"has {len(per)}" if len(per) != m.n_episodes else "numbers other than 0..n-1 for its"
            problems.add(path, f"{where}.n_episodes", f"{m.n_episodes}, but {ep_path.name} {detail} episodes of "
                         f"scenario {name!r}")
            continue
        accs = [per[e][0] / per[e][1] for e in range(m.n_episodes)]
        mean, ci = mean_ci95(accs)
        queries = sum(t for _, t in per.values())
        if not math.isclose(m.accuracy, mean, rel_tol=0, abs_tol=_ABS_TOL):
            problems.add(path, f"{where}.accuracy", f"{m.accuracy!r} disagrees with the mean of the per-episode "
                         f"accuracies in {ep_path.name} ({mean!r})")
        if not (math.isnan(ci) and math.isnan(m.ci95)) and not math.isclose(m.ci95, ci, rel_tol=0, abs_tol=_ABS_TOL):
            problems.add(path, f"{where}.ci95", f"{m.ci95!r} disagrees with the 95% CI of the per-episode "
                         f"accuracies in {ep_path.name} ({ci!r})")
        if m.n_queries != queries:
            problems.add(path, f"{where}.n_queries", f"{m.n_queries} disagrees with {ep_path.name} ({queries})")
        out[name] = accs
    return out


@dataclass(frozen=True)
class EnsembleSubset:
    """The suite's declared ensemble and the fixed episode subset it runs on.

    :param attack: the ensemble's attack id (scenarios ``<attack>@<eps>:<target>``), or
        the ids of the ensembles that share the subset joined by `` or `` (the query
        ``ensemble`` and the poisoning ``poison_ensemble`` of the ``[attacks]`` table).
    :param n_episodes: it runs on the suite's first ``n_episodes`` episodes.
    :param manifest_sha256: the pinned manifest digest of those episodes (``None``: not pinned).
    """

    attack: str
    n_episodes: int
    manifest_sha256: str | None

    def covers(self, scenario: str) -> bool:
        return any(scenario.startswith(f"{a}@") for a in self.attack.split(" or "))


def ensemble_subset(suite: Suite) -> EnsembleSubset | None:
    """The suite's :class:`EnsembleSubset`, or ``None`` if it declares no ensemble on fewer episodes than it has."""
    table = suite.attacks or {}
    attacks = [str(a) for a in (table.get("ensemble"), table.get("poison_ensemble")) if a]
    n = table.get("ensemble_episodes")
    if not attacks or not n or suite.fixed_episodes or int(n) >= suite.n_episodes:
        return None
    return EnsembleSubset(" or ".join(attacks), int(n), table.get("ensemble_manifest_sha256"))


def is_ensemble_entry(entry: ResultEntry, suite: Suite) -> bool:
    """Whether ``entry`` was evaluated on the suite's ensemble subset (see :func:`ensemble_subset`)."""
    sub = ensemble_subset(suite)
    return sub is not None and entry.suite.n_episodes == sub.n_episodes


def attack_cell(name: str) -> tuple[str, str] | None:
    """``(eps, target)`` of an attack scenario name ``ATTACK[opts]@EPS:TARGET``, else ``None``."""
    try:
        cell = parse(name)
    except MrbenchError:
        return None
    if isinstance(cell, (AttackCell, Ensemble)):
        return format_eps(cell.eps), cell.target
    return None


def _check_against_suite(entry: ResultEntry, suite: Suite, path: Path, problems: Problems) -> None:
    s = entry.suite
    spec = (s.spec.n_way, s.spec.k_shot, s.spec.n_query)
    if spec != (suite.spec.n_way, suite.spec.k_shot, suite.spec.n_query):
        problems.add(path, "suite.spec", f"{spec} (n_way, k_shot, n_query) disagrees with the suite's "
                     f"{(suite.spec.n_way, suite.spec.k_shot, suite.spec.n_query)}")
    sub = ensemble_subset(suite)
    pinned, pinned_by = suite.manifest_sha256, f"pinned by {display_path(suite.path or '')}"
    if sub is not None and s.n_episodes == sub.n_episodes:
        # The subset is where costly attacks run: the declared ensembles, and any other attack
        # evaluated there (an external evaluation, `evaluate --zoo SUITE --episodes N`), which
        # best_known compares with the row's attacks on these episodes. Shifts are cheap and
        # are evaluated on every episode.
        others = sorted(k for k in entry.metrics if k != "clean" and attack_cell(k) is None and not sub.covers(k))
        if others:
            problems.add(path, "metrics", f"{', '.join(others)} on {s.n_episodes} episodes: an entry on the suite's "
                         f"ensemble subset (its first {sub.n_episodes} episodes) holds only clean and attack "
                         f"scenarios ({sub.attack}, or another attack); evaluate shifts on all "
                         f"{suite.n_episodes} episodes")
        if sub.manifest_sha256 is None:
            problems.add(path, "suite.n_episodes", f"{s.n_episodes} (the ensemble subset), but "
                         f"{display_path(suite.path or '')} pins no [attacks] ensemble_manifest_sha256 to check it "
                         "against")
            return
        pinned, pinned_by = sub.manifest_sha256, f"pinned for the ensemble subset by {display_path(suite.path or '')}"
    elif not suite.fixed_episodes and s.n_episodes != suite.n_episodes:
        subset = (f" (or, with only clean and attack scenarios such as {sub.attack}, its first {sub.n_episodes}: "
                  "the ensemble subset)"
                  if sub is not None else "")
        problems.add(path, "suite.n_episodes", f"{s.n_episodes}, but suite {suite.ref} has {suite.n_episodes} "
                     f"episodes: a leaderboard entry evaluates all of them{subset} (no other --episodes)")
        # Its manifest is that of its own episodes (e.g. the first N with --episodes N), so it
        # differs from the pinned one for the reason just given: one message, not a second one
        # claiming other episodes.
        pinned = s.manifest_sha256
    if s.manifest_sha256 != pinned:
        problems.add(path, "suite.manifest_sha256", f"{s.manifest_sha256} does not match the manifest hash "
                     f"{pinned} {pinned_by}: evaluated on other episodes")
    if (entry.dataset.id, entry.dataset.split) != (suite.test.dataset, suite.test.split):
        problems.add(path, "dataset", f"{entry.dataset.id} {entry.dataset.split} is not the suite's test data "
                     f"({suite.test.dataset} {suite.test.split})")
    if entry.dataset.revision != suite.revision:
        problems.add(path, "dataset.revision", f"{entry.dataset.revision} does not match the revision "
                     f"{suite.revision} pinned by {display_path(suite.path or '')}")


def _suite_exists(root: Path, suite_id: str, version: int) -> bool:
    return (root / suite_id / f"v{version}" / "suite.toml").is_file() or f"{suite_id}@v{version}" in all_suites()


def _load_board(folder: Path, problems: Problems) -> Board | None:
    """Read and check one suite version's leaderboard; problems go to ``problems``.

    Every entry is validated against the schema and must be filed under its own
    suite version; live (not superseded) entries must also match the suite's pinned
    manifest and revision and their per-episode file.
    """
    folder = Path(folder)
    suite = _read_board_suite(folder, problems)
    if suite is None:
        return None
    raw_entries = _read_entries(folder, suite, problems)
    superseded_by = _supersessions(folder, raw_entries, problems)
    withdrawals = _load_withdrawals(folder, raw_entries, superseded_by, problems)
    for start in sorted(superseded_by):
        seen, cur = {start}, superseded_by[start]
        while cur in superseded_by:
            cur = superseded_by[cur]
            if cur in seen:
                problems.add(folder / "entries" / start, "supersedes", "is part of a supersedes cycle")
                break
            seen.add(cur)

    entries = []
    for name, (path, entry) in raw_entries.items():
        episodes: dict[str, list[float]] = {}
        weights = entry.checkpoint.weights_sha256
        if name not in superseded_by:
            before = len(problems.items)
            _check_against_suite(entry, suite, path, problems)
            episodes = _check_against_episodes(entry, path, problems)
            if len(problems.items) == before:  # one message per broken entry: the zoo is asked only of sound ones
                weights = _zoo_weights(entry, path, problems)
        entries.append(Entry(path, entry, episodes, superseded_by.get(name), weights))
    board = Board(folder, suite, tuple(entries), withdrawals)
    _check_supplements(board, problems)
    return board


def _read_board_suite(folder: Path, problems: Problems) -> Suite | None:
    """The suite of a suite version folder, if its ``suite.toml`` exists, is valid, is filed
    under its own id and version, and pins what entries are compared with."""
    suite_file = folder / "suite.toml"
    ref = f"{folder.parent.name}@{folder.name}"
    if not suite_file.is_file():
        problems.add(suite_file, "suite", f"missing: {ref} is not a suite, so nothing can be filed under it")
        return None
    try:
        suite = read_suite(suite_file)
    except MrbenchError as exc:
        problems.add(suite_file, "suite", exc.message)
        return None
    if (suite.id, f"v{suite.version}") != (folder.parent.name, folder.name):
        problems.add(suite_file, "id/version", f"{suite.ref} is filed under {ref}")
        return None
    if not suite.manifest_sha256 or not suite.revision:
        problems.add(suite_file, "test.manifest_sha256/test.revision", "not pinned, so entries cannot be compared")
        return None
    return suite


def _read_entries(folder: Path, suite: Suite, problems: Problems) -> dict[str, tuple[Path, ResultEntry]]:
    """``file name -> (path, entry)`` of the folder's entries that are valid JSON, pass the
    schema and are filed under their own suite version."""
    raw_entries: dict[str, tuple[Path, ResultEntry]] = {}
    for path in sorted((folder / "entries").glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            problems.add(path, f"line {exc.lineno}", f"not valid JSON ({exc.msg})")
            continue
        except UnicodeDecodeError:
            problems.add(path, "file", "is not UTF-8 text")
            continue
        entry, found = check_entry(raw)
        for loc, msg in found:
            problems.add(path, loc, msg)
        if entry is None:
            continue
        if (entry.suite.id, entry.suite.version) != (suite.id, suite.version):
            claimed = f"{entry.suite.id}@v{entry.suite.version}"
            known = _suite_exists(folder.parent.parent, entry.suite.id, entry.suite.version)
            problems.add(path, "suite.id/suite.version", f"{claimed} " + (
                f"is filed under {suite.ref}; move it to {entry.suite.id}/v{entry.suite.version}/entries/" if known
                else "does not exist"))
            continue
        raw_entries[path.name] = (path, entry)
    return raw_entries


def _supersessions(folder: Path, raw_entries: dict[str, tuple[Path, ResultEntry]],
                   problems: Problems) -> dict[str, str]:
    """``superseded file name -> the entry that supersedes it``, from the entries' ``supersedes``."""
    superseded_by: dict[str, str] = {}
    for name, (path, entry) in raw_entries.items():
        for target in entry.superseded:
            if target == name:
                problems.add(path, "supersedes", "names the entry itself")
            elif not (folder / "entries" / target).is_file():
                problems.add(path, "supersedes", f"{target} does not exist in {display_path(folder / 'entries')}")
            elif target in superseded_by:
                problems.add(path, "supersedes", f"{target} is already superseded by {superseded_by[target]}; "
                             "supersede the latest correction instead")
            else:
                superseded_by[target] = name
    return superseded_by


@dataclass(frozen=True)
class Withdrawal:
    """A notice that takes entries out of the table without a replacement (their numbers
    cannot be re-checked): ``withdrawals/<name>.json``."""

    path: Path
    created: str
    withdraws: tuple[str, ...]
    reason: str
    recreate: str

    @property
    def name(self) -> str:
        return f"{WITHDRAWALS_DIR}/{self.path.name}"


def _load_withdrawals(folder: Path, raw_entries: dict, superseded_by: dict[str, str],
                      problems: Problems) -> tuple[Withdrawal, ...]:
    """Read ``withdrawals/*.json`` and mark what each withdraws in ``superseded_by``."""
    out = []
    for path in sorted((folder / WITHDRAWALS_DIR).glob("*.json")):
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.add(path, "file", f"not valid JSON ({exc})")
            continue
        if not isinstance(raw, dict) or raw.get("kind") != WITHDRAWAL_KIND:
            problems.add(path, "kind", f"must be {WITHDRAWAL_KIND!r}")
            continue
        targets, reason = raw.get("withdraws"), raw.get("reason")
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            problems.add(path, "withdraws", "must be a non-empty list of entry file names")
            continue
        if not isinstance(reason, str) or not reason.strip():
            problems.add(path, "reason", "must say why the entries are withdrawn")
            continue
        w = Withdrawal(path, str(raw.get("created", "")), tuple(targets), reason.strip(), str(raw.get("recreate", "")))
        for target in targets:
            if target not in raw_entries:
                problems.add(path, "withdraws", f"{target} does not exist in {display_path(folder / 'entries')}")
            elif target in superseded_by:
                problems.add(path, "withdraws", f"{target} is already superseded or withdrawn by "
                             f"{superseded_by[target]}")
            else:
                superseded_by[target] = w.name
        out.append(w)
    return tuple(out)


def _zoo_weights(entry: ResultEntry, path: Path, problems: Problems) -> str | None:
    """The weights digest of a live entry's checkpoint, which must be in the zoo (a number
    whose model is lost cannot be re-checked)."""
    from bench.zoo import entry_checkpoint

    try:
        return entry_checkpoint(entry).weights_sha256
    except MrbenchError:
        ck = entry.checkpoint
        problems.add(path, "checkpoint", f"{(ck.weights_sha256 or ck.sha256 or '?')[:12]} ({entry.algorithm.id}) is "
                     "not in the checkpoint zoo; publish it (`mrbench zoo publish CKPT.pt`), or supersede the entry "
                     "with one re-created from a published checkpoint")
        return None


def _check_supplements(board: Board, problems: Problems) -> None:
    """Entries that supplement a model's row: an ensemble-subset entry needs a full-suite
    entry of its model, and every supplement's clean results must equal the row's episode
    by episode (the same model on the same episodes)."""
    rows = {e.model: e for e in board.ranked}
    for e in board.supplements:
        row = rows.get(e.model)
        if row is None:
            ck = e.weights or e.entry.checkpoint.sha256 or "?"
            problems.add(e.path, "checkpoint", f"{ck[:12]} ({e.entry.algorithm.id}): an entry "
                         "on the ensemble subset supplements a full-suite entry of the same checkpoint and algorithm "
                         "options, and none is published; publish its clean (or attack) evaluation on all "
                         f"{board.suite.n_episodes} episodes first")
            continue
        mine, theirs = e.episodes.get("clean", []), row.episodes.get("clean", [])
        differ = [i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b]
        if differ:
            problems.add(e.path, "metrics.clean", f"differs from {row.name} (the same model) on {len(differ)} "
                         f"episode(s), first {differ[0]}: a supplement must evaluate the same model on the same "
                         "episodes")


def load_boards(root: str | Path | None = None) -> list[Board]:
    """Every leaderboard under ``root``, fully checked.

    :param root: see :func:`leaderboard_roots`.
    :raises MrbenchError: listing every invalid entry (file and field) at once.
    """
    problems = Problems()
    boards = [b for f in board_folders(root) if (b := _load_board(f, problems)) is not None]
    problems.raise_if_any("Leaderboard check")
    return boards


def find_board(suite: str, root: str | Path | None = None) -> Board:
    """The leaderboard of ``suite`` (``id`` for its latest version with entries, or ``id@vN``).

    :param root: see :func:`leaderboard_roots`.
    """
    boards = [b for b in load_boards(root) if b.entries]
    match = [b for b in boards if b.suite.ref == suite or b.suite.id == suite]
    if not match:
        known = ", ".join(sorted(b.suite.ref for b in boards)) or "(none)"
        raise MrbenchError(f"No leaderboard for suite {suite!r}.", f"Leaderboards with entries: {known}.")
    return max(match, key=lambda b: b.suite.version)


