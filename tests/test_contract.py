"""Every registered algorithm, attack and shift, first-party or not, passes its kind's
contract checks; known-bad learners, attacks and shifts fail them with clear messages."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

from bench.components import Algorithm, Attack, Episode, EpisodeSpec, Params, Shift
from bench.nn import Conv4Options, SupportStatsBN, class_means, conv4, init_conv4, sq_euclidean
from bench.plugins import get_registry
from bench.testing import (
    ALGORITHM_CHECKS, ATTACK_CHECKS, GRADIENT_SPEC, SHIFT_CHECKS, ContractError, VariantCheck, algorithm_contract_tests,
    check_input_gradients, check_query_independence,
)
from bench.testing._common import check_id

REGISTRY = get_registry()
ALGORITHMS = REGISTRY.ids("algorithm")
ATTACKS = REGISTRY.ids("attack")
SHIFTS = REGISTRY.ids("shift")


def test_first_party_algorithms_are_registered():
    assert {"protonet", "matchingnet", "relationnet", "maml", "fomaml", "anil", "metasgd", "reptile",
            "finetune", "finetune-cosine"} <= set(ALGORITHMS)


@pytest.mark.parametrize("check", ALGORITHM_CHECKS, ids=check_id)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_contract(algorithm, check):
    check(REGISTRY.create("algorithm", algorithm))


@pytest.mark.parametrize("check", ATTACK_CHECKS, ids=check_id)
@pytest.mark.parametrize("attack", ATTACKS)
def test_attack_contract(attack, check):
    # Default options: what a user runs (the checks attack a tiny linear learner, so even
    # AutoAttack's official budgets take about a second).
    check(REGISTRY.create("attack", attack))


@pytest.mark.parametrize("check", SHIFT_CHECKS, ids=check_id)
@pytest.mark.parametrize("shift", SHIFTS)
def test_shift_contract(shift, check):
    check(REGISTRY.create("shift", shift))


def test_first_party_attacks_and_shifts_are_registered():
    assert {"fgsm", "pgd-linf", "pgd-l2", "cw-l2", "apgd-ce", "square", "autoattack"} <= set(ATTACKS)
    assert {"gaussian-noise", "rotation", "label-noise", "class-imbalance"} <= set(SHIFTS)


WITH_BN_OPTION = [a for a in ALGORITHMS if "bn" in REGISTRY.get("algorithm", a).Options.model_fields]


@pytest.mark.parametrize("algorithm", WITH_BN_OPTION)
def test_transductive_mode_is_declared_and_detected(algorithm):
    # bn='batch' normalises queries together: the algorithm must say so, and the
    # independence check shows that the declaration is true (a query's logits change with
    # the other queries; predicting one query alone is not defined for every transductive
    # method, e.g. LaplacianShot's k-nearest-neighbour graph over the queries).
    algo = REGISTRY.create("algorithm", algorithm, {"bn": "batch"})
    assert algo.transductive
    check_query_independence(algo)


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


# --- known-bad learners: each fails the shipped checks with one clear message ------------


class SmallProto(SupportStatsBN, Algorithm):
    """ProtoNet on a narrow conv4 (8 channels): what the known-bad learners below break."""

    id = "test-small-proto"

    class Options(Conv4Options):
        hidden: int = 8

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        return init_conv4(generator, in_channels=spec.image_shape[0], hidden=self.options.hidden)

    def embed_support(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def adapt(self, params: Params, x_support, y_support, *, n_way: int, train: bool = False) -> Any:
        z, stats = conv4(params, self.embed_support(x_support))
        return {"centroids": class_means(self.centroid_input(z), y_support, n_way), "stats": stats}

    def centroid_input(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def predict(self, params: Params, state: Any, x_query) -> torch.Tensor:
        z, _ = conv4(params, x_query, self.query_stats(state["stats"]))
        return -sq_euclidean(z, state["centroids"])


class DetachedSupport(SmallProto):
    """Cuts the support embeddings off the graph; the BatchNorm statistics of the support,
    which normalise the queries, still leak a tiny gradient to x_support."""

    id = "test-detached-support"

    def centroid_input(self, z):
        return z.detach()


class ScaledSupportGradient(SmallProto):
    """The identity on the support images forward, their gradient scaled by 1e-3 backward."""

    id = "test-scaled-support-gradient"

    def embed_support(self, x):
        return x.detach() + 1e-3 * (x - x.detach())


class DetachedQuery(SmallProto):
    id = "test-detached-query"

    def predict(self, params, state, x_query):
        return super().predict(params, state, x_query.detach())


class TransposedLogits(SmallProto):
    """Returns logits [n_way, n_query_total], a common slip."""

    id = "test-transposed-logits"

    def predict(self, params, state, x_query):
        return super().predict(params, state, x_query).T


class SecretlyTransductive(SmallProto):
    """Normalises queries with their own batch statistics whatever ``bn`` says, but declares
    itself transductive only for bn='batch'."""

    id = "test-secretly-transductive"

    def query_stats(self, support_stats):
        return None


def failures(algo: Algorithm) -> dict[str, BaseException]:
    """Every shipped check run on ``algo``: the failures by check name."""
    out = {}
    for check in ALGORITHM_CHECKS:
        try:
            check(algo)
        except Exception as exc:
            out[check.__name__] = exc
    return out


def test_the_small_learner_the_bad_ones_derive_from_passes_every_check():
    assert failures(SmallProto()) == {}


@pytest.mark.parametrize("cls", [DetachedSupport, ScaledSupportGradient], ids=lambda c: c.id)
def test_a_cut_or_rescaled_support_gradient_fails_only_the_gradient_check(cls):
    found = failures(cls())
    assert set(found) == {"check_input_gradients"}, found
    message = str(found["check_input_gradients"])
    assert isinstance(found["check_input_gradients"], ContractError)
    assert "x_support (through adapt)" in message and "does not match finite differences" in message
    assert "(autograd) vs" in message and "(finite differences)" in message
    if cls is ScaledSupportGradient:
        assert "autograd is 0.001x the true size" in message


def test_the_detached_support_still_leaks_a_gradient_the_old_check_accepted():
    # The old check only asked for a non-zero gradient; BatchNorm statistics provide one.
    algo = DetachedSupport()
    from bench.testing import init_params, random_episodes

    params = init_params(algo, spec=GRADIENT_SPEC, dtype=torch.float64)
    ep = random_episodes(spec=GRADIENT_SPEC, n_episodes=1, dtype=torch.float64)[0]
    xs = ep.x_support.clone().requires_grad_(True)
    logits = algo.predict(params, algo.adapt(params, xs, ep.y_support, n_way=3), ep.x_query)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, ep.y_query), (xs,))
    assert g.abs().sum() > 0


def test_a_cut_query_gradient_is_named():
    with pytest.raises(ContractError, match=r"no gradient of the query loss reaches x_query \(through predict\)"):
        check_input_gradients(DetachedQuery())


def test_a_wrong_logits_shape_gives_one_message_about_the_shape():
    found = failures(TransposedLogits())
    assert "check_logits_shape" in found and len(found) >= 5, found
    messages = {str(exc) for exc in found.values()}
    assert len(messages) == 1, messages  # one message, whichever check ran into it
    (message,) = messages
    assert all(isinstance(exc, ContractError) for exc in found.values()), {k: type(v) for k, v in found.items()}
    assert "predict returned logits of shape [3, 6]" in message and "[n_query_total, n_way] = [6, 3]" in message
    assert "transductive" not in message


def test_a_transductive_variant_listed_first_does_not_hide_the_default_one():
    # As a plugin's test would write it: the bn='batch' variant first, then the default.
    check = VariantCheck(check_query_independence, Algorithm)
    check(SecretlyTransductive(bn="batch"))  # declared transductive: nothing to check, and no skip
    with pytest.raises(ContractError, match="test-secretly-transductive: query 0's logits differ"):
        check(SecretlyTransductive())
    with pytest.raises(ContractError, match=r"failed for 1 of 2 variants:\n- test-secretly-transductive: "):
        check(SecretlyTransductive(bn="batch"), SecretlyTransductive())


class FalselyTransductive(SmallProto):
    """Declares itself transductive although every query is predicted on its own."""

    id = "test-falsely-transductive"
    transductive = True


def test_a_false_transductive_declaration_fails_the_independence_check():
    # Transductive entries are ranked separately: the declaration must be true.
    assert failures(FalselyTransductive()).keys() == {"check_query_independence"}
    with pytest.raises(ContractError, match="declares transductive = True, but no query's logits change"):
        check_query_independence(FalselyTransductive())


class DataDependentShapes(SmallProto):
    """Class means through ``torch.nonzero`` (a data-dependent shape): not ``vmap``-safe."""

    id = "test-data-dependent-shapes"

    def centroid_input(self, z):
        return z

    def adapt(self, params, x_support, y_support, *, n_way, train=False):
        z, stats = conv4(params, x_support)
        means = torch.stack([z[torch.nonzero(y_support == c)[:, 0]].mean(0) for c in range(n_way)])
        return {"centroids": means, "stats": stats}


class DeclaredDataDependentShapes(DataDependentShapes):
    id = "test-declared-data-dependent-shapes"
    vmap_unsafe = "class means through torch.nonzero (a data-dependent shape)"


def test_an_algorithm_that_is_not_vmap_safe_must_say_so_and_is_then_looped():
    assert failures(DataDependentShapes()).keys() == {"check_vmap_matches_loop", "check_meta_gradient_batched_equals_loop"}
    # Declared: the harness's batched plans (evaluation, training, attacks) loop over its episodes.
    assert failures(DeclaredDataDependentShapes()) == {}
    from bench.execution import Execution, for_algorithm

    assert for_algorithm(Execution("vmap", chunk=4), DeclaredDataDependentShapes()) == Execution("loop", chunk=4)
    assert for_algorithm(Execution("vmap"), SmallProto()).strategy == "vmap"


def test_a_blank_vmap_reason_fails_the_metadata_check():
    class Blank(DeclaredDataDependentShapes):
        vmap_unsafe = " "

    assert failures(Blank()).keys() == {"check_metadata"}


test_helper_checks_every_variant = algorithm_contract_tests(SmallProto, SmallProto(bn="batch"))


# --- known-bad attacks and shifts ---------------------------------------------------------


class LeavesTheBall(Attack):
    id = "test-leaves-the-ball"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        x = (episodes.x_query - 2 * eps).clamp(0, 1)
        return Episode(episodes.x_support, episodes.y_support, x, episodes.y_query)


class MutatesItsInput(Attack):
    """Steps like FGSM, but in place on the episode it gets."""

    id = "test-mutates-its-input"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        xq = episodes.x_query.requires_grad_(True)
        logits = victim.logits(episodes.x_support, episodes.y_support, xq)
        (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits.flatten(0, 1), episodes.y_query.flatten()),
                                   (xq,))
        xq.requires_grad_(False)
        episodes.x_query.add_(eps * g.sign()).clamp_(0, 1)
        return Episode(*(t.clone() for t in episodes.tensors()))


class GlobalRandomStart(Attack):
    """A random start drawn from torch's global RNG instead of the generator."""

    id = "test-global-random-start"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        x = (episodes.x_query + eps * (2 * torch.rand(episodes.x_query.shape) - 1)).clamp(0, 1)
        return Episode(episodes.x_support, episodes.y_support, x, episodes.y_query)


