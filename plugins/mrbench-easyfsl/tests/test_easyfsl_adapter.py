"""The adapter runs easyfsl's own code, and where it had to change it, changes nothing but
what mrbench's contract forbids (detached scores, in-place updates, float32 constants)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from easyfsl import methods

from bench.adapters import ModuleAlgorithm
from bench.attacks import Victim, pgd
from bench.components import EpisodeSpec
from bench.errors import MrbenchError
from bench.testing import GRADIENT_SPEC, SPEC, check_input_gradients, init_params, random_episodes
from mrbench_easyfsl.algorithms import (
    ALGORITHMS, PTMAP, TIM, Finetune, LaplacianShot, PrototypicalNetworks, TransductiveFinetuning,
)


def _easyfsl_original(algo, original_cls, params, dtype=torch.float64):
    """easyfsl's unmodified class on the same backbone and parameters, as easyfsl runs it."""
    spec = SPEC
    kwargs = algo.method_kwargs(spec)
    assert not kwargs.pop("unit_norm", False), "easyfsl's PTMAP has no unit norm: compare with unit_norm=False"
    module = original_cls(algo.backbone(spec), **kwargs).to(dtype).eval()
    module.load_state_dict(params, strict=True)
    return module


def _ours(algo, params, ep):
    return algo.predict(params, algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)


@pytest.mark.parametrize(("cls", "original"), [(Finetune, methods.Finetune), (TIM, methods.TIM),
                                                (TransductiveFinetuning, methods.TransductiveFinetuning),
                                                (PTMAP, methods.PTMAP), (LaplacianShot, methods.LaplacianShot)],
                         ids=lambda c: getattr(c, "id", c.__name__))
def test_rewritten_methods_give_easyfsls_scores(cls, original):
    # Larger inner learning rates than the defaults, so the fine-tuning moves the prototypes visibly;
    # PT-MAP with easyfsl's features (no unit norm: see the next test).
    options = {"fine_tuning_lr": 1e-2} if cls in (Finetune, TIM, TransductiveFinetuning) else {}
    options |= {"unit_norm": False} if cls is PTMAP else {}
    algo = cls(**options)
    # easyfsl's LaplacianShot runs only in float32 (its affinities are float32 constants).
    dtype, tol = (torch.float32, 1e-5) if cls is LaplacianShot else (torch.float64, 1e-9)
    params = init_params(algo, dtype=dtype)
    ep = random_episodes(dtype=dtype)[1]
    module = _easyfsl_original(algo, original, params, dtype)
    module.process_support_set(ep.x_support, ep.y_support)
    expected = module(ep.x_query)
    if algo.outputs == "probabilities":
        expected = torch.log(expected + torch.finfo(expected.dtype).tiny)
    torch.testing.assert_close(_ours(algo, params, ep).detach(), expected, rtol=tol, atol=tol)


class _PaperPTMAP(methods.PTMAP):
    """easyfsl's PTMAP with the paper's Equation (1): unit L2 norm after the power transform."""

    def compute_features(self, images):
        return F.normalize(super().compute_features(images), dim=1)


def test_pt_maps_unit_norm_is_the_one_change_and_is_the_default():
    assert PTMAP().options.unit_norm
    algo = PTMAP()
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[1]
    kwargs = algo.method_kwargs(SPEC)
    assert kwargs.pop("unit_norm") is True
    module = _PaperPTMAP(algo.backbone(SPEC), **kwargs).to(torch.float64).eval()
    module.load_state_dict(params, strict=True)
    module.process_support_set(ep.x_support, ep.y_support)
    features = module.compute_features(ep.x_query)
    torch.testing.assert_close(features.norm(dim=1), torch.ones(len(features), dtype=torch.float64))
    expected = module(ep.x_query)
    expected = torch.log(expected + torch.finfo(expected.dtype).tiny)
    ours = _ours(algo, params, ep).detach()
    torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    # Squared distances on the unit sphere are at most 4: exp(-10 d^2) cannot underflow, every query
    # keeps a finite log-probability for every class.
    assert torch.isfinite(ours).all()


@pytest.mark.parametrize("cls", [Finetune, TIM, TransductiveFinetuning], ids=lambda c: c.id)
def test_easyfsl_detaches_the_fine_tuned_scores_and_the_adapter_does_not(cls):
    algo = cls()
    params = init_params(algo, dtype=torch.float64)
    ep = random_episodes(dtype=torch.float64)[0]
    xq = ep.x_query.clone().requires_grad_(True)
    module = _easyfsl_original(algo, cls.method.__mro__[2], params)  # the easyfsl class the rewrite derives from
    assert type(module).__module__.startswith("easyfsl.")
    module.process_support_set(ep.x_support, ep.y_support)
    if cls is Finetune:
        assert not module(xq).requires_grad  # easyfsl: every gradient attack would see zero gradients
    else:
        # The transductive ones put the query features in the fine-tuning loss, and their second
        # loss.backward() goes through the first one's freed graph: easyfsl cannot run them on
        # queries that need a gradient at all.
        with pytest.raises(RuntimeError, match="backward through the graph a second time"):
            module(xq)
    state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
    assert algo.predict(params, state, xq).requires_grad


