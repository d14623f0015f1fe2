"""Contract checks every algorithm plugin must pass (:data:`ALGORITHM_CHECKS`).

Each check takes an algorithm instance and raises :class:`~bench.testing.ContractError`
(an ``AssertionError``) with a message naming the algorithm and what to change. No check
skips, so checking several variants in one test never hides one: where an algorithm
declares that a property does not hold, the check verifies the declaration instead
(query independence of a ``transductive`` algorithm: the other queries do change its
logits; ``vmap`` of a ``vmap_unsafe`` one: the harness's batched plans loop over it).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest
import torch
import torch.nn.functional as F

from bench.components import Algorithm, EpisodeSpec, ImageSplit
from bench.errors import OptionsError
from bench.execution import Execution, map_episodes, meta_loss_backward
from bench.testing._common import KEBAB, SPEC, ContractError, init_params, random_episodes

if TYPE_CHECKING:
    from torch import Tensor

    from bench.components import Episode, Params
    from bench.training import TrainContext

GRADIENT_SPEC = EpisodeSpec(n_way=3, k_shot=1, n_query=1, image_shape=(1, 16, 16))
"""The episode of the gradient check: tiny (16x16 is the smallest image conv4's four
pools take), because finite differences re-run ``adapt`` for every evaluation. An
algorithm that cannot run on it is checked on :data:`SPEC` instead."""

GRADIENT_DIRECTIONS = 2
"""Random directions along which the gradient check compares derivatives, per input."""

GRADIENT_STEP = 1e-7
"""Step of the central finite differences, along unit-norm directions, in float64."""

GRADIENT_RTOL = 1e-2
"""Largest relative difference between the autograd and the finite-difference directional
derivatives. A correct learner's finite differences are off only by rounding and by the
curvature of its loss over the step (largest for Reptile's 50 inner Adam steps), orders
of magnitude below this; a cut path (``detach``) or a rescaled one (e.g. a gradient
scaled by 1e-3) is off by order 1."""


def _shape_error(algo: Algorithm, got: Any, expected: tuple[int, int]) -> ContractError:
    shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
    return ContractError(
        f"{algo.id}: predict returned logits of shape {shape} for {expected[0]} query images of a {expected[1]}-way "
        f"episode; it must return [n_query_total, n_way] = {list(expected)} (a row per query image, a column per "
        "class). Fix predict's output before the other checks can say anything.")


def checked_predict(algo: Algorithm, params: Params, state: Any, x_query: Tensor, n_way: int) -> Tensor:
    """``algo.predict`` whose output must be logits ``[n_query_total, n_way]``.

    :raises ContractError: any other shape (one message, whatever check calls it).
    """
    out = algo.predict(params, state, x_query)
    expected = (int(x_query.shape[0]), int(n_way))
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        raise _shape_error(algo, out, expected)
    return out


def _logits(algo: Algorithm, params: Params, ep: Episode, n_way: int) -> Tensor:
    return checked_predict(algo, params, algo.adapt(params, ep.x_support, ep.y_support, n_way=n_way), ep.x_query,
                           n_way)


@contextlib.contextmanager
def _shape_first(algo: Algorithm) -> Iterator[None]:
    """Around harness code (training steps): when it fails, and the cause is the shape of
    the logits, report that in one message instead of torch's error from deep inside."""
    try:
        yield
    except ContractError:
        raise
    except Exception:
        with torch.no_grad():
            _logits(algo, init_params(algo), random_episodes()[0], SPEC.n_way)  # raises on a wrong shape
        raise


def check_metadata(algo: Algorithm) -> None:
    """A kebab-case ``id``, a boolean ``transductive``, a stated ``bn_policy`` and
    options that serialise into result entries."""
    assert KEBAB.fullmatch(algo.id), "id must be kebab-case"
    assert isinstance(algo.transductive, bool)
    assert algo.bn_policy, "state the BatchNorm policy"
    assert algo.vmap_unsafe is None or (isinstance(algo.vmap_unsafe, str) and algo.vmap_unsafe.strip()), \
        "vmap_unsafe is None (vmap-safe) or one line saying why adapt/predict are not vmap-safe"
    algo.options.model_dump(mode="json")  # options must serialise into result entries


def check_init_deterministic(algo: Algorithm) -> None:
    """``init`` depends only on its generator."""
    a, b = init_params(algo, seed=3), init_params(algo, seed=3)
    assert a.keys() == b.keys() and a, "init must return a non-empty dict of tensors"
    for k in a:
        assert torch.equal(a[k], b[k]), f"init is not deterministic under its generator ({k})"


def check_logits_shape(algo: Algorithm) -> None:
    """``predict`` returns finite logits ``[n_query_total, n_way]``."""
    ep = random_episodes()[0]
    out = _logits(algo, init_params(algo), ep, SPEC.n_way)
    if not torch.isfinite(out).all():
        raise ContractError(f"{algo.id}: predict returned non-finite logits on random images")


def check_pure(algo: Algorithm) -> None:
    """Same inputs, same outputs; inputs are not mutated."""
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    before = [t.clone() for t in ep.tensors()] + [v.clone() for v in params.values()]
    first = _logits(algo, params, ep, SPEC.n_way)
    second = _logits(algo, params, ep, SPEC.n_way)
    assert torch.equal(first, second), "adapt/predict are not deterministic"
    after = list(ep.tensors()) + list(params.values())
    assert all(torch.equal(x, y) for x, y in zip(before, after)), "adapt/predict mutated an input"


def check_vmap_matches_loop(algo: Algorithm) -> None:
    """``torch.func.vmap`` over episodes (the harness's :func:`bench.execution.map_episodes`)
    gives the per-episode loop's logits.

    An algorithm that declares why it is not ``vmap``-safe (``vmap_unsafe``) is run one
    episode at a time by the harness; for it, the check verifies that the harness's batched
    plan does exactly that (same logits as the loop), so a batched evaluation, training
    step or attack never ``vmap``s it.
    """
    params = init_params(algo, dtype=torch.float64)
    eps = random_episodes(dtype=torch.float64)
    loop = torch.stack([_logits(algo, params, eps[e], SPEC.n_way) for e in range(eps.x_support.shape[0])])
    if algo.vmap_unsafe:
        from bench.attacks import Victim
        from bench.execution import predict_episodes

        batched_plan = Execution("vmap", chunk=2)
        torch.testing.assert_close(predict_episodes(algo, params, eps, SPEC.n_way, batched_plan), loop,
                                   rtol=1e-9, atol=1e-10)
        victim = Victim(algo, params, SPEC.n_way, batched_plan)
        assert victim.execution.strategy == "loop", "the attacks' victim would vmap an algorithm that is not vmap-safe"
        return
    batched = map_episodes(lambda xs, ys, xq: algo.predict(params, algo.adapt(params, xs, ys, n_way=SPEC.n_way), xq),
                           Execution("vmap", chunk=2), eps.x_support, eps.y_support, eps.x_query)
    torch.testing.assert_close(batched, loop, rtol=1e-9, atol=1e-10)


def _gradient_episode(algo: Algorithm) -> tuple[EpisodeSpec, Params, Episode]:
    """Float64 parameters and one episode of :data:`GRADIENT_SPEC`, or of :data:`SPEC`
    for an algorithm that cannot run on 16x16 images."""
    for spec in (GRADIENT_SPEC, SPEC):
        params = init_params(algo, spec=spec, dtype=torch.float64)
        ep = random_episodes(spec=spec, n_episodes=1, dtype=torch.float64)[0]
        if spec is SPEC:
            return spec, params, ep
        try:
            with torch.no_grad():
                _logits(algo, params, ep, spec.n_way)
            return spec, params, ep
        except Exception:  # e.g. a head sized for 28x28 images: check on the standard spec
            continue
    raise AssertionError("unreachable")


def _directional(loss: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, h: float) -> float:
    """Central finite difference of ``loss`` at ``x`` along ``v`` with step ``h``."""
    return float((loss(x + h * v) - loss(x - h * v)) / (2 * h))


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= GRADIENT_RTOL * max(abs(a), abs(b)) + 1e-9


def _compare_gradient(algo: Algorithm, name: str, path: str, grad: Tensor | None, x: Tensor,
                      loss: Callable[[Tensor], Tensor], generator: torch.Generator) -> None:
    """Compare ``<grad, v>`` with finite differences of ``loss`` along random unit ``v``.

    A direction along which the finite differences at ``h`` and ``h / 2`` disagree
    crosses a point where the loss is not smooth (a ReLU or max-pool switching inside
    an inner loop) and is replaced by a new one; a mismatch that both steps confirm is
    the gradient's fault.
    """
    if grad is None or not bool((grad != 0).any()):
        raise ContractError(
            f"{algo.id}: no gradient of the query loss reaches {name} ({path}); attacks on the "
            f"{name.removeprefix('x_')} set need it. Keep every computation from {name} to the logits differentiable "
            "(no .detach(), no torch.no_grad(), no .item()/numpy round trips).")
    autograd, finite = [], []
    for _ in range(GRADIENT_DIRECTIONS + 4):
        if len(autograd) == GRADIENT_DIRECTIONS:
            break
        v = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        v = v / v.norm()
        a, f = float((grad * v).sum()), _directional(loss, x, v, GRADIENT_STEP)
        if not _close(a, f):
            f_half = _directional(loss, x, v, GRADIENT_STEP / 2)
            if not _close(f, f_half):
                continue  # the loss is not smooth within the step along v: not a usable direction
            f = f_half
        autograd.append(a)
        finite.append(f)
    if not autograd:
        raise ContractError(
            f"{algo.id}: finite differences of the query loss w.r.t. {name} disagree between steps "
            f"{GRADIENT_STEP:g} and {GRADIENT_STEP / 2:g} along {GRADIENT_DIRECTIONS + 4} random directions: the loss "
            "is not a smooth function of its inputs (e.g. a threshold or rounding), and attacks cannot follow its "
            "gradient.")
    a_t, f_t = torch.tensor(autograd, dtype=torch.float64), torch.tensor(finite, dtype=torch.float64)
    err = float((a_t - f_t).norm() / max(float(a_t.norm()), float(f_t.norm())))
    if err > GRADIENT_RTOL:
        ratio = float(a_t.norm() / f_t.norm()) if float(f_t.norm()) > 0 else math.inf
        raise ContractError(
            f"{algo.id}: the autograd gradient of the query loss w.r.t. {name} ({path}) does not match finite "
            f"differences: directional derivatives {_fmt(autograd)} (autograd) vs {_fmt(finite)} (finite "
            f"differences), relative error {err:.3g} > {GRADIENT_RTOL:g}; autograd is {ratio:.3g}x the true size. "
            f"The {name} path is cut (a .detach() or no_grad) or rescaled somewhere, so attacks through it "
            "would look weaker than they are. Keep that path differentiable as it is computed.")


def _fmt(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.6g}" for v in values) + "]"