class DescendsTheLoss(Attack):
    """FGSM with the sign the wrong way round: it makes the learner more confident."""

    id = "test-descends-the-loss"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        from bench.testing import reference_fgsm

        up = reference_fgsm(victim, episodes, eps, self.norm, target)
        x = (2 * episodes.x_query - up.x_query).clamp(0, 1)
        return Episode(episodes.x_support, episodes.y_support, x, episodes.y_query)


class TouchesTheSupport(Attack):
    """Declares only the query target, but moves the support too."""

    id = "test-touches-the-support"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        return Episode((episodes.x_support + eps).clamp(0, 1), episodes.y_support,
                       (episodes.x_query + eps).clamp(0, 1), episodes.y_query)


def attack_failures(attack: Attack) -> dict[str, str]:
    out = {}
    for check in ATTACK_CHECKS:
        try:
            check(attack)
        except ContractError as exc:
            out[check_id(check)] = str(exc)
    return out


@pytest.mark.parametrize(("attack", "check", "message"), [
    (LeavesTheBall(), "stays_in_its_ball",
     r"Attack 'test-leaves-the-ball' \(linf, eps=16/255, target=query\) left the linf ball in x_query: largest "
     r"perturbation 0.12549 > eps 0.0627451"),
    (MutatesItsInput(), "does_not_mutate_its_input",
     r"Attack 'test-mutates-its-input' \(target=query\) mutated its input episode \(x_query\); return new tensors"),
    (GlobalRandomStart(), "deterministic", r"Attack 'test-global-random-start' \(target=query\) drew from torch's global RNG"),
    (DescendsTheLoss(), "at_least_as_strong_as_fgsm",
     r"Attack 'test-descends-the-loss' \(target=query, linf eps 0.06275\) is weaker than one FGSM step on a linear "
     r"learner: accuracy 1.000 under it vs 0.000 under FGSM"),
    (TouchesTheSupport(), "honours_its_targets",
     r"Attack 'test-touches-the-support' \(target=query\) changed x_support, which target 'query' does not cover"),
], ids=lambda v: v.id if isinstance(v, Attack) else None)
def test_a_broken_attack_fails_the_shipped_checks_with_a_clear_message(attack, check, message):
    import re

    found = attack_failures(attack)
    assert check in found, found
    assert re.search(message, found[check]), found[check]


