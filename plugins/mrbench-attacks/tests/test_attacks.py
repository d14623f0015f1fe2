"""Attack plugins under the harness's protocol: closed-form optima, balls, poisoning, sanity."""

from __future__ import annotations

import pytest
import torch

from bench.attacks import Victim, run_attack, sanity_checks
from bench.components import Algorithm, Attack, Episode, EpisodeSpec
from bench.errors import MrbenchError
from bench.execution import Execution
from bench.plugins import get_registry
from bench.protocol.scenarios import AttackCell, format_eps, parse_eps
from bench.testing import attack_contract_tests
from mrbench_attacks.attacks import ATTACKS, CWL2, FGSM, PGDL2, PGDLinf


class Centroid(Algorithm):
    """Nearest centroid on raw pixels: logits = -||x - c_k||^2. Attacks on it have closed forms."""

    id = "test-centroid"

    def init(self, spec, generator):
        return {"scale": torch.ones(())}

    def adapt(self, params, x_support, y_support, *, n_way, train=False):
        onehot = torch.nn.functional.one_hot(y_support, n_way).to(x_support.dtype)
        flat = x_support.flatten(1)
        return (onehot.T @ flat) / onehot.sum(0)[:, None]

    def predict(self, params, state, x_query):
        q = x_query.flatten(1)
        return -params["scale"] * ((q[:, None, :] - state[None]) ** 2).sum(-1)


class QuantizedCentroid(Centroid):
    """A gradient-masked learner: it thresholds its input, so every input gradient is 0."""

    id = "test-quantized-centroid"

    def adapt(self, params, x_support, y_support, *, n_way, train=False):
        return super().adapt(params, _binarize(x_support), y_support, n_way=n_way)

    def predict(self, params, state, x_query):
        return super().predict(params, state, _binarize(x_query))


def _binarize(x):
    # Straight 0/1 threshold, with a zero gradient everywhere (no straight-through).
    return (x > 0.5).to(x.dtype) + 0.0 * x


@pytest.fixture(scope="module")
def registry():
    return get_registry()


def two_way(n_episodes=3, n_query=1, seed=0, size=8):
    """2-way 1-shot episodes with images near 0.5 (so small balls never touch the box)."""
    g = torch.Generator().manual_seed(seed)
    xs = 0.5 + 0.2 * (torch.rand(n_episodes, 2, 1, size, size, generator=g) - 0.5)
    xq = xs.repeat_interleave(n_query, 1) + 0.02 * (torch.rand(n_episodes, 2 * n_query, 1, size, size, generator=g) - 0.5)
    ys = torch.arange(2).expand(n_episodes, 2).contiguous()
    yq = torch.arange(2).repeat_interleave(n_query).expand(n_episodes, -1).contiguous()
    return Episode(xs, ys, xq, yq)


def margin(x, c_true, c_other):
    """logit_true - logit_other of the centroid learner."""
    return (((x - c_other) ** 2).sum() - ((x - c_true) ** 2).sum()).item()


def test_eps_parsing_and_names():
    assert parse_eps("16/255") == pytest.approx(16 / 255)
    assert parse_eps("0.5") == 0.5 and parse_eps(0.25) == 0.25
    assert format_eps(16 / 255) == "16/255" and format_eps(0.5) == "0.5"
    assert AttackCell("pgd-linf", 16 / 255, "query").name == "pgd-linf@16/255:query"
    assert AttackCell("pgd-linf", 8 / 255, "support", (("steps", 40),)).name == "pgd-linf[steps=40]@8/255:support"
    with pytest.raises(MrbenchError, match="16/255"):
        parse_eps("sixteen")


@pytest.mark.parametrize("attack_id", ["pgd-linf", "fgsm"])
def test_linf_query_attack_reaches_the_analytic_worst_case(registry, attack_id):
    # For 2 classes the centroid learner's margin is linear in the query, so the worst
    # case in the Linf ball is the corner x - eps * sign(c_true - c_other); FGSM and PGD
    # (signed steps, no clamp active) must land exactly there.
    eps = 0.03
    ep = two_way()
    victim = Victim(Centroid(), {"scale": torch.ones(())}, 2)
    opts = {"steps": 10, "step_size": 0.25, "random_start": True} if attack_id == "pgd-linf" else {}
    adv = registry.create("attack", attack_id, opts).perturb(victim, ep, eps, "query", torch.Generator().manual_seed(0))
    for e in range(ep.x_query.shape[0]):
        for q in range(2):
            c_t, c_o = ep.x_support[e, q], ep.x_support[e, 1 - q]
            x = ep.x_query[e, q]
            best = x - eps * torch.sign(c_t - c_o)
            torch.testing.assert_close(adv.x_query[e, q], best, atol=1e-6, rtol=0)
            analytic = margin(x, c_t, c_o) - 2 * eps * (c_t - c_o).abs().sum().item()
            assert margin(adv.x_query[e, q], c_t, c_o) == pytest.approx(analytic, abs=1e-4)