@pytest.mark.parametrize("algo", [TIM(fine_tuning_lr=1e-2), Finetune(fine_tuning_lr=1e-2, fine_tuning_steps=20),
                                  TransductiveFinetuning(fine_tuning_lr=1e-2)], ids=lambda a: a.id)
def test_gradients_through_the_inner_optimisation_are_exact(algo):
    # With a learning rate at which the Adam steps matter, the support and query gradients still
    # equal finite differences of the query loss (through all the unrolled steps).
    check_input_gradients(algo)


def test_the_inner_optimisation_shapes_the_support_gradient():
    ep = random_episodes(spec=GRADIENT_SPEC, dtype=torch.float64)[0]

    def support_grad(algo):
        params = init_params(algo, spec=GRADIENT_SPEC, dtype=torch.float64)
        xs = ep.x_support.clone().requires_grad_(True)
        logits = algo.predict(params, algo.adapt(params, xs, ep.y_support, n_way=3), ep.x_query)
        return torch.autograd.grad(F.cross_entropy(logits, ep.y_query), xs)[0]

    with_steps, without = support_grad(TIM(fine_tuning_lr=1e-2)), support_grad(TIM(fine_tuning_steps=0))
    assert (with_steps - without).norm() > 1e-3 * without.norm()


def test_support_poisoning_through_tims_fine_tuning_raises_the_query_loss():
    algo = TIM(fine_tuning_lr=1e-2, fine_tuning_steps=10)
    params = init_params(algo)
    episodes = random_episodes(n_episodes=2)
    victim = Victim(algo, params, SPEC.n_way)
    adv = pgd(victim, episodes, eps=8 / 255, norm="linf", target="support", steps=5, step_size=2 / 255,
              random_start=False, restarts=1, generator=torch.Generator().manual_seed(0))

    def loss(ep):
        with torch.no_grad():
            return F.cross_entropy(victim.logits(ep.x_support, ep.y_support, ep.x_query).flatten(0, 1),
                                   ep.y_query.flatten())

    assert not torch.equal(adv.x_support, episodes.x_support) and torch.equal(adv.x_query, episodes.x_query)
    assert loss(adv) > loss(episodes)


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.id)
def test_transductive_is_easyfsls_declaration(cls):
    base = next(c for c in cls.method.__mro__ if c.__module__.startswith("easyfsl."))
    assert cls().transductive == base.is_transductive()
    assert cls(bn="batch").transductive


@pytest.mark.parametrize("cls", ALGORITHMS, ids=lambda c: c.id)
def test_the_vmap_declaration_is_true(cls):
    algo = cls()
    params = init_params(algo)
    eps = random_episodes()
    with pytest.raises(Exception):
        torch.func.vmap(lambda xs, ys: algo.adapt(params, xs, ys, n_way=SPEC.n_way))(eps.x_support, eps.y_support)


class RawPTMAP(ModuleAlgorithm):
    """easyfsl's PTMAP through the generic adapter as is (it updates its prototypes in place)."""

    id = "test-raw-pt-map"
    transductive = True
    outputs = "probabilities"

    def build(self, spec: EpisodeSpec):
        return methods.PTMAP(PrototypicalNetworks().backbone(spec))


def test_an_adapted_state_survives_a_method_that_updates_it_in_place():
    algo = RawPTMAP()
    params = init_params(algo)
    ep = random_episodes()[0]
    with torch.no_grad():
        state = algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)
        before = {k: v.clone() for k, v in state.items()}
        first, second = algo.predict(params, state, ep.x_query), algo.predict(params, state, ep.x_query)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert all(torch.equal(before[k], state[k]) for k in state)
    # Nothing of the episode stays on the module.
    module = algo.module(SPEC.image_shape)
    assert module.prototypes.numel() == 0 and module.backbone.support_stats.numel() == 0


def test_missing_parameters_are_an_error_not_placeholder_weights():
    algo = PrototypicalNetworks()
    params = init_params(algo)
    del params["backbone.conv2.weight"]
    ep = random_episodes()[0]
    with pytest.raises(MrbenchError, match=r"lack \['backbone.conv2.weight'\]"):
        algo.adapt(params, ep.x_support, ep.y_support, n_way=SPEC.n_way)


def test_the_backbone_starts_as_protonets_and_loads_its_checkpoints():
    from bench.plugins import get_registry

    protonet = get_registry().create("algorithm", "protonet")
    ours = init_params(PrototypicalNetworks())
    theirs = init_params(protonet)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    # Same parameters, same class means: the two differ only in the distance (easyfsl's is not squared).
    ep = random_episodes()[0]
    a = _ours(PrototypicalNetworks(), theirs, ep)
    b = protonet.predict(theirs, protonet.adapt(theirs, ep.x_support, ep.y_support, n_way=SPEC.n_way), ep.x_query)
    torch.testing.assert_close(a, -(-b).sqrt(), rtol=1e-4, atol=1e-4)


