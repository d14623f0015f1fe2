"""Matching Networks (Vinyals et al., 2016)."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from bench.components import Algorithm, EpisodeSpec, Params, TrainDefaults
from bench.nn import conv4, Conv4Options, cosine, init_conv4, SupportStatsBN


def _init_lstm(generator: torch.Generator, in_features: int, state_features: int, hidden: int, prefix: str) -> Params:
    # PyTorch's LSTM init: U(-1/sqrt(hidden), 1/sqrt(hidden)) for every tensor.
    b = 1.0 / math.sqrt(hidden)

    def u(*shape: int) -> Tensor:
        return (torch.rand(*shape, generator=generator) * 2.0 - 1.0) * b

    return {f"{prefix}w_ih": u(4 * hidden, in_features), f"{prefix}w_hh": u(4 * hidden, state_features),
            f"{prefix}bias": u(4 * hidden)}


def _lstm_cell(params: Params, prefix: str, x: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
    gates = F.linear(x, params[f"{prefix}w_ih"]) + F.linear(h, params[f"{prefix}w_hh"]) + params[f"{prefix}bias"]
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


class MatchingNet(SupportStatsBN, Algorithm):
    """Attention over the support set: ``p(y | x) = sum_i a(x, x_i) onehot(y_i)`` with
    ``a`` the softmax of cosine similarities between embeddings.

    Logits are the log class probabilities ``log sum_{i in class c} a(x, x_i)``
    (computed as a difference of log-sum-exps), so cross-entropy on them is the
    paper's training objective, the log-likelihood of the query labels.

    Defaults follow the paper's Omniglot setup: the conv4 embedding (64 channels)
    shared by support and query, cosine similarity without a temperature, and no
    full-context embeddings (the paper uses FCE on miniImageNet, not on Omniglot).
    The paper gives no outer-loop settings for Omniglot; following its rule that
    training episodes match the test conditions, they have the test way and shot,
    with 15 queries per class, one episode per Adam (1e-3) step, 20000 steps.

    ``fce=True`` adds the paper's full-context embeddings (Appendix A): a
    bidirectional LSTM over the support embeddings (in the episode's class-major
    order) with a skip connection, and an attention LSTM with ``fce_steps`` read
    steps for each query. The support LSTM makes the support embeddings depend on
    the whole support set, which adaptation may; each query is still embedded on its
    own.

    BatchNorm: support statistics; queries are normalised with the support set's
    statistics (``bn='support'``, non-transductive) or with their own batch
    (``bn='batch'``, transductive).
    """

    id = "matchingnet"
    version = "1"

    class Options(Conv4Options):
        fce: bool = False
        """Full-context embeddings (bidirectional support LSTM, attention LSTM)."""
        fce_steps: int = 5
        """Read steps K of the attention LSTM (the paper does not give K)."""
        scale: float = Field(1.0, gt=0)
        """Multiplier on the cosine similarities before the attention softmax. The paper
        uses none (1.0). conv4 embeddings are non-negative (they end in a ReLU), so their
        cosines lie in [0, 1] and with scale 1 a 5-way 1-shot query's log-likelihood can
        never exceed log(e / (e + 4)), a loss floor of 0.90; a larger scale lifts it."""

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        o = self.options
        params = init_conv4(generator, in_channels=spec.image_shape[0], hidden=o.hidden)
        if o.fce:
            d = o.hidden * (spec.image_shape[1] // 16) * (spec.image_shape[2] // 16)
            params.update(_init_lstm(generator, d, d, d, "fce.fwd."))
            params.update(_init_lstm(generator, d, d, d, "fce.bwd."))
            # The attention LSTM's state input is [h, r], twice the embedding size.
            params.update(_init_lstm(generator, d, 2 * d, d, "fce.att."))
        return params

    def _support_context(self, params: Params, z: Tensor) -> Tensor:
        """g(x_i, S) = h_fwd_i + h_bwd_i + g'(x_i) over the support sequence."""
        n, d = z.shape
        zero = z.new_zeros(d)
        outs = {}
        for direction, order in (("fwd", range(n)), ("bwd", range(n - 1, -1, -1))):
            h, c, hs = zero, zero, [None] * n
            for i in order:
                h, c = _lstm_cell(params, f"fce.{direction}.", z[i], h, c)
                hs[i] = h
            outs[direction] = torch.stack(hs)
        return z + outs["fwd"] + outs["bwd"]

    def _query_context(self, params: Params, f: Tensor, g: Tensor) -> Tensor:
        """attLSTM(f'(x), g(S), K): each row of ``f`` is its own sequence."""
        h = torch.zeros_like(f)
        c = torch.zeros_like(f)
        for _ in range(self.options.fce_steps):
            r = torch.softmax(h @ g.t(), dim=-1) @ g  # read-out r_{k-1} with content attention on h_{k-1}
            h_hat, c = _lstm_cell(params, "fce.att.", f, torch.cat([h, r], -1), c)
            h = h_hat + f
        return h

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        z, stats = conv4(params, x_support)
        if self.options.fce:
            z = self._support_context(params, z)
        return {"support": z, "onehot": F.one_hot(y_support, n_way).to(torch.bool), "stats": stats}

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        stats = self.query_stats(state["stats"])
        f, _ = conv4(params, x_query, stats)
        g = state["support"]
        if self.options.fce:
            f = self._query_context(params, f, g)
        sim = self.options.scale * cosine(f, g)  # [n_query, n_support]
        # log sum_{i in c} softmax(sim)_i; a finite fill keeps classes without support finite.
        per_class = torch.where(state["onehot"], sim.unsqueeze(-1), torch.finfo(sim.dtype).min)  # [nq, ns, n_way]
        return per_class.logsumexp(-2) - sim.logsumexp(-1, keepdim=True)

    def train_defaults(self, spec: EpisodeSpec) -> TrainDefaults:
        return TrainDefaults(meta_batch=1, lr=1e-3, steps=20000, train_query=15)