def test_l2_query_attack_reaches_the_analytic_worst_case(registry):
    # In the L2 ball the worst case of a linear margin is x - eps * w / ||w||.
    eps = 0.1
    ep = two_way()
    victim = Victim(Centroid(), {"scale": torch.ones(())}, 2)
    atk = registry.create("attack", "pgd-l2", {"steps": 50, "step_size": 0.1, "random_start": False})
    adv = atk.perturb(victim, ep, eps, "query", torch.Generator().manual_seed(0))
    for e in range(ep.x_query.shape[0]):
        for q in range(2):
            c_t, c_o = ep.x_support[e, q], ep.x_support[e, 1 - q]
            w = c_t - c_o
            x = ep.x_query[e, q]
            analytic = margin(x, c_t, c_o) - 2 * eps * w.norm().item()
            assert margin(adv.x_query[e, q], c_t, c_o) == pytest.approx(analytic, abs=2e-3 * abs(analytic) + 1e-4)


def test_support_poisoning_reaches_the_analytic_worst_case(registry):
    # One query per class and 1 shot: moving the true class's support image c_t within
    # the Linf ball, the margin -||x - c_t||^2 + ||x - c_o||^2 is smallest at the corner
    # farthest from the query, c_t + eps * sign(c_t - x); the other support image moves
    # toward the query. PGD through adapt() must find both corners.
    eps = 0.03
    ep = two_way(n_query=1)
    victim = Victim(Centroid(), {"scale": torch.ones(())}, 2)
    atk = registry.create("attack", "pgd-linf", {"steps": 10, "step_size": 0.25, "random_start": False})
    adv = atk.perturb(victim, ep, eps, "support", torch.Generator().manual_seed(0))
    torch.testing.assert_close(adv.x_query, ep.x_query, atol=0, rtol=0)
    for e in range(ep.x_query.shape[0]):
        # Each support image is pushed away from its own query and toward the other class's.
        for k in range(2):
            x_own, x_other, c = ep.x_query[e, k], ep.x_query[e, 1 - k], ep.x_support[e, k]
            direction = torch.sign((c - x_own) - (c - x_other))  # gradient of the summed CE terms, up to scale
            expect = c + eps * direction
            agree = (adv.x_support[e, k] - expect).abs() < 1e-6
            assert agree.float().mean() > 0.99


def _easy_episodes(n_way=5, n_query=3, n_episodes=4, seed=0):
    """Distinct random patterns per class plus small noise: an untrained conv4 separates them."""
    g = torch.Generator().manual_seed(seed)
    pat = torch.rand(n_episodes, n_way, 1, 28, 28, generator=g)
    xq = (pat.repeat_interleave(n_query, 1) + 0.05 * torch.randn(n_episodes, n_way * n_query, 1, 28, 28, generator=g))
    labels = torch.arange(n_way)
    return Episode(pat.clone(), labels.expand(n_episodes, n_way).contiguous(), xq.clamp(0, 1),
                   labels.repeat_interleave(n_query).expand(n_episodes, -1).contiguous())


@pytest.mark.parametrize("algorithm_id,options", [("protonet", {}), ("maml", {"inner_steps_test": 5})])
def test_support_poisoning_lowers_accuracy_through_adaptation(registry, algorithm_id, options):
    algo = registry.create("algorithm", algorithm_id, options)
    ep = _easy_episodes(n_episodes=2)
    params = algo.init(EpisodeSpec(5, 1, 3), torch.Generator().manual_seed(0))
    victim = Victim(algo, params, 5)
    with torch.no_grad():
        clean = (victim.logits(ep.x_support, ep.y_support, ep.x_query).argmax(-1) == ep.y_query).float().mean()
    atk = registry.create("attack", "pgd-linf", {"steps": 5, "step_size": 0.4})
    poisoned = run_attack(atk, victim, ep, 0.25, "support", torch.Generator().manual_seed(0)).float().mean()
    assert clean >= 0.6, f"{algorithm_id} should separate the easy episodes before the attack ({clean:.2f})"
    assert poisoned <= clean - 0.3, f"poisoning the support set only moved accuracy {clean:.2f} -> {poisoned:.2f}"