class UnseededNoise(Shift):
    """Gaussian noise from torch's global RNG: not reproducible from the generator."""

    id = "test-unseeded-noise"

    def apply(self, episode, severity, generator):
        x = (episode.x_query + 0.05 * severity * torch.randn(episode.x_query.shape)).clamp(0, 1)
        return Episode(episode.x_support, episode.y_support, x, episode.y_query)


class NumpyNoise(Shift):
    """Noise from numpy's global RNG, which the generator does not control either."""

    id = "test-numpy-noise"

    def apply(self, episode, severity, generator):
        import numpy as np

        noise = torch.from_numpy(np.random.standard_normal(tuple(episode.x_query.shape))).to(episode.x_query.dtype)
        return Episode(episode.x_support, episode.y_support, (episode.x_query + 0.1 * noise).clamp(0, 1),
                       episode.y_query)


class ReseededNoise(Shift):
    """Ignores its generator: reseeds the global RNG, so every call draws the same noise."""

    id = "test-reseeded-noise"

    def apply(self, episode, severity, generator):
        torch.manual_seed(0)
        return UnseededNoise.apply(self, episode, severity, generator)


class InPlaceBrightness(Shift):
    id = "test-in-place-brightness"
    severities = (1, 2)

    def apply(self, episode, severity, generator):
        episode.x_query.add_(0.1 * severity).clamp_(0, 1)
        return Episode(*(t.clone() for t in episode.tensors()))


