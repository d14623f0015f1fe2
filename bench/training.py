"""The harness-owned meta-training loop.

sample a batch of episodes -> ``algorithm.loss`` (adapt + predict) over the batch
-> Adam step. Algorithms only supply the pure functions; the loop, resumption,
checkpointing and the execution strategy are the harness's, so adversarial or
shifted training work for every algorithm that uses this default step.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from bench.checkpoint import atomic_save, load_final, load_partial, partial_path, save_final
from bench.components import Algorithm, Episode, EpisodeSpec, ImageSplit
from bench.episodes import sample_batch
from bench.errors import MrbenchError
from bench.execution import Execution, for_algorithm, meta_loss_backward, pick_device, plan, predict_episodes
from bench.progress import NullReporter, Reporter, sigterm_as_interrupt
from bench.protocol.scenarios import ADVERSARIAL_TRAINING_TARGETS, format_eps
from bench.provenance import digest, environment
from bench.results.stats import mean_ci95
from bench.suites import Suite, get_suite, load_data


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run's result (its resume key)."""

    algorithm: str
    algorithm_version: str
    options: dict[str, Any]
    suite: str
    train_spec: dict[str, int]
    eval_spec: dict[str, int]
    seed: int
    meta_batch: int
    lr: float
    lr_decay_every: int
    lr_decay: float
    adversarial: dict[str, Any] | None = None

    def key(self) -> str:
        fields = asdict(self)
        if fields["adversarial"] is None:  # keys of natural runs are unchanged since before adversarial training
            del fields["adversarial"]
        return digest(fields)


@dataclass(frozen=True)
class Adversary:
    """Adversarial meta-training: every training batch is attacked before the loss.

    ``target="query"`` is adversarial querying (the queries are perturbed against the
    learner adapted on the clean support); ``"support"`` poisons the support set
    through adaptation. The attack runs against the training-time learner
    (``adapt(train=True)``) with the step's current parameters.
    """

    attack: Any
    eps: float
    target: str

    def describe(self) -> dict[str, Any]:
        return {"attack": self.attack.id, "version": self.attack.version,
                "options": self.attack.options.model_dump(mode="json"), "eps": self.eps,
                "eps_name": format_eps(self.eps), "target": self.target, "norm": self.attack.norm}

    def perturb(self, ctx: "TrainContext", batch: Any) -> Any:
        from bench.attacks import Victim, check_perturbation, snapshot

        victim = Victim(ctx.algorithm, ctx.params, ctx.spec.n_way, ctx.execution, train=True)
        before = snapshot(batch)
        adv = self.attack.perturb(victim, batch, self.eps, self.target, ctx.generator)
        check_perturbation(self.attack.id, self.attack.norm, self.eps, self.target, batch, before, adv)
        return adv


@dataclass
class TrainContext:
    """What one outer step gets: the default step uses it, and so can an algorithm's
    own ``train_step`` (Reptile's interpolation, pre-training a classifier).

    :param params: meta-parameters (leaf tensors, ``requires_grad``) the optimizer owns.
    :param split: the meta-train split, on the device.
    :param spec: the training episode spec.
    :param generator: the seeded training stream; draw every random number from it,
        so an interrupted run resumes exactly.
    :param step: the outer step about to run (0-based); ``steps``: the total.
    """

    algorithm: Algorithm
    params: dict[str, torch.Tensor]
    optimizer: torch.optim.Optimizer
    split: ImageSplit
    spec: EpisodeSpec
    meta_batch: int
    generator: torch.Generator
    execution: Execution
    step: int
    steps: int
    adversary: Adversary | None = None


def default_train_step(ctx: TrainContext) -> float:
    """Sample ``meta_batch`` episodes (attacked when ``ctx.adversary`` is set), average
    ``algorithm.loss`` over them, one optimizer step."""
    batch = sample_batch(ctx.split, ctx.spec, ctx.meta_batch, ctx.generator)
    if ctx.adversary is not None:
        batch = ctx.adversary.perturb(ctx, batch)
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = meta_loss_backward(ctx.algorithm, ctx.params, batch, ctx.spec.n_way, ctx.execution)
    ctx.optimizer.step()
    return loss


