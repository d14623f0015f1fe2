"""Contract checks every algorithm plugin must pass, shipped to plugin authors.

This module is also a pytest plugin (the ``pytest11`` entry point ``mrbench``), so
with mrbench installed every pytest run has the ``mrbench_check`` fixture, one test
per contract check::

    def test_contract(mrbench_check):
        mrbench_check(MyAlgorithm())

or, without the fixture, one line that makes the parametrized test::

    from bench.testing import algorithm_contract_tests

    test_contract = algorithm_contract_tests(MyAlgorithm, MyAlgorithm(fast=True))

or by hand::

    from bench.testing import ALGORITHM_CHECKS

    @pytest.mark.parametrize("check", ALGORITHM_CHECKS, ids=lambda c: c.__name__)
    def test_contract(check):
        check(MyAlgorithm())

mrbench's own test suite runs them over every registered algorithm. Importing this
module has no side effects (it loads no plugins and builds no registry).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import pytest
import torch
import torch.nn.functional as F

from bench.components import Algorithm, Episode, EpisodeSpec, ImageSplit
from bench.errors import OptionsError
from bench.execution import Execution, meta_loss_backward

if TYPE_CHECKING:
    from bench.training import TrainContext

SPEC = EpisodeSpec(n_way=3, k_shot=2, n_query=2)


def random_episodes(spec: EpisodeSpec = SPEC, n_episodes: int = 3, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> Episode:
    """Episodes of random images ``[E, ...]`` with class-major labels."""
    g = torch.Generator().manual_seed(seed)
    C, H, W = spec.image_shape
    labels = torch.arange(spec.n_way)
    return Episode(
        torch.rand(n_episodes, spec.n_support, C, H, W, generator=g, dtype=dtype),
        labels.repeat_interleave(spec.k_shot).expand(n_episodes, -1).contiguous(),
        torch.rand(n_episodes, spec.n_query_total, C, H, W, generator=g, dtype=dtype),
        labels.repeat_interleave(spec.n_query).expand(n_episodes, -1).contiguous(),
    )


def init_params(algo: Algorithm, spec: EpisodeSpec = SPEC, dtype: torch.dtype = torch.float32, seed: int = 0):
    return {k: v.to(dtype) for k, v in algo.init(spec, torch.Generator().manual_seed(seed)).items()}


def _logits(algo: Algorithm, params, ep: Episode, n_way: int) -> torch.Tensor:
    return algo.predict(params, algo.adapt(params, ep.x_support, ep.y_support, n_way=n_way), ep.x_query)


def check_init_deterministic(algo: Algorithm) -> None:
    """``init`` depends only on its generator."""
    a, b = init_params(algo, seed=3), init_params(algo, seed=3)
    assert a.keys() == b.keys() and a, "init must return a non-empty dict of tensors"
    for k in a:
        assert torch.equal(a[k], b[k]), f"init is not deterministic under its generator ({k})"


def check_logits_shape(algo: Algorithm) -> None:
    ep = random_episodes()[0]
    out = _logits(algo, init_params(algo), ep, SPEC.n_way)
    assert out.shape == (SPEC.n_query_total, SPEC.n_way), f"predict must return [n_query_total, n_way], got {tuple(out.shape)}"
    assert torch.isfinite(out).all()


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
    """``torch.func.vmap`` over episodes gives the per-episode loop's logits."""
    params = init_params(algo, dtype=torch.float64)
    eps = random_episodes(dtype=torch.float64)
    loop = torch.stack([_logits(algo, params, eps[e], SPEC.n_way) for e in range(eps.x_support.shape[0])])
    batched = torch.func.vmap(lambda xs, ys, xq: algo.predict(params, algo.adapt(params, xs, ys, n_way=SPEC.n_way), xq))(
        eps.x_support, eps.y_support, eps.x_query)
    torch.testing.assert_close(batched, loop, rtol=1e-9, atol=1e-10)


def check_input_gradients(algo: Algorithm) -> None:
    """Gradients reach both the query and the support set through adaptation (attacks need both)."""
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    xs = ep.x_support.clone().requires_grad_(True)
    xq = ep.x_query.clone().requires_grad_(True)
    logits = algo.predict(params, algo.adapt(params, xs, ep.y_support, n_way=SPEC.n_way), xq)
    gs, gq = torch.autograd.grad(F.cross_entropy(logits, ep.y_query), (xs, xq), allow_unused=True)
    assert gq is not None and gq.abs().sum() > 0, "no gradient w.r.t. x_query"
    assert gs is not None and gs.abs().sum() > 0, "no gradient w.r.t. x_support through adapt"


