"""Run a few-shot classifier written as a stateful ``nn.Module`` under mrbench's pure contract.

Many libraries write a few-shot classifier as an ``nn.Module`` with a support/query API:
one method digests the support set and stores what it computed on the module
(``process_support_set(x_support, y_support)`` in easyfsl), then ``forward(x_query)``
returns the query scores. mrbench needs two pure functions instead (``adapt`` and
``predict``, :class:`bench.components.Algorithm`). :class:`ModuleAlgorithm` maps the one
onto the other without touching the library's code:

- the meta-parameters are the module's parameters and buffers by their ``state_dict``
  names, and every call runs the module under :func:`torch.func.functional_call` with the
  given tensors, so gradients reach them (training) and the images (attacks, support
  poisoning included) through whatever the library computes;
- ``adapt`` runs the support method and returns, as the state, every tensor attribute
  that call assigned on the module or its submodules; ``predict`` puts (copies of) them
  back, runs the query method, and both restore the module's own attributes afterwards,
  so nothing of one episode leaks into the next and the state can be reused (attacks
  predict many times from one adapted state).

:class:`Conv4Module` is mrbench's conv4 backbone (:func:`bench.nn.conv_blocks`) as an
``nn.Module`` for libraries that take a backbone module, with mrbench's BatchNorm policy:
no running statistics; the support forward normalises with its own statistics and stores
them as an attribute (so they become part of the adapted state), and query forwards use
them (non-transductive), unless ``bn='batch'``.

The module is run in ``eval()`` mode (no dropout: adaptation must be deterministic). A
library's code that uses data-dependent shapes or control flow (``torch.unique``, an early
stop on ``.item()``) is not ``vmap``-safe; declare it with
:attr:`~bench.components.Algorithm.vmap_unsafe` and the harness loops over episodes.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from bench.components import Algorithm, EpisodeSpec, Params
from bench.errors import MrbenchError
from bench.nn import Stats, conv_blocks, init_conv_blocks

Outputs = Literal["logits", "log-probabilities", "probabilities"]


class Conv4Module(nn.Module):
    """mrbench's conv blocks (conv3x3 + BatchNorm + ReLU (+ max-pool 2)) as an ``nn.Module``.

    Parameter names are :func:`bench.nn.init_conv_blocks`'s (``conv0.weight``, ``bn0.bias``,
    ...), so under the prefix ``backbone.`` a checkpoint of any mrbench conv4 learner loads.

    :param in_channels: channels of the input.
    :param hidden: channels of every conv layer.
    :param blocks: number of blocks (4: conv4).
    :param pools: how many of the first blocks end with a max-pool (default: all).
    :param flatten: return ``[N, features]`` (``True``) or the feature maps.
    :param bn: ``support``: a forward without stored statistics normalises with its own and
        stores them in :attr:`support_stats`; a forward with stored statistics uses them.
        ``batch``: every forward normalises with its own batch (transductive over queries).
    """

    def __init__(self, in_channels: int = 1, hidden: int = 64, blocks: int = 4, pools: int | None = None,
                 flatten: bool = True, bn: Literal["support", "batch"] = "support") -> None:
        super().__init__()
        # Parameters start as PyTorch's default Conv2d init drawn from the global RNG (the
        # adapter seeds it from the algorithm's generator); mrbench's own init function, so
        # the distribution is conv4's.
        g = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        init = init_conv_blocks(g, in_channels, hidden, prefix="", blocks=blocks)
        for i in range(blocks):
            for layer in ("conv", "bn"):
                holder = nn.Module()
                holder.weight = nn.Parameter(init[f"{layer}{i}.weight"])
                holder.bias = nn.Parameter(init[f"{layer}{i}.bias"])
                self.add_module(f"{layer}{i}", holder)
        self.blocks, self.pools, self.flatten, self.bn = blocks, pools, flatten, bn
        #: ``[blocks, 2, hidden]`` (mean, var) of the support forward; empty: none yet.
        self.support_stats = torch.empty(0)

    def forward(self, x: Tensor) -> Tensor:
        params = {f"{layer}{i}.{name}": getattr(getattr(self, f"{layer}{i}"), name)
                  for i in range(self.blocks) for layer in ("conv", "bn") for name in ("weight", "bias")}
        given: Stats | None = None
        if self.bn == "support" and self.support_stats.numel():
            given = [(s[0], s[1]) for s in self.support_stats.unbind(0)]
        h, used = conv_blocks(params, x, given, prefix="", blocks=self.blocks, pools=self.pools)
        if given is None and self.bn == "support":
            self.support_stats = torch.stack([torch.stack([m, v]) for m, v in used])
        return h.flatten(1) if self.flatten else h


class _Dispatch(nn.Module):
    """Calls one method of the wrapped module, so ``functional_call`` can run any method."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, method: str, *args: Any) -> Any:
        return getattr(self.module, method)(*args)