def classifier_train_step(ctx: TrainContext, logits: Any) -> float:
    """One supervised pre-training step (a classifier over every meta-train class, as
    fine-tuning baselines train): ``meta_batch`` images drawn uniformly from ``ctx.split``
    with ``ctx.generator``, cross-entropy of ``logits(images)`` (float in [0, 1], on the
    split's device) against their class labels, one optimizer step. Returns the loss."""
    from bench.episodes import to_float

    split, gen = ctx.split, ctx.generator
    idx = torch.randint(split.labels.shape[0], (ctx.meta_batch,), generator=gen, device=gen.device)
    idx = idx.to(split.images.device)
    x, y = to_float(split.images[idx]), split.labels[idx]
    ctx.optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(logits(x), y)
    loss.backward()
    ctx.optimizer.step()
    return float(loss.detach())


@dataclass
class TrainResult:
    """What :func:`train` returns.

    :param checkpoint: the checkpoint written (or found complete).
    :param sha256: its file digest.
    :param meta: its metadata (``weights_sha256`` included).
    :param resumed_from: the step the run resumed from (0: a fresh start).
    :param already_done: the checkpoint was complete before the call.
    """

    checkpoint: Path
    sha256: str
    meta: dict[str, Any]
    resumed_from: int = 0
    already_done: bool = False


def _resolve(algorithm: str | Algorithm, options: Mapping[str, Any] | None, registry: Any) -> tuple[Algorithm, Any]:
    if registry is None:
        from bench.plugins import get_registry

        registry = get_registry()
    if isinstance(algorithm, str):
        algorithm = registry.create("algorithm", algorithm, options)
    return algorithm, registry


def train(
    algorithm: str | Algorithm,
    suite: str | Suite,
    out: str | Path,
    *,
    steps: int | None = None,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    meta_batch: int | None = None,
    lr: float | None = None,
    device: str = "auto",
    data_root: str | Path | None = None,
    registry: Any = None,
    reporter: Reporter | None = None,
    execution: Execution | None = None,
    save_every_s: float = 30.0,
    val_every: int = 0,
    val_episodes: int = 100,
    adversary: Adversary | None = None,
    init_from: str | Path | None = None,
) -> TrainResult:
    """Meta-train ``algorithm`` on the meta-train split of ``suite``; write checkpoint ``out``.

    Re-running with the same arguments resumes an interrupted run from its
    ``out.partial`` file, or returns at once when ``out`` is already complete.

    :param algorithm: a registered algorithm id or an instance.
    :param suite: a suite id (``id`` or ``id@vN``) or a :class:`Suite`.
    :param out: checkpoint path.
    :param steps: outer steps (default: the algorithm's ``train_defaults``).
    :param seed: seeds the initialisation and the training episode stream.
    :param options: algorithm options (strict) when ``algorithm`` is an id.
    :param meta_batch: episodes per step (default: the algorithm's).
    :param lr: Adam learning rate (default: the algorithm's).
    :param device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
    :param data_root: dataset root (default ``MRBENCH_DATA``).
    :param reporter: progress reporter (the CLI passes a rich progress bar).
    :param execution: how to run the batch (default: per device, see :mod:`bench.execution`).
    :param save_every_s: seconds between resume points.
    :param val_every: every this many steps, evaluate on fixed episodes of the training
        dataset's ``meta-val`` split (test spec) and log it; 0 = never. The curve goes
        to ``out.log.jsonl`` and into the checkpoint's metadata; the checkpoint is
        always the last step (no selection on validation).
    :param val_episodes: episodes per validation.
    :param adversary: adversarial meta-training (see :class:`Adversary`); recorded in the
        checkpoint's ``adversarial`` field. Needs the harness's default training step.
    :param init_from: start from this checkpoint's weights (same algorithm, or one of the
        same ``weights_family``) instead of a fresh initialisation, e.g. adversarial
        fine-tuning of a naturally trained model;
        its sha256 is part of the run's key and recorded in the checkpoint (and, for
        adversarial runs, in ``adversarial.init_from``).
    """
    algo, registry = _resolve(algorithm, options, registry)
    run = _plan(algo, get_suite(suite) if isinstance(suite, str) else suite, Path(out), steps=steps, seed=seed,
                meta_batch=meta_batch, lr=lr, device=pick_device(device), execution=execution, adversary=adversary,
                init_from=init_from)
    done = _finished(run)
    if done is not None:
        return done
    dataset = _initialise(run, registry, data_root, seed)
    validation = _validation(run, dataset, data_root, val_episodes) if val_every else None
    run.out.parent.mkdir(parents=True, exist_ok=True)
    _resume(run)
    _train_steps(run, reporter or NullReporter(), save_every_s, val_every, validation)
    return _save(run)