def test_poison_fraction_changes_only_that_many_support_images(registry):
    algo = registry.create("algorithm", "protonet")
    ep = _easy_episodes(n_episodes=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 3), torch.Generator().manual_seed(0)), 5)
    atk = registry.create("attack", "pgd-linf", {"steps": 2, "poison_fraction": 0.2})
    adv = atk.perturb(victim, ep, 0.1, "support", torch.Generator().manual_seed(0))
    changed = (adv.x_support != ep.x_support).flatten(2).any(-1).sum(-1)
    assert changed.tolist() == [1, 1]


@pytest.mark.parametrize("target,restarts,fraction,norm", [("support", 1, 1.0, "linf"), ("both", 2, 1.0, "linf"),
                                                         ("support", 2, 0.5, "l2"), ("query", 1, 1.0, "linf")])
@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_own_pgd_does_not_depend_on_how_episodes_share_a_graph(registry, target, restarts, fraction, norm, strategy):
    # Random draws are made for the whole call, and episodes do not interact, so one graph
    # per episode (the CPU default), a few, or all of them give the same adversarial episodes.
    from bench.attacks import pgd

    algo = registry.create("algorithm", "protonet")
    ep = _easy_episodes(n_episodes=3, n_query=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 2), torch.Generator().manual_seed(0)), 5, Execution(strategy))
    eps = 16 / 255 if norm == "linf" else 1.0
    kw = dict(eps=eps, norm=norm, target=target, steps=3, step_size=eps / 4, random_start=True, restarts=restarts,
              poison_fraction=fraction)
    runs = [pgd(victim, ep, generator=torch.Generator().manual_seed(7), chunk=c, **kw) for c in (None, 1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0].tensors(), other.tensors()):
            torch.testing.assert_close(a, b, atol=1e-6 if strategy == "vmap" else 0, rtol=0)
    assert not torch.equal(runs[0].x_support if target != "query" else runs[0].x_query,
                           ep.x_support if target != "query" else ep.x_query)


@pytest.mark.parametrize("target,loss", [("support", "cw"), ("both", "targeted"), ("query", "ce")])
def test_apgd_does_not_depend_on_how_episodes_share_a_graph(registry, target, loss):
    from bench.attacks import apgd

    algo = registry.create("algorithm", "protonet")
    ep = _easy_episodes(n_episodes=3, n_query=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 2), torch.Generator().manual_seed(0)), 5)
    kw = dict(eps=16 / 255, target=target, steps=4, restarts=2, loss=loss, n_target_classes=2)
    runs = [apgd(victim, ep, generator=torch.Generator().manual_seed(7), chunk=c, **kw) for c in (1, 3)]
    for a, b in zip(runs[0].tensors(), runs[1].tensors()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


# The shipped contract checks (bench.testing.ATTACK_CHECKS: ball and [0, 1], no mutation,
# determinism under the generator, declared targets, strength against FGSM) run on every
# registered attack with its default options in mrbench's tests/test_contract.py. Here they
# run on the option sets that take other code paths.
test_contract = attack_contract_tests(
    PGDLinf(steps=2, restarts=2), PGDLinf(steps=2, poison_fraction=0.5), PGDL2(steps=2, restarts=2, poison_fraction=0.5),
    FGSM(poison_fraction=0.5), CWL2(steps=10),
)


def test_every_attack_of_this_distribution_is_registered(registry):
    # ...so tests/test_contract.py runs the contract checks on each of them.
    assert {cls.id for cls in ATTACKS} <= set(registry.ids("attack"))
    assert all(registry.get("attack", cls.id).provenance.distribution == "mrbench-attacks" for cls in ATTACKS)


LIBRARY_CASES = [("cw-l2", {"steps": 3}), ("apgd-ce", {"steps": 3}), ("apgd-dlr", {"steps": 3}),
                 ("apgd-t", {"steps": 3}), ("square", {"n_queries": 20}), ("square-l2", {"n_queries": 20}),
                 ("autoattack", {"apgd_steps": 2, "fab_steps": 2, "square_queries": 10})]


@pytest.mark.parametrize("attack_id,options", LIBRARY_CASES, ids=lambda v: str(v))
def test_library_attacks_run_on_a_conv4_learner(registry, attack_id, options):
    # The contract checks attack a pixel-space learner; the torchattacks wrappers must also
    # drive a BatchNorm conv4 learner through QueryModule (per-episode subsets included).
    algo = registry.create("algorithm", "protonet")
    ep = _easy_episodes(n_episodes=2, n_query=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 2), torch.Generator().manual_seed(0)), 5)
    atk = registry.create("attack", attack_id, options)
    correct = run_attack(atk, victim, ep, 16 / 255 if atk.norm == "linf" else 1.0, "query",
                         torch.Generator().manual_seed(3))  # the harness checks the result
    assert correct.shape == ep.y_query.shape