class Overexposed(Shift):
    id = "test-overexposed"

    def apply(self, episode, severity, generator):
        return Episode(episode.x_support, episode.y_support, episode.x_query * (1 + 0.5 * severity), episode.y_query)


@pytest.mark.parametrize(("shift", "check", "message"), [
    (UnseededNoise(), "deterministic", r"Shift 'test-unseeded-noise' \(severity 1\) drew from torch's global RNG"),
    (NumpyNoise(), "deterministic",
     r"Shift 'test-numpy-noise' \(severity 1\) is not deterministic under its generator: two calls with the same "
     r"seed gave different x_query"),
    (ReseededNoise(), "deterministic", r"Shift 'test-reseeded-noise' \(severity 1\) drew from torch's global RNG "
                                       r"\(or reseeded it\)"),
    (InPlaceBrightness(), "does_not_mutate_its_input",
     r"Shift 'test-in-place-brightness' \(severity 1\) mutated its input episode \(x_query\)"),
    (Overexposed(), "every_severity_keeps_shapes_dtypes_and_range",
     r"Shift 'test-overexposed' \(severity 1, torch.float32\) left \[0, 1\] in x_query"),
], ids=lambda v: v.id if isinstance(v, Shift) else None)
def test_a_broken_shift_fails_the_shipped_checks_with_a_clear_message(shift, check, message):
    import re

    found = {}
    for c in SHIFT_CHECKS:
        try:
            c(shift)
        except ContractError as exc:
            found[check_id(c)] = str(exc)
    assert check in found, found
    assert re.search(message, found[check]), found[check]


def test_the_checks_leave_the_global_rngs_as_they_were():
    import random

    import numpy as np

    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    for check in SHIFT_CHECKS:
        with pytest.raises(ContractError) if check_id(check) == "deterministic" else contextlib.nullcontext():
            check(ReseededNoise())
    assert torch.equal(states[0], torch.get_rng_state())
    assert (states[1] == np.random.get_state()[1]).all() and states[2] == random.getstate()