def check_input_gradients(algo: Algorithm) -> None:
    """The autograd gradient of the query loss (cross-entropy of the logits) w.r.t. the
    support images (through ``adapt``) and, separately, w.r.t. the query images equals
    the derivative the loss really has: central finite differences along random
    directions, in float64 (``torch.autograd.gradcheck``-style). Attacks follow these
    gradients; a path that is cut (``detach``) or rescaled makes them look weak and the
    learner look robust, even where a tiny gradient still leaks (e.g. through BatchNorm
    statistics)."""
    spec, params, ep = _gradient_episode(algo)
    xs = ep.x_support.clone().requires_grad_(True)
    xq = ep.x_query.clone().requires_grad_(True)
    with torch.enable_grad():
        logits = checked_predict(algo, params, algo.adapt(params, xs, ep.y_support, n_way=spec.n_way), xq, spec.n_way)
        g_support, g_query = torch.autograd.grad(F.cross_entropy(logits, ep.y_query), (xs, xq), allow_unused=True)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        state = algo.adapt(params, ep.x_support, ep.y_support, n_way=spec.n_way)

        def support_loss(x: Tensor) -> Tensor:
            s = algo.adapt(params, x, ep.y_support, n_way=spec.n_way)
            return F.cross_entropy(algo.predict(params, s, ep.x_query), ep.y_query)

        def query_loss(x: Tensor) -> Tensor:
            return F.cross_entropy(algo.predict(params, state, x), ep.y_query)

        _compare_gradient(algo, "x_support", "through adapt", g_support, ep.x_support, support_loss, generator)
        _compare_gradient(algo, "x_query", "through predict", g_query, ep.x_query, query_loss, generator)


