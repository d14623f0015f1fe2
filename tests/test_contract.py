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


def test_fomaml_meta_gradient_is_the_query_gradient_at_the_adapted_weights():
    # First-order MAML's meta-gradient is grad_phi L_query(phi) at phi = theta - lr * grad L_support(theta).
    import torch
    import torch.nn.functional as F

    from bench.nn import conv4
    from bench.testing import SPEC, init_params, random_episodes

    fomaml = REGISTRY.create("algorithm", "fomaml")
    params = init_params(fomaml, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    fomaml.loss(p, ep, n_way=SPEC.n_way).backward()
    g_support = torch.func.grad(lambda q: F.cross_entropy(fomaml._logits(q, ep.x_support), ep.y_support))(params)
    phi = {k: v - fomaml.options.inner_lr * g_support[k] for k, v in params.items()}

    def query_loss(q):  # queries normalised with the adapted network's support statistics, as in adapt
        return F.cross_entropy(fomaml.predict(q, {"params": q, "stats": conv4(q, ep.x_support)[1]}, ep.x_query),
                               ep.y_query)

    expected = torch.func.grad(query_loss)(phi)
    for k in params:
        torch.testing.assert_close(p[k].grad, expected[k], rtol=1e-9, atol=1e-12)