def _tensor_attributes(module: nn.Module) -> dict[str, Tensor]:
    """Every plain tensor attribute (not a parameter or buffer) of ``module`` and its
    submodules, keyed ``path:attribute``."""
    out = {}
    for path, m in module.named_modules():
        for name, value in vars(m).items():
            if isinstance(value, Tensor):
                out[f"{path}:{name}"] = value
    return out


def _owner(module: nn.Module, key: str) -> tuple[nn.Module, str]:
    """The submodule holding attribute ``key`` (``path:attribute``) and the attribute's name."""
    path, name = key.split(":")
    return (module.get_submodule(path) if path else module), name


def _set_attribute(module: nn.Module, key: str, value: Tensor) -> None:
    owner, name = _owner(module, key)
    owner.__dict__[name] = value  # a plain attribute, as the library's own assignment made it


class ModuleAlgorithm(Algorithm):
    """An mrbench algorithm over a stateful ``nn.Module`` few-shot classifier.

    Subclass it and give :meth:`build`; the rest has defaults:

    - :attr:`support_method` / :attr:`query_method`: the names of the module's two methods;
    - :attr:`outputs`: what the query method returns; probabilities are turned into
      log-probabilities, so that cross-entropy and the attacks' losses see logits;
    - :meth:`init`: the module's own initialisation, made deterministic by seeding the
      global RNG from the generator (override to draw some tensors yourself, e.g. a
      backbone from :func:`bench.nn.init_conv4`);
    - ``adapt`` / ``predict``: as described in :mod:`bench.adapters`.

    Declare ``transductive`` (whether the query method couples the queries), ``bn_policy``
    and, where the library's code is not ``vmap``-safe, ``vmap_unsafe``; the contract checks
    (:data:`bench.testing.ALGORITHM_CHECKS`) verify all three.
    """

    support_method: ClassVar[str] = "process_support_set"
    query_method: ClassVar[str] = "forward"
    outputs: ClassVar[Outputs] = "logits"

    def build(self, spec: EpisodeSpec) -> nn.Module:
        """A new instance of the classifier for images of ``spec.image_shape``; its own
        parameter values are used only by the default :meth:`init`."""
        raise NotImplementedError

    # -- the module, built once per image shape -------------------------------------------

    def module(self, image_shape: tuple[int, ...]) -> nn.Module:
        """The (cached) module for images of ``image_shape``, in ``eval()`` mode."""
        cache = self.__dict__.setdefault("_modules_by_shape", {})
        key = tuple(int(s) for s in image_shape)
        if key not in cache:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)  # parameter values are replaced at every call
                module = self.build(EpisodeSpec(n_way=2, k_shot=1, n_query=1, image_shape=key)).eval()
            cache[key] = (_Dispatch(module), _tensor_attributes(module), frozenset(module.state_dict()))
        return cache[key][0].module

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = self.build(spec)
        return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items()}

    # -- the pure contract ------------------------------------------------------------------

    def _run(self, params: Params, method: str, x: Tensor, *args: Any, state: dict[str, Tensor] | None = None
             ) -> tuple[Any, dict[str, Tensor]]:
        """Run ``method(x, *args)`` on the module with ``params`` and the attributes ``state``;
        returns its output and the tensor attributes the call assigned."""
        self.module(x.shape[1:])
        dispatch, pristine, names = self.__dict__["_modules_by_shape"][tuple(int(s) for s in x.shape[1:])]
        module = dispatch.module
        missing = names - params.keys()
        if missing:
            raise MrbenchError(
                f"{self.id}: the meta-parameters lack {sorted(missing)[:5]} ({len(missing)} of the module's "
                f"{len(names)} parameters and buffers).",
                "Pass the parameters this algorithm's init (or a checkpoint of it) made; without them the module "
                "would silently run with placeholder values.")
        try:
            for key, value in (state or {}).items():
                # A copy: some methods update their state in place (PT-MAP's prototypes), and
                # an adapted state must give the same logits however often it is used.
                _set_attribute(module, key, value.clone())
            before = _tensor_attributes(module)
            out = torch.func.functional_call(dispatch, {f"module.{k}": params[k] for k in names}, (method, x, *args),
                                             strict=True)
            after = _tensor_attributes(module)
            assigned = {k: v for k, v in after.items() if before.get(k) is not v}
        finally:
            # Back to the module as built: no tensor of this call (nor its graph) stays on it.
            for key in _tensor_attributes(module):
                if key in pristine:
                    _set_attribute(module, key, pristine[key])
                else:
                    owner, name = _owner(module, key)
                    del owner.__dict__[name]
        return out, assigned

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        _, assigned = self._run(params, self.support_method, x_support, y_support)
        return assigned

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        out, _ = self._run(params, self.query_method, x_query, state=state)
        if self.outputs == "probabilities":
            # log(p + tiny) rather than log(clamp(p)): finite where p is exactly 0 (an optimal
            # transport plan) and differentiable everywhere.
            return torch.log(out + torch.finfo(out.dtype).tiny)
        return out