def check_meta_gradient_batched_equals_loop(algo: Algorithm) -> None:
    """The harness's batched (vmap) training path and its channels-last loop give the
    per-episode loop's meta-gradient (second order included), in float64. Guards e.g.
    native BatchNorm under vmap (the loop runs native batch-norm kernels, vmap the
    hand-written form; see :func:`bench.nn.conv_blocks`)."""
    eps = random_episodes(dtype=torch.float64)
    grads = []
    for ex in (Execution("loop"), Execution("vmap", chunk=2), Execution("loop", channels_last=True)):
        params = {k: v.requires_grad_(True) for k, v in init_params(algo, dtype=torch.float64).items()}
        with _shape_first(algo):
            meta_loss_backward(algo, params, eps, SPEC.n_way, ex)
        grads.append({k: (torch.zeros_like(v) if v.grad is None else v.grad) for k, v in params.items()})
    assert any(g.abs().sum() > 0 for g in grads[0].values()), "the training loss has no gradient"
    names = ("vmap", "loop+channels_last")
    for name, other in zip(names, grads[1:]):
        for k in grads[0]:
            # Tolerance relative to the tensor's largest entry: float64 reduction order differs
            # between CPUs (measured ~2e-9 of the largest entry for Reptile's many inner steps),
            # while the BatchNorm-under-vmap bug this guards against is a ~2% error.
            scale = float(grads[0][k].abs().max())
            torch.testing.assert_close(other[k], grads[0][k], rtol=1e-7, atol=1e-10 + 1e-7 * scale,
                                       msg=f"{name}: meta-gradient differs from the loop's for {k}")