@dataclass
class _Run:
    """One training run: what its steps share (the plan, then the state that a resume
    point holds)."""

    algo: Algorithm
    suite: Suite
    out: Path
    cfg: TrainConfig
    key: str
    spec: EpisodeSpec
    steps: int
    seed: int
    device: torch.device
    execution: Execution
    adversary: Adversary | None
    init_ref: dict[str, Any] | None
    init_params: dict[str, torch.Tensor] | None
    init_from: str | Path | None
    split: ImageSplit | None = None
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None
    start: int = 0
    elapsed: float = 0.0
    losses: list[float] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.out.with_name(self.out.name + ".log.jsonl")

    def recent_loss(self) -> float:
        """The mean loss of the last 50 steps (0 before the first)."""
        recent = self.losses[-50:]
        return sum(recent) / max(1, len(recent))


def _plan(algo: Algorithm, suite: Suite, out: Path, *, steps: int | None, seed: int, meta_batch: int | None,
          lr: float | None, device: torch.device, execution: Execution | None, adversary: Adversary | None,
          init_from: str | Path | None) -> _Run:
    """Resolve the defaults, check the arguments and derive the run's config and key."""
    d = algo.train_defaults(suite.spec)
    train_spec = EpisodeSpec(
        n_way=d.train_way or suite.spec.n_way,
        k_shot=suite.spec.k_shot,
        n_query=d.train_query or suite.train_query or suite.spec.n_query,
        image_shape=suite.spec.image_shape,
    )
    steps = int(steps if steps is not None else d.steps)
    if steps < 1:
        raise MrbenchError(f"--steps must be >= 1, got {steps}.")
    init_params, init_ref = _load_init(algo, init_from) if init_from is not None else (None, None)
    adv_desc = adversary.describe() if adversary is not None else None
    if adv_desc is not None and init_ref is not None:
        adv_desc["init_from"] = init_ref
    cfg = TrainConfig(
        algorithm=algo.id, algorithm_version=algo.version, options=algo.options.model_dump(mode="json"),
        suite=suite.ref, train_spec={"n_way": train_spec.n_way, "k_shot": train_spec.k_shot, "n_query": train_spec.n_query},
        eval_spec={"n_way": suite.spec.n_way, "k_shot": suite.spec.k_shot, "n_query": suite.spec.n_query},
        seed=seed, meta_batch=int(meta_batch or d.meta_batch), lr=float(lr or d.lr),
        lr_decay_every=d.lr_decay_every, lr_decay=d.lr_decay,
        adversarial=adv_desc,
    )
    if adversary is not None and algo.train_step is not None:
        raise MrbenchError(f"{algo.id} has its own training step, so adversarial meta-training cannot attack its batches.",
                           "Adversarial training works for algorithms that use the harness's default step.")
    if adversary is not None and adversary.target not in ADVERSARIAL_TRAINING_TARGETS:
        raise MrbenchError(f"--adv-target {adversary.target!r} is not supported.", "Use query or support.")
    key = cfg.key() if init_ref is None else digest([cfg.key(), init_ref["sha256"]])
    return _Run(algo, suite, out, cfg, key, train_spec, steps, seed, device, for_algorithm(execution or plan(device), algo),
                adversary, init_ref, init_params, init_from)