class ContributingExample(ModuleAlgorithm):
    """CONTRIBUTING's example of the generic adapter, on easyfsl's class as is: the
    module's own initialisation, default support/query methods and outputs."""

    id = "mylib-protonet"
    transductive = False
    bn_policy = "conv4 batch statistics; queries use the support statistics"
    vmap_unsafe = "mylib computes prototypes with torch.unique (data-dependent shapes)"

    def build(self, spec):
        from bench.adapters import Conv4Module

        return methods.PrototypicalNetworks(backbone=Conv4Module(in_channels=spec.image_shape[0]))


def test_the_contributing_example_passes_the_contract(mrbench_check):
    mrbench_check(ContributingExample())


_TINY = """
id = "tiny-glyphs-easyfsl"
version = 1
[episodes]
n_way = 3
k_shot = 1
n_query = 2
n_episodes = 4
seed = 0
[train]
dataset = "procedural-glyphs"
split = "meta-train"
options = { n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 6 }
[test]
dataset = "procedural-glyphs"
split = "meta-test"
options = { n_alphabets = 10, classes_per_alphabet = 12, samples_per_class = 6 }
"""


def test_one_classical_pretraining_serves_every_classical_method(tmp_path, monkeypatch):
    from bench.evaluation import evaluate
    from bench.training import train

    (tmp_path / "suites" / "tiny-glyphs-easyfsl" / "v1").mkdir(parents=True)
    (tmp_path / "suites" / "tiny-glyphs-easyfsl" / "v1" / "suite.toml").write_text(_TINY)
    monkeypatch.setenv("MRBENCH_SUITES", str(tmp_path / "suites"))
    opts = {"hidden": 8}
    base = train("easyfsl-simple-shot", "tiny-glyphs-easyfsl", tmp_path / "ss.pt", steps=2, options=opts,
                 meta_batch=4, device="cpu")
    # Evaluated as TIM: the entry names TIM (with the trained backbone's options and TIM's own) and the checkpoint.
    entry = evaluate("easyfsl-tim", "tiny-glyphs-easyfsl", tmp_path / "ss.pt", out=tmp_path / "tim.json",
                     options={"fine_tuning_steps": 3}, device="cpu")
    assert entry["algorithm"]["id"] == "easyfsl-tim" and entry["algorithm"]["options"]["hidden"] == 8
    assert entry["algorithm"]["options"]["fine_tuning_steps"] == 3
    assert entry["checkpoint"]["sha256"] == base.sha256 and entry["algorithm"]["transductive"]
    # --init-from takes the family's checkpoints too, and records whose they were.
    tim = train("easyfsl-tim", "tiny-glyphs-easyfsl", tmp_path / "tim.pt", steps=1, options=opts, meta_batch=4,
                device="cpu", init_from=tmp_path / "ss.pt")
    assert tim.meta["init_from"]["sha256"] == base.sha256 and tim.meta["init_from"]["algorithm"] == "easyfsl-simple-shot"
    # The family is declared, not inferred from matching parameter names: an episodic method on the same conv4
    # refuses the checkpoint, and the error names the family's members.
    with pytest.raises(MrbenchError, match="(?s)trained for 'easyfsl-simple-shot', not 'easyfsl-prototypical-networks'"):
        evaluate("easyfsl-prototypical-networks", "tiny-glyphs-easyfsl", tmp_path / "ss.pt", out=tmp_path / "pn.json",
                 device="cpu")
    with pytest.raises(MrbenchError, match="(?s)holds a 'easyfsl-simple-shot' checkpoint, not 'easyfsl-feat'"):
        train("easyfsl-feat", "tiny-glyphs-easyfsl", tmp_path / "feat.pt", steps=1, options=opts, device="cpu",
              init_from=tmp_path / "ss.pt")
    with pytest.raises(MrbenchError, match="weights family 'easyfsl-classical-conv4' \\(.*easyfsl-tim"):
        evaluate("easyfsl-simple-shot", "tiny-glyphs-easyfsl", _protonet_ckpt(tmp_path, opts), out=tmp_path / "x.json",
                 device="cpu")


def _protonet_ckpt(tmp_path, opts):
    from bench.training import train

    train("easyfsl-prototypical-networks", "tiny-glyphs-easyfsl", tmp_path / "pn1.pt", steps=1, options=opts,
          meta_batch=1, device="cpu")
    return tmp_path / "pn1.pt"


@pytest.mark.subprocess
def test_loading_the_plugin_imports_neither_easyfsl_nor_torchvision():
    # Every mrbench command loads every plugin; easyfsl (and torchvision, which it imports)
    # are imported only when an easyfsl algorithm builds its module.
    import subprocess
    import sys

    code = ("import sys; from bench.plugins import get_registry; r = get_registry(); "
            "assert 'easyfsl-pt-map' in r.ids('algorithm'); "
            "print(sorted(m for m in ('easyfsl', 'torchvision') if m in sys.modules)); "
            "r.create('algorithm', 'easyfsl-pt-map').transductive; print('easyfsl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["[]", "True"]