def check_query_independence(algo: Algorithm) -> None:
    """A non-transductive algorithm gives each query the same logits alone and in a batch.

    A transductive one (``transductive = True``) is ranked separately, so its declaration
    must be true: replacing the other queries of the batch must change some query's
    logits (a learner that declared itself transductive without being so would leave the
    inductive ranking for no reason). This check never skips, so a transductive variant
    checked in the same test cannot hide a non-transductive one.
    """
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    if algo.transductive:
        _check_transductive(algo, params, ep)
        return
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    batch = checked_predict(algo, params, state, ep.x_query, SPEC.n_way)
    for i in range(ep.x_query.shape[0]):
        alone = checked_predict(algo, params, state, ep.x_query[i : i + 1], SPEC.n_way)
        if not torch.allclose(alone[0], batch[i], rtol=1e-9, atol=1e-10):
            raise ContractError(
                f"{algo.id}: query {i}'s logits differ when it is predicted alone ({alone[0].tolist()}) and with the "
                f"other queries ({batch[i].tolist()}): predict is transductive (e.g. BatchNorm over the query batch). "
                "Declare transductive = True (such entries are ranked separately), or normalise queries with "
                "statistics that do not depend on the other queries (e.g. the support set's).")


def _check_transductive(algo: Algorithm, params: Params, ep: Episode) -> None:
    """Some query's logits change when the *other* queries are replaced by new images
    (the batch keeps its size, so a method that needs a full query set still runs)."""
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    batch = checked_predict(algo, params, state, ep.x_query, SPEC.n_way)
    others = random_episodes(dtype=ep.x_query.dtype, seed=1)[0].x_query
    for i in range(ep.x_query.shape[0]):
        mixed = others.clone()
        mixed[i] = ep.x_query[i]
        if not torch.allclose(checked_predict(algo, params, state, mixed, SPEC.n_way)[i], batch[i], rtol=1e-9,
                              atol=1e-10):
            return
    raise ContractError(
        f"{algo.id}: declares transductive = True, but no query's logits change when the other queries of its batch "
        "are replaced: predict treats queries independently. Declare transductive = False (transductive entries are "
        "ranked separately), or check why the other queries have no effect.")