def _load_init(algo: Algorithm, init_from: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights of checkpoint ``init_from`` (same algorithm, or one of the same
    :attr:`~bench.components.Algorithm.weights_family`) and its reference for the run's
    key and metadata."""
    from bench.plugins import family_hint, get_registry, same_weights
    from bench.zoo import is_zoo_ref, load_checkpoint

    init_params, init_meta, init_ck = load_checkpoint(init_from if is_zoo_ref(init_from) else Path(init_from))
    other = init_meta["algorithm"]["id"]
    if other != algo.id and not same_weights(get_registry(), algo.id, other):
        raise MrbenchError(f"--init-from {init_from} holds a {other!r} checkpoint, not {algo.id!r}.",
                           "Start from a checkpoint of the same algorithm" + family_hint(get_registry(), algo.id))
    init_ref = {"file": init_ck["file"], "sha256": init_ck["sha256"], "steps": init_meta.get("steps"),
                "adversarial": init_meta.get("adversarial")}
    if other != algo.id:
        init_ref["algorithm"] = other
    return init_params, init_ref


def _finished(run: _Run) -> TrainResult | None:
    """The result of a run whose checkpoint is already complete; an error when ``out``
    holds another run's checkpoint."""
    if not run.out.exists():
        return None
    _, meta, sha = load_final(run.out)
    if meta.get("config_key") == run.key and meta.get("steps") == run.steps:
        return TrainResult(run.out, sha, meta, already_done=True)
    raise MrbenchError(
        f"{run.out} already holds a checkpoint of a different training run "
        f"({meta.get('algorithm', {}).get('id')} on {meta.get('suite')}, {meta.get('steps')} steps).",
        "Pass another --out, or delete the file to train again.",
    )


def _initialise(run: _Run, registry: Any, data_root: str | Path | None, seed: int) -> Any:
    """Load the meta-train split; set the initial parameters, the optimizer and the
    training generator. Returns the training dataset."""
    dataset, split = load_data(run.suite.train, registry, data_root)
    run.split = split.to(run.device)
    # init_for_training defaults to init; a resumed run overwrites these values from its partial file.
    init = run.algo.init_for_training(run.suite.spec, torch.Generator().manual_seed(seed), run.split)
    if run.init_params is not None:
        missing = sorted(set(init) - set(run.init_params))
        if missing:
            raise MrbenchError(f"--init-from {run.init_from} lacks parameters {', '.join(missing)}.",
                               "It was trained with other options; pass the same -o options.")
        init = {k: run.init_params[k].to(init[k].dtype) if k in run.init_params else v for k, v in init.items()}
    run.params = {k: v.to(run.device).requires_grad_(True) for k, v in init.items()}
    run.optimizer = torch.optim.Adam(run.algo.param_groups(run.params), lr=run.cfg.lr)
    run.generator = torch.Generator(device=run.device).manual_seed(seed + 1)
    return dataset


def _validation(run: _Run, dataset: Any, data_root: str | Path | None, val_episodes: int
                ) -> tuple[ImageSplit, Episode] | None:
    """The fixed validation episodes of the training dataset's ``meta-val`` split (test
    spec), as ``(split, episodes)``; ``None`` when the dataset has no such split."""
    from bench.episodes import gather, make_manifest

    if "meta-val" not in getattr(dataset, "splits", ()):
        return None
    vsplit = dataset.load("meta-val", data_root).to(run.device)
    vman = make_manifest(vsplit, run.suite.spec, val_episodes, seed=12345)
    return vsplit, gather(vsplit, vman.to(run.device))


def _validate(run: _Run, validation: tuple[ImageSplit, Episode] | None, step: int, spent: float) -> None:
    """Log the recent loss (and the validation accuracy, when there are episodes) to
    ``out.log.jsonl`` and the run's curve."""
    rec: dict[str, Any] = {"step": step, "elapsed_s": round(spent, 1), "loss": run.recent_loss()}
    if validation is not None:
        episodes = validation[1]
        logits = predict_episodes(run.algo, run.params, episodes, run.suite.spec.n_way, plan(run.device))
        acc, ci = mean_ci95(((logits.argmax(-1) == episodes.y_query).float().mean(-1)).tolist())
        rec.update(val_accuracy=acc, val_ci95=ci)
    run.curve.append(rec)
    with open(run.log_path, "a") as f:
        f.write(json.dumps(rec) + "\n")


def _resume(run: _Run) -> None:
    """Continue from ``out.partial`` when it holds this run (same key)."""
    partial = load_partial(run.out)
    if partial is not None and partial.get("config_key") == run.key:
        with torch.no_grad():
            for k, v in partial["params"].items():
                run.params[k].copy_(v)
        run.optimizer.load_state_dict(partial["optimizer"])
        run.generator.set_state(partial["generator"])
        run.start, run.elapsed = int(partial["step"]), float(partial["elapsed_s"])
        run.losses = list(partial.get("losses", []))
        run.curve = list(json.loads(partial.get("curve", "[]")))
    if run.start > run.steps:
        raise MrbenchError(f"{partial_path(run.out)} is at step {run.start}, past --steps {run.steps}.",
                           "Ask for at least as many steps, or delete the resume file.")


def _save_partial(run: _Run, step: int, spent: float, gen_state: torch.Tensor) -> None:
    """Write the resume point ``out.partial`` at ``step``."""
    run.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_save({"config_key": run.key, "step": step, "elapsed_s": spent, "losses": run.losses[-1000:],
                 "params": {k: v.detach().cpu() for k, v in run.params.items()},
                 "optimizer": run.optimizer.state_dict(), "generator": gen_state,
                 "curve": json.dumps(run.curve)}, partial_path(run.out))


def _train_steps(run: _Run, reporter: Reporter, save_every_s: float, val_every: int,
                 validation: tuple[ImageSplit, Episode] | None) -> None:
    """The outer steps from ``run.start``: each step, then validation and resume points
    as due. An interrupt (Ctrl-C, SIGTERM) saves a resume point and raises."""
    reporter.start(run.steps, f"train {run.algo.id} on {run.suite.id}", completed=run.start)
    t0, last_save, step = time.perf_counter(), time.perf_counter(), run.start
    gen_state = run.generator.get_state()
    with sigterm_as_interrupt():
        try:
            while step < run.steps:
                # The stream position at the start of the step: an interrupted step is redone exactly.
                gen_state = run.generator.get_state()
                loss = _one_step(run, step)
                step, gen_state = step + 1, run.generator.get_state()
                run.losses.append(loss)
                reporter.advance(1, loss=sum(run.losses[-50:]) / len(run.losses[-50:]))
                if val_every and (step % val_every == 0 or step == run.steps):
                    _validate(run, validation, step, run.elapsed + time.perf_counter() - t0)
                if time.perf_counter() - last_save > save_every_s and step < run.steps:
                    _save_partial(run, step, run.elapsed + time.perf_counter() - t0, run.generator.get_state())
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            _save_partial(run, step, run.elapsed + time.perf_counter() - t0, gen_state)
            reporter.stop()
            raise MrbenchError(f"Interrupted at step {step}/{run.steps}; progress saved to {partial_path(run.out)}.",
                               "Run the same command again to resume.") from None
    reporter.stop()
    run.elapsed += time.perf_counter() - t0


def _one_step(run: _Run, step: int) -> float:
    """Outer step ``step``: the decayed learning rate, then the algorithm's own training
    step or the default one. Returns its loss (an error when it is not finite)."""
    cfg = run.cfg
    if cfg.lr_decay_every:
        for group in run.optimizer.param_groups:
            group["lr"] = cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_every)
    ctx = TrainContext(run.algo, run.params, run.optimizer, run.split, run.spec, cfg.meta_batch, run.generator,
                       run.execution, step, run.steps, run.adversary)
    loss = run.algo.train_step(ctx) if run.algo.train_step is not None else default_train_step(ctx)
    if not math.isfinite(loss):
        raise MrbenchError(f"Training diverged at step {step} (loss {loss}).",
                           "Lower the learning rate (--lr) or check the algorithm's options.")
    return loss


