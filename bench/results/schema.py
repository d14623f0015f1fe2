"""The result entry schema: what :func:`bench.evaluate` writes (through
:func:`build_entry`), checked strictly.

A result entry is the JSON file behind one leaderboard row. The model is strict
(no coercion): a number stored as a string, a boolean where a count belongs or an
unknown field is an error, because a leaderboard must never guess what a file
means. Entries carry ``schema_version`` from the start; an older entry is upgraded
by :func:`migrate`, one registered step per version, before it is validated.

Besides the measured fields, an entry may carry the leaderboard fields a
maintainer adds: ``reported`` (published numbers, kept apart from the measured
``metrics``), ``unreliable`` with a ``footnote``, and ``supersedes`` (the file
name, or names, of the entries it corrects; entry files are append-only).

Version 3 names the checkpoint by its weights digest (the key of the checkpoint
zoo, :mod:`bench.zoo`), records how the evaluation drew its attack seeds
(``evaluation``) and describes every scenario as data (``scenarios``), so that
``mrbench verify`` can re-run any episode of any scenario from the entry alone.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
from typing import Annotated, Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from bench.errors import MrbenchError
from bench.protocol.scenarios import Target

SCHEMA_VERSION = 3
"""The version :func:`build_entry` writes."""

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Fraction = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
NonNegFloat = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
FileName = Annotated[str, Field(pattern=r"^[^/\\]+$", min_length=1)]
EntryFile = Annotated[str, Field(pattern=r"^[^/\\]+\.json$")]


class _Strict(BaseModel):
    # strict: no str -> float, bool -> int, ... coercion; forbid: a misspelled or
    # unknown field is an error (a new field is a schema_version bump).
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class Spec(_Strict):
    n_way: Count
    k_shot: Count
    n_query: Count


class SuiteRef(_Strict):
    """The suite version the entry was evaluated on.

    :param n_episodes: episodes evaluated (the whole suite, for a leaderboard entry).
    """

    id: str
    version: Count
    manifest_sha256: Sha256
    n_episodes: Count
    spec: Spec


class DatasetRef(_Strict):
    id: str
    options: dict[str, Any]
    split: str
    revision: str


class AlgorithmRef(_Strict):
    id: str
    version: str
    options: dict[str, Any]
    distribution: str | None
    distribution_version: str | None
    transductive: bool
    bn_policy: str


class CheckpointRef(_Strict):
    """The evaluated checkpoint.

    :param weights_sha256: digest of its tensors, the checkpoint zoo's key
        (:func:`bench.checkpoint.weights_sha256`); ``None`` only in entries migrated from
        schema 2, which named the checkpoint by its file alone.
    :param sha256: sha256 of the file that was evaluated (a ``.pt`` or a zoo ``.safetensors``).
    :param file: that file's name.
    """

    weights_sha256: Sha256 | None = None
    sha256: Sha256 | None
    file: str | None


class TrainData(_Strict):
    dataset: str
    options: dict[str, Any]
    split: str
    revision: str


class Training(_Strict):
    """Training provenance, copied from the checkpoint (``None`` where it did not record it)."""

    suite: str | None
    train_data: TrainData | None
    train_spec: Spec | None
    steps: NonNegInt | None
    seed: int | None
    meta_batch: Count | None
    lr: NonNegFloat | None
    lr_decay_every: NonNegInt | None
    lr_decay: NonNegFloat | None
    episodes_seen: NonNegInt | None
    wall_time_s: NonNegFloat | None
    adversarial: dict[str, Any] | None
    device: str | None


class ScenarioMetrics(_Strict):
    """One scenario's measured numbers.

    :param accuracy: mean per-episode accuracy, in [0, 1].
    :param n_episodes: episodes it is the mean over.
    :param n_queries: query predictions over all episodes.
    :param ci95: 95% CI half-width ``1.96 * sd / sqrt(n)``, in [0, 1]; NaN only for a
        single episode (no spread to estimate).
    """

    # Declared before ci95, which its validator reads.
    accuracy: Fraction
    n_episodes: Count
    n_queries: Count
    ci95: float

    @field_validator("ci95")
    @classmethod
    def _ci95(cls, v: float, info: ValidationInfo) -> float:
        if math.isnan(v):
            n = info.data.get("n_episodes")
            if n != 1:
                raise ValueError(f"is NaN, which only a single-episode evaluation may have (n_episodes is {n})")
            return v
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"must be in [0, 1], got {v}")
        return v


class Reported(_Strict):
    """A published number, kept apart from the measured ones.

    :param accuracy: the published accuracy, as a fraction in [0, 1].
    :param ci95: its published 95% CI half-width, if any.
    :param source: where it was published (e.g. ``"Snell et al. 2017, Table 1"``).
    """

    accuracy: Fraction
    ci95: Fraction | None = None
    source: Annotated[str, Field(min_length=1)]


class EnvironmentInfo(_Strict):
    """Where the entry was computed. ``cpu``: the processor model and the kernel
    capability torch dispatched to (``AVX512``, ``AVX2``, ...), which decide the float
    rounding of a CPU run (absent in older entries)."""

    harness_version: str
    git_sha: str | None
    torch_version: str
    python_version: str
    platform: str
    device: str
    cpu: str | None = None


class EvaluationInfo(_Strict):
    """How the evaluation drew its random numbers, so any episode can be re-run alone.

    :param attack_seeds: ``episode``: every attack of every episode has its own generator
        seeded from (suite seed, scenario, episode); ``chunk``: one generator per chunk of
        ``chunk_episodes`` episodes on a fixed grid (schema 2 entries), so re-running an
        episode re-runs its chunk.
    :param chunk_episodes: episodes per chunk of the evaluation's grid.
    :param sanity_episodes: episodes the attack-strength sanity checks ran on.
    """

    attack_seeds: Literal["episode", "chunk"]
    chunk_episodes: Count
    sanity_episodes: NonNegInt | None = None


class ScenarioInfo(_Strict):
    """One scenario of the entry, as data (its name in ``metrics`` is derived from it).

    :param kind: ``attack`` (``id`` with ``options`` at ``eps`` on ``target``), ``shift``
        (``id`` at ``severity``) or ``ensemble`` (``members``: scenario names; a query is
        robust only if every member fails on it, and for the support and both targets the
        worst member per episode counts).
    :param provider: the distribution (and version) that registered the component.
    """

    kind: Literal["attack", "shift", "ensemble"]
    id: str
    version: str | None = None
    options: dict[str, Any] | None = None
    eps: NonNegFloat | None = None
    norm: str | None = None
    target: Target | None = None
    severity: int | None = None
    members: list[str] | None = None
    provider: str | None = None
    provider_version: str | None = None


class ExecutionInfo(_Strict):
    strategy: Literal["loop", "vmap"]
    chunk: Count
    channels_last: bool


class Degradation(_Strict):
    """Accuracy under a group of shift scenarios and its drop relative to clean.

    :param relative_degradation: ``(clean - accuracy) / clean`` (negative: the shift helped).
    """

    accuracy: Fraction
    relative_degradation: Annotated[float, Field(allow_inf_nan=False)]


class CorruptionSummary(_Strict):
    """The mean over every image-corruption scenario of the entry (shift category ``corruption``).

    :param accuracy: mean over scenarios of the mean per-episode accuracy.
    :param ci95: 95% CI half-width over episodes of each episode's mean over the scenarios.
    :param clean: the clean accuracy on the same episodes.
    :param by_severity: severity -> mean over the corruptions at that severity.
    :param by_shift: corruption id -> mean over its severities.
    """

    accuracy: Fraction
    ci95: float
    clean: Fraction
    relative_degradation: Annotated[float, Field(allow_inf_nan=False)]
    n_scenarios: Count
    n_episodes: Count
    by_severity: dict[str, Degradation]
    by_shift: dict[str, Degradation]


class Summary(_Strict):
    corruptions: CorruptionSummary | None = None


class GroupMetrics(_Strict):
    accuracy: Fraction
    n_queries: Count


class Breakdown(_Strict):
    """Accuracy per class group (Omniglot: the alphabet of the query's class).

    :param by: what a group is (``alphabet``).
    :param scenario: the scenario it breaks down (``clean``).
    """

    by: str
    scenario: str
    groups: dict[str, GroupMetrics]


class Transfer(_Strict):
    """The learner was meta-trained for another protocol than the suite it is evaluated on.

    :param trained_on: the checkpoint's training suite (``id@vN``), if recorded.
    :param kinds: what differs: ``way`` / ``shot`` (episode spec), ``domain`` (another
        dataset), ``classes`` (the same dataset with another class split, e.g. Lake's
        alphabet split), ``split`` (evaluated on meta-training classes).
    """

    trained_on: str | None
    kinds: list[Literal["way", "shot", "domain", "classes", "split"]]
    train_spec: Spec | None
    train_data: TrainData | None


class ResultEntry(_Strict):
    """A result entry, schema version 3 (version 1 lacked ``timing_s``, ``summary``, ``breakdown``, ``transfer``;
    version 2 lacked ``checkpoint.weights_sha256``, ``evaluation``, ``scenarios`` and ``environment.cpu``).

    :param metrics: scenario name -> measured numbers; ``clean`` is always present.
    :param sanity: attack-strength sanity checks (name -> outcome); empty for clean-only runs.
    :param unreliable: a sanity check failed or a maintainer flagged the entry; the
        table marks it and shows ``footnote``.
    :param episodes_file: the per-episode CSV next to the entry (a bare file name).
    :param reported: scenario -> published number, shown next to the measured one.
    :param run_key: digest of what determines the result (checkpoint, episodes, options,
        scenarios, chunk grid, sanity settings); ``mrbench evaluate`` returns a finished
        ``--out`` with the same key instead of recomputing it. Absent in older entries.
    :param footnote: a note shown under the table.
    :param supersedes: file name (or names) of the entries in the same ``entries/`` folder
        this one corrects; a superseded entry stays (append-only) but leaves the table.
    :param evaluation: how the attack seeds were drawn (:class:`EvaluationInfo`).
    :param scenarios: every non-clean scenario of ``metrics`` as data (:class:`ScenarioInfo`).
    """

    schema_version: Literal[3]
    kind: Literal["mrbench-result"]
    created: str
    suite: SuiteRef
    dataset: DatasetRef
    algorithm: AlgorithmRef
    checkpoint: CheckpointRef
    training: Training
    metrics: dict[str, ScenarioMetrics]
    sanity: dict[str, Any]
    unreliable: bool = False
    environment: EnvironmentInfo
    execution: ExecutionInfo
    wall_time_s: NonNegFloat
    peak_memory_bytes: NonNegInt
    episodes_file: FileName | None
    reported: dict[str, Reported] | None = None
    footnote: Annotated[str, Field(min_length=1)] | None = None
    supersedes: EntryFile | list[EntryFile] | None = None
    timing_s: dict[str, NonNegFloat] | None = None
    summary: Summary | None = None
    breakdown: Breakdown | None = None
    transfer: Transfer | None = None
    run_key: Annotated[str, Field(pattern=r"^[0-9a-f]{16,64}$")] | None = None
    evaluation: EvaluationInfo | None = None
    scenarios: dict[str, ScenarioInfo] | None = None

    @property
    def superseded(self) -> list[str]:
        """The file names this entry supersedes (``supersedes`` as a list)."""
        if self.supersedes is None:
            return []
        return [self.supersedes] if isinstance(self.supersedes, str) else list(self.supersedes)

    @field_validator("created")
    @classmethod
    def _created(cls, v: str) -> str:
        try:
            when = _dt.datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(f"must be an ISO 8601 timestamp, got {v!r}") from None
        if when.tzinfo is None:
            raise ValueError(f"must carry a UTC offset, got {v!r}")
        return v

    @field_validator("metrics")
    @classmethod
    def _has_clean(cls, v: dict[str, ScenarioMetrics]) -> dict[str, ScenarioMetrics]:
        if "clean" not in v:
            raise ValueError("must contain the 'clean' scenario")
        return v


# --- migrations ---------------------------------------------------------------

Migration = Callable[[dict[str, Any]], dict[str, Any]]

MIGRATIONS: dict[int, Migration] = {}
"""``from_version -> step``: each step takes an entry of ``from_version`` and returns
it at ``from_version + 1`` (setting ``schema_version``). Register a step with
:func:`migration` whenever :data:`SCHEMA_VERSION` is bumped; never edit a step once
released, since committed entries depend on it."""


def model_label(algorithm_id: str, adversarial: dict[str, Any] | None) -> str:
    """How tables and reports name an entry's model: the algorithm id, with its adversarial
    meta-training where it had one (``protonet (adv. pgd-linf 16/255 query)``)."""
    if not adversarial:
        return algorithm_id
    adv = adversarial
    return f"{algorithm_id} (adv. {adv.get('attack')} {adv.get('eps_name', adv.get('eps'))} {adv.get('target')})"


def migration(from_version: int) -> Callable[[Migration], Migration]:
    """Register the step that upgrades entries from ``from_version`` to ``from_version + 1``.

    :param from_version: the schema version the step reads.
    """

    def register(step: Migration) -> Migration:
        if from_version in MIGRATIONS:
            raise ValueError(f"a migration from schema_version {from_version} is already registered")
        MIGRATIONS[from_version] = step
        return step

    return register


@migration(1)
def _v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
    # v2 added the optional timing_s, summary, breakdown and transfer fields; v1 entries have none.
    raw["schema_version"] = 2
    return raw


@migration(2)
def _v2_to_v3(raw: dict[str, Any]) -> dict[str, Any]:
    # v3 names the checkpoint by its weights digest, which a v2 entry did not record (the
    # zoo links it through the .pt file's sha256), and records the seed grid: every v2
    # evaluation drew one attack generator per chunk of 25 episodes (evaluate()'s only
    # grid before v3; no command could change it).
    raw["schema_version"] = 3
    if isinstance(raw.get("checkpoint"), dict):
        raw["checkpoint"] = {"weights_sha256": None, **raw["checkpoint"]}
    raw.setdefault("evaluation", {"attack_seeds": "chunk", "chunk_episodes": 25})
    return raw


def migrate(raw: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a raw entry to :data:`SCHEMA_VERSION`, step by step; the input is not modified.

    :param raw: the parsed JSON of an entry.
    :raises MrbenchError: ``schema_version`` is missing, not an integer, newer than this
        mrbench, or has no migration path.
    """
    version = raw.get("schema_version")
    if type(version) is not int:  # not isinstance: bool is an int subclass and must not pass
        raise MrbenchError(f"schema_version: must be an integer, got {version!r}.",
                           "Every result entry states the schema version it was written with.")
    if version > SCHEMA_VERSION:
        raise MrbenchError(f"schema_version: {version} is newer than this mrbench understands ({SCHEMA_VERSION}).",
                           "Upgrade mrbench.")
    out = copy.deepcopy(raw)
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise MrbenchError(f"schema_version: no migration from version {version} to {version + 1}.",
                               "The entry predates every supported schema; re-evaluate the checkpoint.")
        out = step(out)
        if out.get("schema_version") != version + 1:
            raise RuntimeError(f"migration from schema_version {version} did not set schema_version {version + 1}")
        version += 1
    return out


def _loc(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        else:
            parts.append(("." if parts else "") + p)
    return "".join(parts) or "(entry)"


def validation_problems(exc: ValidationError) -> list[tuple[str, str]]:
    """``(field path, message)`` for each error of ``exc``.

    E.g. ``("metrics.clean.accuracy", "Input should be a valid number")``.
    """
    out = []
    for err in exc.errors(include_url=False):
        msg = err["msg"]
        if err["type"] == "value_error":
            msg = msg.removeprefix("Value error, ")
        out.append((_loc(err["loc"]), msg))
    return out


def check_entry(raw: Any) -> tuple[ResultEntry | None, list[tuple[str, str]]]:
    """Migrate and validate a parsed entry without raising.

    :param raw: the parsed JSON.
    :returns: the entry (``None`` when invalid) and ``(field path, message)`` for each problem.
    """
    if not isinstance(raw, dict):
        return None, [("(entry)", f"must be a JSON object, got {type(raw).__name__}")]
    try:
        upgraded = migrate(raw)
    except MrbenchError as exc:
        return None, [("schema_version", exc.message.removeprefix("schema_version: ").rstrip("."))]
    try:
        entry = ResultEntry.model_validate(upgraded)
    except ValidationError as exc:
        return None, validation_problems(exc)
    problems = cross_field_problems(entry)
    return (None if problems else entry), problems


ENTRY_HINT = ("`mrbench evaluate` writes the measured fields, which must not be edited by hand; a maintainer may "
              "add only reported, unreliable, footnote and supersedes (see bench/results/schema.py).")


def validate_entry(raw: Any, source: str) -> ResultEntry:
    """Migrate and validate a parsed result entry.

    :param raw: the parsed JSON.
    :param source: where it came from (a file name), used in error messages.
    :raises MrbenchError: naming ``source`` and the field path of every problem, e.g.
        ``entries/x.json: metrics.clean.accuracy: Input should be a valid number``.
    """
    entry, problems = check_entry(raw)
    if entry is None:
        raise MrbenchError("; ".join(f"{source}: {loc}: {msg}" for loc, msg in problems) + ".", ENTRY_HINT)
    return entry


def cross_field_problems(entry: ResultEntry) -> list[tuple[str, str]]:
    """Fields that :func:`bench.evaluate` derives from one another and that disagree.

    Checked outside the model so that each problem names its own field path.
    """
    out = []
    n = entry.suite.n_episodes
    for name, m in entry.metrics.items():
        # Clean covers every evaluated episode; a costly scenario may cover a prefix.
        if m.n_episodes != n if name == "clean" else m.n_episodes > n:
            out.append((f"metrics.{name}.n_episodes", f"{m.n_episodes} disagrees with suite.n_episodes ({n})"))
    return out


# --- building entries -----------------------------------------------------------


def build_entry(*, suite: dict[str, Any], dataset: dict[str, Any], algorithm: dict[str, Any],
                checkpoint: dict[str, Any], training: dict[str, Any], metrics: dict[str, Any], sanity: dict[str, Any],
                failures: list[str], environment: dict[str, Any], execution: dict[str, Any],
                evaluation: dict[str, Any], wall_time_s: float, timing_s: dict[str, float], peak_memory_bytes: int,
                episodes_file: str | None, run_key: str, scenarios: dict[str, Any] | None = None,
                summary: dict[str, Any] | None = None, breakdown: dict[str, Any] | None = None,
                transfer: dict[str, Any] | None = None, created: str | None = None) -> dict[str, Any]:
    """The result entry :func:`bench.evaluate` writes, checked by :class:`ResultEntry`.

    Every argument is the field of that name (see :class:`ResultEntry`). The entry is
    the dict built from them, in the order the fields are written, and not a dump of
    the model: nested parts keep their own key order (a checkpoint's training
    provenance, the sanity checks), so the same inputs always give the same bytes.
    Optional parts that are ``None`` (or no ``scenarios``) are left out.

    :param failures: the failed attack-strength sanity checks; any marks the entry
        ``unreliable`` with a ``footnote`` listing them.
    :param created: ISO 8601 time with offset; now, in UTC, when ``None``.
    :raises MrbenchError: the parts do not make a valid entry (a bug in the harness or
        in the plugin that described a component), naming every field at fault.
    """
    entry: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "mrbench-result",
        "created": created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "suite": suite,
        "dataset": dataset,
        "algorithm": algorithm,
        "checkpoint": checkpoint,
        "training": training,
        "metrics": metrics,
        "sanity": sanity,
        "unreliable": bool(failures),
        "environment": environment,
        "execution": execution,
        "evaluation": evaluation,
        "wall_time_s": wall_time_s,
        "timing_s": timing_s,
        "peak_memory_bytes": peak_memory_bytes,
        "episodes_file": episodes_file,
        "run_key": run_key,
    }
    optional = {"scenarios": scenarios or None, "summary": summary, "breakdown": breakdown, "transfer": transfer,
                "footnote": "Attack-strength sanity checks failed: " + "; ".join(failures) + "." if failures else None}
    entry |= {k: v for k, v in optional.items() if v is not None}
    _, problems = check_entry(entry)
    if problems:
        raise MrbenchError("The result entry is not valid: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems)
                           + ".",
                           "Nothing was written. This is a bug in mrbench or in the plugin whose component "
                           "describes itself there; please report it with the message.")
    return entry