def random_split(n_classes: int = 7, per_class: int = 5, spec: EpisodeSpec = SPEC, seed: int = 0) -> ImageSplit:
    """A small in-memory meta-train split of random uint8 images."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n_classes * per_class, *spec.image_shape), generator=g, dtype=torch.uint8)
    return ImageSplit(images, torch.arange(n_classes).repeat_interleave(per_class), [f"c{i}" for i in range(n_classes)])


def check_training_params_cover_init(algo: Algorithm) -> None:
    """What a training run starts from (``init_for_training``) holds every tensor of ``init``
    with the same shape, so ``adapt``/``predict`` work on a trained checkpoint."""
    a = init_params(algo, seed=3)
    b = algo.init_for_training(SPEC, torch.Generator().manual_seed(3), random_split())
    for k, v in a.items():
        assert k in b, f"init_for_training lacks {k!r}, which adapt/predict use"
        assert b[k].shape == v.shape, f"init_for_training gives {k!r} shape {tuple(b[k].shape)}, init {tuple(v.shape)}"


def make_train_context(algo: Algorithm, split: ImageSplit | None = None, spec: EpisodeSpec = SPEC, meta_batch: int = 2,
                       seed: int = 0, step: int = 0, steps: int = 10, lr: float | None = None) -> "TrainContext":
    """A :class:`bench.training.TrainContext` like the one :func:`bench.train` builds (fresh
    ``init_for_training`` params, Adam at the algorithm's default ``lr``, seeded
    generator, per-episode loop), on :func:`random_split` unless ``split`` is given."""
    from bench.training import TrainContext

    split = split if split is not None else random_split(spec=spec)
    init = algo.init_for_training(spec, torch.Generator().manual_seed(seed), split)
    params = {k: v.requires_grad_(True) for k, v in init.items()}
    optimizer = torch.optim.Adam(algo.param_groups(params), lr=lr if lr is not None else algo.train_defaults(spec).lr)
    return TrainContext(algo, params, optimizer, split, spec, meta_batch, torch.Generator().manual_seed(seed + 1),
                        Execution("loop"), step, steps)


def run_train_step(ctx: "TrainContext") -> float:
    """One outer step: the algorithm's ``train_step`` when it has one, else the harness's."""
    from bench.training import default_train_step

    return ctx.algorithm.train_step(ctx) if ctx.algorithm.train_step is not None else default_train_step(ctx)


def check_train_step(algo: Algorithm) -> None:
    """One outer step (the algorithm's own ``train_step`` or the harness's) gives a finite
    loss, changes the parameters, and is deterministic under the training generator
    (an interrupted run resumes exactly)."""
    runs = []
    for _ in range(2):
        ctx = make_train_context(algo)
        before = {k: v.detach().clone() for k, v in ctx.params.items()}
        with _shape_first(algo):
            loss = run_train_step(ctx)
        assert isinstance(loss, float) and math.isfinite(loss), f"train step returned {loss!r}, not a finite float"
        runs.append((loss, {k: v.detach().clone() for k, v in ctx.params.items()}))
    (loss_a, a), (loss_b, b) = runs
    assert any(not torch.equal(before[k], a[k]) for k in a), "one training step left every parameter unchanged"
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a), \
        "the training step is not deterministic under ctx.generator"


def check_strict_options(algo: Algorithm) -> None:
    """Unknown options are an error (:class:`bench.errors.OptionsError`)."""
    with pytest.raises(OptionsError):
        type(algo)(no_such_option_xyz=1)


ALGORITHM_CHECKS: list[Callable[[Algorithm], None]] = [
    check_metadata,
    check_init_deterministic,
    check_logits_shape,
    check_pure,
    check_vmap_matches_loop,
    check_input_gradients,
    check_meta_gradient_batched_equals_loop,
    check_query_independence,
    check_training_params_cover_init,
    check_train_step,
    check_strict_options,
]
"""Every algorithm contract check, in the order they are best read in."""