def _save(run: _Run) -> TrainResult:
    """Write the final checkpoint with its metadata; remove the resume point."""
    algo, cfg, ex = run.algo, run.cfg, run.execution
    meta = {
        "kind": "mrbench-checkpoint",
        "config_key": run.key,
        "algorithm": {**algo.describe(), "transductive": bool(algo.transductive)},
        "suite": run.suite.ref,
        "train_data": {"dataset": run.suite.train.dataset, "options": run.suite.train.options,
                       "split": run.suite.train.split, "revision": run.split.revision},
        "train_spec": cfg.train_spec,
        "eval_spec": cfg.eval_spec,
        "steps": run.steps,
        "seed": run.seed,
        "meta_batch": cfg.meta_batch,
        "lr": cfg.lr,
        "lr_decay_every": cfg.lr_decay_every,
        "lr_decay": cfg.lr_decay,
        "episodes_seen": run.steps * cfg.meta_batch,
        "final_loss": run.recent_loss(),
        "wall_time_s": round(run.elapsed, 2),
        "execution": {"strategy": ex.strategy, "chunk": ex.chunk, "channels_last": ex.channels_last},
        "environment": environment(run.device),
        "adversarial": cfg.adversarial,
        "init_from": run.init_ref,
        "validation": run.curve,
    }
    sha = save_final(run.out, run.params, meta)
    meta = load_final(run.out)[1]  # with weights_sha256
    partial_path(run.out).unlink(missing_ok=True)
    return TrainResult(run.out, sha, meta, resumed_from=run.start)
