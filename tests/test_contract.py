"""Every registered algorithm, first-party or not, passes the contract checks."""

from __future__ import annotations

import pytest

from bench.plugins import get_registry
from bench.testing import ALGORITHM_CHECKS

REGISTRY = get_registry()
ALGORITHMS = REGISTRY.ids("algorithm")


def test_first_party_algorithms_are_registered():
    assert {"protonet", "matchingnet", "relationnet", "maml", "fomaml", "anil", "metasgd", "reptile",
            "finetune", "finetune-cosine"} <= set(ALGORITHMS)


@pytest.mark.parametrize("check", ALGORITHM_CHECKS, ids=lambda c: c.__name__.removeprefix("check_"))
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_contract(algorithm, check):
    check(REGISTRY.create("algorithm", algorithm))


WITH_BN_OPTION = [a for a in ALGORITHMS if "bn" in REGISTRY.get("algorithm", a).Options.model_fields]


@pytest.mark.parametrize("algorithm", WITH_BN_OPTION)
def test_transductive_mode_is_declared_and_detected(algorithm):
    # bn='batch' normalises queries together: the algorithm must say so, and the
    # independence check must catch it if it did not.
    import torch

    from bench.testing import SPEC, init_params, random_episodes

    algo = REGISTRY.create("algorithm", algorithm, {"bn": "batch"})
    assert algo.transductive
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    batch = algo.predict(params, state, ep.x_query)
    alone = algo.predict(params, state, ep.x_query[:1])
    assert not torch.allclose(alone[0], batch[0])


def test_fomaml_differs_from_maml_only_in_training():
    import torch

    from bench.testing import SPEC, init_params, random_episodes

    maml, fomaml = REGISTRY.create("algorithm", "maml"), REGISTRY.create("algorithm", "fomaml")
    params = init_params(maml, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    # Evaluation: identical inner loops.
    a = maml.predict(params, maml.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    b = fomaml.predict(params, fomaml.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    torch.testing.assert_close(a, b)
    # Training: different meta-gradients (first order drops the Hessian term).
    grads = []
    for algo in (maml, fomaml):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        algo.loss(p, ep, n_way=SPEC.n_way).backward()
        grads.append(p["backbone.conv0.weight"].grad)
    assert not torch.allclose(grads[0], grads[1])