class Broken(Attack):
    id = "test-broken"
    norm = "linf"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        episodes.x_query.add_(0.0)  # harmless in-place op
        x = (episodes.x_query + 2 * eps).clamp(0, 1)
        return Episode(episodes.x_support, episodes.y_support, x, episodes.y_query)


class Mutating(Attack):
    id = "test-mutating"
    norm = "linf"
    targets = ("query",)

    def perturb(self, victim, episodes, eps, target, generator):
        episodes.x_query.mul_(0.99)
        return Episode(*(t.clone() for t in episodes.tensors()))


def test_harness_rejects_attacks_that_leave_the_ball_or_mutate():
    victim = Victim(Centroid(), {"scale": torch.ones(())}, 2)
    ep = two_way()
    with pytest.raises(MrbenchError, match="test-broken.*left the linf ball"):
        run_attack(Broken(), victim, ep, 0.01, "query", torch.Generator())
    with pytest.raises(MrbenchError, match="test-mutating.*mutated its input"):
        run_attack(Mutating(), victim, ep, 0.01, "query", torch.Generator())
    with pytest.raises(MrbenchError, match="cannot attack the support"):
        run_attack(Broken(), victim, ep, 0.01, "support", torch.Generator())


def test_torchattacks_mode_does_not_change_the_protocol(registry):
    # torchattacks calls model.eval()/train(); the wrapper is functional, so logits agree.
    algo = registry.create("algorithm", "maml")
    ep = _easy_episodes(n_episodes=2, n_query=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 2), torch.Generator().manual_seed(0)), 5)
    m = victim.query_module(ep.x_support, ep.y_support)
    m.n_queries = ep.x_query.shape[1]
    x = ep.x_query.flatten(0, 1)
    with torch.no_grad():
        a = m.train()(x)
        b = m.eval()(x)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(MrbenchError, match="subset"):
        m(x[:3])


def _sanity_episodes(n_episodes=4, n_query=5, size=8, seed=1):
    # 3-way episodes of low-contrast grey patterns around 0.5: thresholding them is a
    # lossy but usable view, and every pixel can be flipped inside a 0.25 ball.
    g = torch.Generator().manual_seed(seed)
    pat = 0.5 + 0.4 * (torch.rand(n_episodes, 3, 1, size, size, generator=g) - 0.5)
    xq = (pat.repeat_interleave(n_query, 1) + 0.03 * torch.randn(n_episodes, 3 * n_query, 1, size, size, generator=g))
    labels = torch.arange(3)
    return Episode(pat, labels.expand(n_episodes, 3).contiguous(), xq.clamp(0, 1),
                   labels.repeat_interleave(n_query).expand(n_episodes, -1).contiguous())


def test_sanity_checks_flag_a_gradient_masked_learner(registry):
    ep = _sanity_episodes()
    masked = Victim(QuantizedCentroid(), {"scale": torch.ones(())}, 3)
    res = sanity_checks(registry, masked, ep, eps=0.25, norm="linf", target="query", steps=8, generator_seed=0)
    assert not res.checks["gradient-free"]["passed"], res.checks
    assert any("gradient-free" in f for f in res.failures)