def check_meta_gradient_batched_equals_loop(algo: Algorithm) -> None:
    """The harness's batched (vmap) training path and its channels-last loop give the
    per-episode loop's meta-gradient (second order included), in float64. Guards e.g.
    native BatchNorm under vmap (the loop runs native batch-norm kernels, vmap the
    hand-written form; see :func:`bench.nn.conv_blocks`)."""
    eps = random_episodes(dtype=torch.float64)
    grads = []
    for ex in (Execution("loop"), Execution("vmap", chunk=2), Execution("loop", channels_last=True)):
        params = {k: v.requires_grad_(True) for k, v in init_params(algo, dtype=torch.float64).items()}
        meta_loss_backward(algo, params, eps, SPEC.n_way, ex)
        grads.append({k: (torch.zeros_like(v) if v.grad is None else v.grad) for k, v in params.items()})
    assert any(g.abs().sum() > 0 for g in grads[0].values()), "the training loss has no gradient"
    names = ("vmap", "loop+channels_last")
    for name, other in zip(names, grads[1:]):
        for k in grads[0]:
            # Tolerance relative to the tensor's largest entry: float64 reduction order differs
            # between CPUs (measured ~2e-9 of the largest entry for Reptile's many inner steps on
            # an AMD EPYC), while the BatchNorm-under-vmap bug this guards against is a ~2% error.
            scale = float(grads[0][k].abs().max())
            torch.testing.assert_close(other[k], grads[0][k], rtol=1e-7, atol=1e-10 + 1e-7 * scale,
                                       msg=f"{name}: meta-gradient differs from the loop's for {k}")


def check_query_independence(algo: Algorithm) -> None:
    """A non-transductive algorithm gives each query the same logits alone and in a batch."""
    if algo.transductive:
        pytest.skip(f"{algo.id} declares itself transductive")
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    batch = algo.predict(params, state, ep.x_query)
    for i in range(ep.x_query.shape[0]):
        alone = algo.predict(params, state, ep.x_query[i : i + 1])
        torch.testing.assert_close(alone[0], batch[i], rtol=1e-9, atol=1e-10,
                                   msg=f"query {i} depends on the other queries; declare transductive = True")


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
        loss = run_train_step(ctx)
        assert isinstance(loss, float) and math.isfinite(loss), f"train step returned {loss!r}, not a finite float"
        runs.append((loss, {k: v.detach().clone() for k, v in ctx.params.items()}))
    (loss_a, a), (loss_b, b) = runs
    assert any(not torch.equal(before[k], a[k]) for k in a), "one training step left every parameter unchanged"
    assert loss_a == loss_b and all(torch.equal(a[k], b[k]) for k in a), \
        "the training step is not deterministic under ctx.generator"


def check_strict_options(algo: Algorithm) -> None:
    with pytest.raises(OptionsError):
        type(algo)(no_such_option_xyz=1)


def check_metadata(algo: Algorithm) -> None:
    import re

    assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", algo.id), "id must be kebab-case"
    assert isinstance(algo.transductive, bool)
    assert algo.bn_policy, "state the BatchNorm policy"
    algo.options.model_dump(mode="json")  # options must serialise into result entries


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


def _check_id(check: Callable[[Algorithm], None]) -> str:
    return check.__name__.removeprefix("check_")


def _make_algorithm(algorithm: "Algorithm | type[Algorithm] | Callable[[], Algorithm]") -> Algorithm:
    return algorithm if isinstance(algorithm, Algorithm) else algorithm()


def _algorithm_id(algorithm: object) -> str:
    if isinstance(algorithm, Algorithm):
        opts = algorithm.options.model_dump(mode="json", exclude_defaults=True)
        return algorithm.id + "".join(f",{k}={v}" for k, v in opts.items())
    return str(getattr(algorithm, "id", None) or getattr(algorithm, "__name__", "algorithm"))


def algorithm_contract_tests(*algorithms: "Algorithm | type[Algorithm] | Callable[[], Algorithm]"):
    """A pytest test function running every contract check on each algorithm.

    Assign it to a ``test_*`` name in a test module::

        test_contract = algorithm_contract_tests(MyAlgorithm, MyAlgorithm(bn="batch"))

    :param algorithms: algorithm classes (created with default options), instances,
        or zero-argument factories; a fresh instance is made per check when a class
        or factory is given.
    """
    if not algorithms:
        raise TypeError("algorithm_contract_tests needs at least one algorithm class, instance or factory")

    @pytest.mark.parametrize("check", ALGORITHM_CHECKS, ids=_check_id)
    @pytest.mark.parametrize("algorithm", algorithms, ids=[_algorithm_id(a) for a in algorithms])
    def test_contract(algorithm, check) -> None:
        check(_make_algorithm(algorithm))

    return test_contract


@pytest.fixture(params=ALGORITHM_CHECKS, ids=_check_id)
def mrbench_check(request: pytest.FixtureRequest) -> Callable[[Algorithm], None]:
    """One of :data:`ALGORITHM_CHECKS` (the test runs once per check): call it on
    your algorithm, ``mrbench_check(MyAlgorithm())``. Provided by mrbench's pytest
    plugin (this module, the ``pytest11`` entry point ``mrbench``)."""
    return request.param
