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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from bench.checkpoint import atomic_save, load_final, load_partial, partial_path, save_final
from bench.components import Algorithm, EpisodeSpec, ImageSplit
from bench.episodes import sample_batch
from bench.errors import MrbenchError
from bench.execution import Execution, for_algorithm, meta_loss_backward, pick_device, plan
from bench.progress import NullReporter, Reporter, sigterm_as_interrupt
from bench.protocol.scenarios import ADVERSARIAL_TRAINING_TARGETS, format_eps
from bench.provenance import digest, environment
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
    :param init_from: start from this checkpoint's weights (same algorithm) instead of a
        fresh initialisation, e.g. adversarial fine-tuning of a naturally trained model;
        its sha256 is part of the run's key and recorded in the checkpoint (and, for
        adversarial runs, in ``adversarial.init_from``).
    """
    algo, registry = _resolve(algorithm, options, registry)
    suite = get_suite(suite) if isinstance(suite, str) else suite
    reporter = reporter or NullReporter()
    dev = pick_device(device)
    ex = for_algorithm(execution or plan(dev), algo)
    out = Path(out)

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
    init_params, init_ref = None, None
    if init_from is not None:
        from bench.zoo import is_zoo_ref, load_checkpoint

        init_params, init_meta, init_ck = load_checkpoint(init_from if is_zoo_ref(init_from) else Path(init_from))
        if init_meta["algorithm"]["id"] != algo.id:
            raise MrbenchError(f"--init-from {init_from} holds a {init_meta['algorithm']['id']!r} checkpoint, not {algo.id!r}.",
                               "Start from a checkpoint of the same algorithm.")
        init_ref = {"file": init_ck["file"], "sha256": init_ck["sha256"], "steps": init_meta.get("steps"),
                    "adversarial": init_meta.get("adversarial")}
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

    if out.exists():
        _, meta, sha = load_final(out)
        if meta.get("config_key") == key and meta.get("steps") == steps:
            return TrainResult(out, sha, meta, already_done=True)
        raise MrbenchError(
            f"{out} already holds a checkpoint of a different training run "
            f"({meta.get('algorithm', {}).get('id')} on {meta.get('suite')}, {meta.get('steps')} steps).",
            "Pass another --out, or delete the file to train again.",
        )

    dataset, split = load_data(suite.train, registry, data_root)
    split = split.to(dev)
    # init_for_training defaults to init; a resumed run overwrites these values from its partial file.
    init = algo.init_for_training(suite.spec, torch.Generator().manual_seed(seed), split)
    if init_params is not None:
        missing = sorted(set(init) - set(init_params))
        if missing:
            raise MrbenchError(f"--init-from {init_from} lacks parameters {', '.join(missing)}.",
                               "It was trained with other options; pass the same -o options.")
        init = {k: init_params[k].to(init[k].dtype) if k in init_params else v for k, v in init.items()}
    params = {k: v.to(dev).requires_grad_(True) for k, v in init.items()}
    optimizer = torch.optim.Adam(algo.param_groups(params), lr=cfg.lr)
    gen = torch.Generator(device=dev).manual_seed(seed + 1)
    start, elapsed, losses = 0, 0.0, []

    val = None
    if val_every:
        from bench.episodes import gather, make_manifest
        from bench.execution import predict_episodes

        if "meta-val" in getattr(dataset, "splits", ()):
            vsplit = dataset.load("meta-val", data_root).to(dev)
            vman = make_manifest(vsplit, suite.spec, val_episodes, seed=12345)
            val = (vsplit, gather(vsplit, vman.to(dev)))
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.with_name(out.name + ".log.jsonl")
    curve: list[dict[str, Any]] = []

    def validate(step: int, spent: float) -> None:
        from bench.results.stats import mean_ci95

        rec: dict[str, Any] = {"step": step, "elapsed_s": round(spent, 1), "loss": sum(losses[-50:]) / max(1, len(losses[-50:]))}
        if val is not None:
            logits = predict_episodes(algo, params, val[1], suite.spec.n_way, plan(dev))
            acc, ci = mean_ci95(((logits.argmax(-1) == val[1].y_query).float().mean(-1)).tolist())
            rec.update(val_accuracy=acc, val_ci95=ci)
        curve.append(rec)
        with open(log_path, "a") as f:
            f.write(json.dumps(rec) + "\n")

    partial = load_partial(out)
    if partial is not None and partial.get("config_key") == key:
        with torch.no_grad():
            for k, v in partial["params"].items():
                params[k].copy_(v)
        optimizer.load_state_dict(partial["optimizer"])
        gen.set_state(partial["generator"])
        start, elapsed = int(partial["step"]), float(partial["elapsed_s"])
        losses = list(partial.get("losses", []))
        curve = list(json.loads(partial.get("curve", "[]")))
    if start > steps:
        raise MrbenchError(f"{partial_path(out)} is at step {start}, past --steps {steps}.",
                           "Ask for at least as many steps, or delete the resume file.")

    def checkpoint_partial(step: int, spent: float, gen_state: torch.Tensor) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_save({"config_key": key, "step": step, "elapsed_s": spent, "losses": losses[-1000:],
                     "params": {k: v.detach().cpu() for k, v in params.items()},
                     "optimizer": optimizer.state_dict(), "generator": gen_state,
                     "curve": json.dumps(curve)}, partial_path(out))

    reporter.start(steps, f"train {algo.id} on {suite.id}", completed=start)
    t0, last_save, step = time.perf_counter(), time.perf_counter(), start
    gen_state = gen.get_state()
    with sigterm_as_interrupt():
        try:
            while step < steps:
                # The stream position at the start of the step: an interrupted step is redone exactly.
                gen_state = gen.get_state()
                if cfg.lr_decay_every:
                    for group in optimizer.param_groups:
                        group["lr"] = cfg.lr * cfg.lr_decay ** (step // cfg.lr_decay_every)
                ctx = TrainContext(algo, params, optimizer, split, train_spec, cfg.meta_batch, gen, ex, step, steps, adversary)
                loss = algo.train_step(ctx) if algo.train_step is not None else default_train_step(ctx)
                if not math.isfinite(loss):
                    raise MrbenchError(f"Training diverged at step {step} (loss {loss}).",
                                       "Lower the learning rate (--lr) or check the algorithm's options.")
                step, gen_state = step + 1, gen.get_state()
                losses.append(loss)
                reporter.advance(1, loss=sum(losses[-50:]) / len(losses[-50:]))
                if val_every and (step % val_every == 0 or step == steps):
                    validate(step, elapsed + time.perf_counter() - t0)
                if time.perf_counter() - last_save > save_every_s and step < steps:
                    checkpoint_partial(step, elapsed + time.perf_counter() - t0, gen.get_state())
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            checkpoint_partial(step, elapsed + time.perf_counter() - t0, gen_state)
            reporter.stop()
            raise MrbenchError(f"Interrupted at step {step}/{steps}; progress saved to {partial_path(out)}.",
                               "Run the same command again to resume.") from None
    reporter.stop()
    wall = elapsed + time.perf_counter() - t0
    meta = {
        "kind": "mrbench-checkpoint",
        "config_key": key,
        "algorithm": {**algo.describe(), "transductive": bool(algo.transductive)},
        "suite": suite.ref,
        "train_data": {"dataset": suite.train.dataset, "options": suite.train.options, "split": suite.train.split,
                       "revision": split.revision},
        "train_spec": cfg.train_spec,
        "eval_spec": cfg.eval_spec,
        "steps": steps,
        "seed": seed,
        "meta_batch": cfg.meta_batch,
        "lr": cfg.lr,
        "lr_decay_every": cfg.lr_decay_every,
        "lr_decay": cfg.lr_decay,
        "episodes_seen": steps * cfg.meta_batch,
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        "wall_time_s": round(wall, 2),
        "execution": {"strategy": ex.strategy, "chunk": ex.chunk, "channels_last": ex.channels_last},
        "environment": environment(dev),
        "adversarial": cfg.adversarial,
        "init_from": init_ref,
        "validation": curve,
    }
    sha = save_final(out, params, meta)
    meta = load_final(out)[1]  # with weights_sha256
    partial_path(out).unlink(missing_ok=True)
    return TrainResult(out, sha, meta, resumed_from=start)