@pytest.mark.parametrize("scale, flagged", [(1e-3, True), (10.0, False), (100.0, True)])
def test_sanity_checks_flag_a_cross_entropy_on_the_wrong_logit_scale(registry, scale, flagged):
    # One nearest-centroid learner, its logits scaled. The margin loss steers PGD the same
    # at every scale (its sign gradient does not depend on it); the cross-entropy does
    # not: at 1e-3 the softmax is flat and raising every wrong class alike moves no query
    # to its nearest wrong class (as with cosine or sigmoid scores), at 100 it is one-hot
    # and its gradient vanishes. At 10 both find the same adversarial queries.
    ep = _sanity_episodes()
    victim = Victim(Centroid(), {"scale": torch.tensor(scale)}, 3)
    res = sanity_checks(registry, victim, ep, eps=0.1, norm="linf", target="query", steps=8, generator_seed=0)
    check = res.checks["margin-loss"]
    assert check["passed"] is not flagged, res.checks
    assert check["margin"] < 0.3, check  # the margin breaks ~3 in 4 queries at every scale
    if flagged:
        assert check["pgd"] > check["margin"] + 0.5, check
        assert any(f.startswith("margin-loss: pgd-margin") for f in res.failures), res.failures
    if scale < 1:  # the flat softmax: only this check sees it, Square is weaker than PGD there
        assert res.checks["gradient-free"]["passed"], res.checks


def test_sanity_checks_pass_on_an_honest_learner(registry):
    ep = _sanity_episodes()
    honest = Victim(Centroid(), {"scale": torch.ones(())}, 3)
    res = sanity_checks(registry, honest, ep, eps=0.25, norm="linf", target="query", steps=8, generator_seed=0)
    assert res.failures == [], res.checks


class FixedFeatureCentroid(Centroid):
    """Nearest centroid on fixed linear features ``f(x) = w * x`` (a diagonal map; no
    meta-parameters are trained): ``logits = -||w * (x - c_k)||^2``. In 1-shot the
    centroids are the support embeddings, so the worst support perturbation is separable
    per pixel (see the test below)."""

    id = "test-fixed-feature-centroid"

    def init(self, spec, generator):
        return {"scale": torch.ones(()), "w": 0.5 + torch.rand(1, 8, 8, generator=torch.Generator().manual_seed(5))}

    def adapt(self, params, x_support, y_support, *, n_way, train=False):
        return super().adapt(params, params["w"] * x_support, y_support, n_way=n_way)

    def predict(self, params, state, x_query):
        return super().predict(params, state, params["w"] * x_query)


def _optimal_poisoned_margin(w, x, s_true, s_other, eps):
    """min over ||d_t||, ||d_o||_inf <= eps of ||w(x - s_o - d_o)||^2 - ||w(x - s_t - d_t)||^2:
    per pixel, the other class's support moves toward the query (as far as eps allows) and
    the true class's support moves away from it by eps."""
    w2 = w.square()
    near = ((x - s_other).abs() - eps).clamp_min(0).square()
    far = ((x - s_true).abs() + eps).square()
    return float((w2 * (near - far)).sum())


def test_poisoning_ensemble_reaches_the_closed_form_optimum(registry):
    # 2-way 1-shot, one query per episode (class 0), fixed linear features: the logit
    # margin of the query is separable per pixel in the two support perturbations, so its
    # minimum over the Linf ball has a closed form (_optimal_poisoned_margin). Every pixel
    # of the true class's support lies more than eps from the query, so the way to move it
    # (away from the query) is the same from every point of the ball and the maximum is
    # unique; some pixels of the other class's support lie within eps of the query, so its
    # optimum is inside the ball there (it lands on the query), which signed steps reach
    # only by halving their size. Episodes 0-1: the query cannot be flipped and the
    # ensemble must reach the optimal margin; episodes 2-3: the optimum flips the query
    # and the ensemble must flip it.
    eps = 0.03
    g = torch.Generator().manual_seed(0)
    shape = (4, 1, 8, 8)

    def sign():
        return torch.randint(0, 2, shape, generator=g) * 2.0 - 1

    x = 0.45 + 0.1 * torch.rand(shape, generator=g)
    s0 = x + sign() * (eps + 0.01 + 0.02 * torch.rand(shape, generator=g))
    far = 0.12 + 0.05 * torch.rand(shape, generator=g)
    far.view(4, -1)[:, :16] = 0.5 * eps  # within eps of the query: an interior optimum
    near = eps + 0.005 + 0.01 * torch.rand(shape, generator=g)
    d1 = torch.where(torch.arange(4).view(4, 1, 1, 1) < 2, far, near)
    s1 = x + sign() * d1
    ep = Episode(torch.stack([s0, s1], 1), torch.tensor([[0, 1]] * 4), x.unsqueeze(1), torch.zeros(4, 1, dtype=torch.long))
    algo = FixedFeatureCentroid()
    params = algo.init(EpisodeSpec(2, 1, 1), torch.Generator())
    victim = Victim(algo, params, 2)
    w = params["w"]
    atk = registry.create("attack", "apgd-ensemble", {"steps": 100})
    adv = run_attack_episode(atk, victim, ep, eps)
    for e in range(4):
        optimum = _optimal_poisoned_margin(w, x[e], s0[e], s1[e], eps)
        got = _optimal_poisoned_margin(w, x[e], adv.x_support[e, 0], adv.x_support[e, 1], 0.0)
        if e < 2:
            assert optimum > 0, "the setting must leave the query unflippable"
            assert got == pytest.approx(optimum, rel=1e-4), f"episode {e}: margin {got} vs optimum {optimum}"
        else:
            assert optimum < 0 and got < 0, f"episode {e}: the optimum flips the query (margin {optimum}), got {got}"
        assert got >= optimum - 1e-5 * abs(optimum) - 1e-7  # nothing beats the optimum (the ball is respected)


def run_attack_episode(atk, victim, ep, eps):
    from bench.attacks import check_perturbation, snapshot

    before = snapshot(ep)
    adv = atk.perturb(victim, ep, eps, "support", torch.Generator().manual_seed(1))
    check_perturbation(atk.id, atk.norm, eps, "support", ep, before, adv)
    return adv


@pytest.mark.parametrize("loss", ["ce", "margin", "cw", "targeted"])
def test_apgd_support_poisoning_reaches_the_analytic_corners(loss):
    # As test_support_poisoning_reaches_the_analytic_worst_case for PGD: on the 2-way pixel
    # centroid with one query per class, every loss ascends the same margin, whose
    # maximiser in the Linf ball is a corner; APGD's best point must reach it.
    from bench.attacks import apgd

    eps = 0.03
    ep = two_way(n_query=1)
    victim = Victim(Centroid(), {"scale": torch.ones(())}, 2)
    adv = apgd(victim, ep, eps=eps, target="support", steps=30, restarts=1, loss=loss,
               generator=torch.Generator().manual_seed(0))
    for e in range(ep.x_query.shape[0]):
        for k in range(2):
            x_own, x_other, c = ep.x_query[e, k], ep.x_query[e, 1 - k], ep.x_support[e, k]
            expect = c + eps * torch.sign((c - x_own) - (c - x_other))
            assert ((adv.x_support[e, k] - expect).abs() < 1e-6).float().mean() > 0.95


def test_apgd_step_size_checkpoints_follow_croce_and_hein():
    from bench.attacks import apgd_checkpoints

    # p = 0, 0.22, 0.41, 0.57, 0.70, 0.80, 0.87, 0.93, 0.99, 1.05 -> iterations of 100 steps
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99, 100]


def test_margin_loss_is_per_query_and_bounded_for_misclassified_queries():
    from bench.attacks import query_loss

    # One query far on the wrong side, one still right: CE gives the wrong one almost all
    # of the gradient of the sum; the CW margin gives both the same weight in logit space.
    logits = torch.tensor([[[-30.0, 0.0, -1.0, -2.0, -3.0], [0.0, -3.0, -5.0, -6.0, -7.0]]], requires_grad=True)
    y = torch.tensor([[0, 0]])
    per_query = {}
    for loss in ("ce", "cw", "dlr"):
        g, = torch.autograd.grad(query_loss(logits, y, loss).sum(), logits)
        per_query[loss] = g.abs().sum(-1)[0]
    assert per_query["ce"][0] / per_query["ce"].sum() > 0.9
    torch.testing.assert_close(per_query["cw"], torch.tensor([2.0, 2.0]))
    # DLR's denominator shrinks as the logits bunch up, so it still favours the wrong query
    # here (why the poisoning ensemble runs the CW margin first).
    assert per_query["dlr"][1] > 0
    targeted = query_loss(logits, y, "targeted", torch.tensor([[1, 1]]))
    assert targeted.shape == (1, 2) and targeted[0, 0] > targeted[0, 1]


def test_poisoning_ensemble_is_no_weaker_than_its_members_on_any_episode(registry):
    algo = registry.create("algorithm", "protonet")
    ep = _easy_episodes(n_episodes=2, n_query=2)
    victim = Victim(algo, algo.init(EpisodeSpec(5, 1, 2), torch.Generator().manual_seed(0)), 5)
    eps = 8 / 255
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731
    ens = registry.create("attack", "apgd-ensemble", {"steps": 5, "n_target_classes": 1})
    got = run_attack(ens, victim, ep, eps, "support", g()).sum(-1)
    # The first member sees the same generator state as the ensemble's first run.
    first = registry.create("attack", "apgd-margin", {"steps": 5, "loss": "cw"})
    assert (got <= run_attack(first, victim, ep, eps, "support", g()).sum(-1)).all()


def test_poisoning_sanity_checks_pass_on_an_honest_learner_and_flag_a_masked_one(registry):
    ep = _sanity_episodes(n_episodes=3, n_query=3)
    honest = Victim(Centroid(), {"scale": torch.ones(())}, 3)
    res = sanity_checks(registry, honest, ep, eps=0.25, norm="linf", target="support", steps=8, generator_seed=0,
                        poison=("apgd-margin", (("loss", "cw"), ("steps", 20))))
    names = {"poison-vs-pgd", "poison-large-eps", "poison-eps-monotone", "poison-steps-monotone", "poison-gradient-free"}
    assert names <= set(res.checks)
    # (PGD's own checks on the support are noisy on 9 queries; these are the poisoning checks.)
    assert all(res.checks[n]["passed"] for n in names), res.checks
    masked = Victim(QuantizedCentroid(), {"scale": torch.ones(())}, 3)
    res = sanity_checks(registry, masked, ep, eps=0.25, norm="linf", target="support", steps=8, generator_seed=0,
                        poison=("apgd-margin", (("loss", "cw"), ("steps", 20))))
    assert not res.checks["poison-gradient-free"]["passed"], res.checks
    assert not res.checks["poison-large-eps"]["passed"], res.checks


def test_test_contract_covers_the_poisoning_attacks(registry):
    assert {"apgd-margin", "apgd-targeted", "apgd-ensemble", "pgd-margin", "sign-search"} <= set(registry.ids("attack"))
    assert set(registry.get("attack", "apgd-ensemble").targets) == {"support", "both"}


class _Recording:
    """A registry that records the attack ids the sanity checks create."""

    def __init__(self, registry):
        self.registry, self.ids = registry, []

    def create(self, kind, component_id, options=None):
        self.ids.append(component_id)
        return self.registry.create(kind, component_id, options)


def test_sanity_checks_run_the_reference_attacks_the_suite_declares(registry):
    from bench.protocol.sanity import DEFAULT, sanity_references

    ep = _sanity_episodes(n_episodes=2, n_query=2)
    honest = Victim(Centroid(), {"scale": torch.ones(())}, 3)
    rec = _Recording(registry)
    sanity_checks(rec, honest, ep, eps=0.25, norm="linf", target="query", steps=4, generator_seed=0)
    assert set(rec.ids) == {"pgd-linf", "fgsm", "pgd-margin", "square"}  # the defaults: today's first-party references
    refs = sanity_references({"sanity": {"iterative": {"linf": "pgd-margin"}, "margin": {"linf": "apgd-margin"},
                                         "gradient_free_options": {"n_queries": 20}}})
    assert refs.for_norm("iterative", "l2") == DEFAULT.for_norm("iterative", "l2")  # undeclared norms keep theirs
    rec = _Recording(registry)
    res = sanity_checks(rec, honest, ep, eps=0.25, norm="linf", target="query", steps=4, generator_seed=0, refs=refs)
    assert set(rec.ids) == {"pgd-margin", "fgsm", "apgd-margin", "square"}, rec.ids
    assert {"steps-monotone", "eps-monotone", "pgd-vs-fgsm", "large-eps", "margin-loss", "gradient-free"} <= set(res.checks)
    # Poisoning targets: the declared iterative reference is what the poison must beat per episode, and the
    # declared gradient-free poisoning attack does the masking check.
    refs = sanity_references({"sanity": {"iterative": {"linf": "pgd-margin"}, "single_step": {"linf": "fgsm"},
                                         "poison": "apgd-targeted", "poison_options": {}}})
    rec = _Recording(registry)
    sanity_checks(rec, honest, ep, eps=0.25, norm="linf", target="support", steps=4, generator_seed=0, refs=refs)
    assert set(rec.ids) == {"pgd-margin", "fgsm", "apgd-targeted", "sign-search"}, rec.ids
    # A suite that declares no single-step reference for a norm skips that check only; an unknown id is an error
    # that lists the known attacks.
    with pytest.raises(MrbenchError, match="(?s)no-such-attack.*pgd-linf"):
        sanity_checks(registry, honest, ep, eps=0.25, norm="linf", target="query", steps=4, generator_seed=0,
                      refs=sanity_references({"sanity": {"gradient_free": {"linf": "no-such-attack"}}}))


def test_a_bad_sanity_table_is_an_error_naming_the_key(tmp_path):
    from bench.protocol.sanity import sanity_references
    from bench.suites import read_suite

    for table, match in [({"iterativ": {}}, "unknown key.*iterativ.*Its keys: iterative"),
                         ({"iterative": {"linf1": "pgd-linf"}}, "iterative.*must map norms"),
                         ({"poison": 3}, "poison.*must be an attack id"),
                         ({"poison_options": "x"}, "poison_options.*table of options")]:
        with pytest.raises(MrbenchError, match=match):
            sanity_references({"sanity": table})
    suite = tmp_path / "s" / "v1" / "suite.toml"
    suite.parent.mkdir(parents=True)
    suite.write_text('id = "s"\nversion = 1\n[episodes]\nn_way = 3\nk_shot = 1\nn_query = 2\nn_episodes = 4\nseed = 0\n'
                     '[train]\ndataset = "glyphs"\nsplit = "meta-train"\n[test]\ndataset = "glyphs"\nsplit = "meta-test"\n'
                     '[attacks.sanity]\nsingle_stepp = { linf = "fgsm" }\n')
    with pytest.raises(MrbenchError, match="single_stepp"):  # when the suite is read, not after a run
        read_suite(suite)


def test_every_shipped_suite_declares_registered_sanity_references(registry):
    from bench.protocol.sanity import sanity_references
    from bench.suites import all_suites

    known = set(registry.ids("attack"))
    for ref, suite in all_suites().items():
        refs = sanity_references(suite.attacks, ref)
        ids = {v for role in ("iterative", "single_step", "gradient_free") for _, v in getattr(refs, role)}
        ids |= {refs.poison, refs.poison_gradient_free, refs.poison_ensemble}
        assert ids <= known, (ref, ids - known)


class TransductiveCentroid(Centroid):
    """Nearest centroid whose centroids move halfway to the mean of the queries assigned to
    them (one soft k-means step): transductive."""

    id = "test-transductive-centroid"
    transductive = True

    def predict(self, params, state, x_query):
        q = x_query.flatten(1)
        w = torch.softmax(-((q[:, None, :] - state[None]) ** 2).sum(-1), -1)
        moved = 0.5 * state + 0.5 * (w.T @ q) / w.sum(0)[:, None]
        return -params["scale"] * ((q[:, None, :] - moved[None]) ** 2).sum(-1)


def test_sanity_checks_on_a_transductive_learner_search_the_queries_jointly(registry):
    ep = _sanity_episodes(n_episodes=2, n_query=3)
    victim = Victim(TransductiveCentroid(), {"scale": torch.ones(())}, 3)
    assert victim.transductive
    rec = _Recording(registry)
    res = sanity_checks(rec, victim, ep, eps=0.25, norm="linf", target="query", steps=4, generator_seed=0)
    assert "square" not in rec.ids and "sign-search" in rec.ids  # Square scores query subsets: it cannot run here
    assert "the learner is transductive" in res.checks["gradient-free"]["detail"], res.checks
    # sign-search on the query target stays in the ball, leaves the support alone and does not help the learner
    g = torch.Generator().manual_seed(0)
    adv = registry.create("attack", "sign-search", {"n_queries": 30}).perturb(victim, ep, 0.25, "query", g)
    assert torch.equal(adv.x_support, ep.x_support) and (adv.x_query - ep.x_query).abs().max() <= 0.25 + 1e-6
    with torch.no_grad():
        before = (victim.logits(ep.x_support, ep.y_support, ep.x_query).argmax(-1) == ep.y_query).sum()
        after = (victim.logits(adv.x_support, adv.y_support, adv.x_query).argmax(-1) == adv.y_query).sum()
    assert after <= before
