"""The contracts every component (algorithm, attack, shift, dataset) implements.

Plugins register *classes* deriving from these bases through the ``register``
callbacks of the hooks in :mod:`bench.hookspecs`. The harness instantiates them
with strict options (unknown keys are an error) and records their provenance
(providing distribution and version) in every result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

import pydantic
import torch
from torch import Tensor

from bench.errors import OptionsError
from bench.protocol.scenarios import TARGETS, Norm, Target

Params = dict[str, Tensor]
"""Meta-parameters: a flat dict of tensors (``torch.func.functional_call`` style)."""


class Options(pydantic.BaseModel):
    """Base of every component's options: strict, immutable, JSON-serialisable."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)


@dataclass(frozen=True)
class Provenance:
    """Where a registered component comes from.

    :param plugin: the plugin (entry-point) name that registered it.
    :param distribution: the installed distribution providing that plugin.
    :param version: the distribution's version.
    """

    plugin: str
    distribution: str
    version: str


@dataclass(frozen=True)
class EpisodeSpec:
    """Shape of an N-way K-shot episode.

    :param n_way: classes per episode.
    :param k_shot: support images per class.
    :param n_query: query images per class.
    :param image_shape: ``(C, H, W)`` of one image.
    """

    n_way: int
    k_shot: int
    n_query: int
    image_shape: tuple[int, int, int] = (1, 28, 28)

    def __post_init__(self) -> None:
        for name in ("n_way", "k_shot", "n_query"):
            if int(getattr(self, name)) < 1:
                raise OptionsError(f"Episode spec {name}={getattr(self, name)} must be >= 1.")

    @property
    def n_support(self) -> int:
        return self.n_way * self.k_shot

    @property
    def n_query_total(self) -> int:
        return self.n_way * self.n_query

    def replace(self, **changes: Any) -> "EpisodeSpec":
        return dataclasses.replace(self, **changes)


@dataclass
class Episode:
    """One episode, or a batch of them with a leading episode dim ``E``.

    Images are float in [0, 1], ``[(E,) n, C, H, W]``; labels are int64 in
    ``[0, n_way)``, ``[(E,) n]``. Support and query are class-major.
    """

    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor

    def to(self, device: torch.device | str) -> "Episode":
        return Episode(*(t.to(device) for t in self.tensors()))

    def tensors(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.x_support, self.y_support, self.x_query, self.y_query)

    def __getitem__(self, i: int | slice) -> "Episode":
        return Episode(*(t[i] for t in self.tensors()))


class Component:
    """Base of all components: an ``id``, a ``version`` and strict ``Options``.

    :cvar id: kebab-case id, stable forever; variants get their own id.
    :cvar version: bump whenever the component's outputs may change.
    :cvar Options: a :class:`Options` subclass; unknown keys are an error.
    """

    id: ClassVar[str]
    version: ClassVar[str] = "1"
    Options: ClassVar[type[Options]] = Options
    kind: ClassVar[str] = "component"
    #: Set by the registry when the class is registered.
    provenance: ClassVar[Provenance | None] = None

    def __init__(self, options: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        values = {**(options or {}), **kwargs}
        try:
            self.options = self.Options(**values)
        except pydantic.ValidationError as exc:
            known = ", ".join(f"{k} (default {f.default!r})" for k, f in self.Options.model_fields.items())
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or '?'}: {e['msg']}" for e in exc.errors()
            )
            raise OptionsError(
                f"Invalid options for {self.kind} {self.id!r}: {problems}.",
                f"Known options: {known or '(none)'}.",
            ) from None

    def describe(self) -> dict[str, Any]:
        """The id, version, options and provenance that go into a result entry."""
        prov = self.provenance
        return {
            "id": self.id,
            "version": self.version,
            "options": self.options.model_dump(mode="json"),
            "distribution": prov.distribution if prov else None,
            "distribution_version": prov.version if prov else None,
        }


class Algorithm(Component):
    """A meta-learner as three pure functions.

    ``adapt`` and ``predict`` are pure functions of their inputs (no hidden state, no
    in-place changes to arguments), differentiable with respect to every tensor
    input (attacks need gradients through adaptation) and ``torch.func.vmap``-safe
    over a leading episode dim. The harness decides whether to ``vmap`` them or to
    loop over episodes (see :mod:`bench.execution`).

    :cvar transductive: whether a query's logits depend on the other queries.
        A non-transductive algorithm must give each query the same logits alone and
        in a batch (contract test); transductive entries are ranked separately.
    :cvar bn_policy: one line saying how normalisation statistics are computed.
    """

    kind: ClassVar[str] = "algorithm"
    transductive: ClassVar[bool] = False
    bn_policy: ClassVar[str] = "no batch normalisation"
    #: ``None`` (the contract): ``adapt``/``predict`` are ``vmap``-safe. Otherwise one line
    #: saying why they are not, for code mrbench runs as somebody else wrote it (an adapter
    #: of another library whose methods use data-dependent shapes or control flow, e.g.
    #: ``torch.unique`` or an early stop on ``.item()``). The harness then runs the
    #: algorithm one episode at a time whatever the execution plan says, and the contract
    #: check verifies that the batched plan gives the loop's logits.
    vmap_unsafe: ClassVar[str | None] = None
    #: ``None``: its checkpoints are its own. Algorithms that declare the same family
    #: train the same parameters the same way and differ only in what they do at test
    #: time (e.g. methods run on one pre-trained backbone), so a checkpoint of one is
    #: evaluated as another (``mrbench evaluate B --checkpoint <A's checkpoint>``; the
    #: entry names ``B``, the checkpoint and its zoo record name ``A``) and seeds its
    #: training (``--init-from``). One published checkpoint then serves the family.
    weights_family: ClassVar[str | None] = None

    def init(self, spec: EpisodeSpec, generator: torch.Generator) -> Params:
        """Fresh meta-parameters for episodes of ``spec`` (deterministic under ``generator``).

        :param spec: the episode spec the learner will be *evaluated* on; ``n_way``
            sizes any classification head.
        :param generator: a seeded CPU generator; the only source of randomness.
        """
        raise NotImplementedError

    def init_for_training(self, spec: EpisodeSpec, generator: torch.Generator, split: "ImageSplit") -> Params:
        """The meta-parameters a training run starts from; default: :meth:`init`.

        Override only where the trained parameters depend on the training data, e.g. a
        pre-training classifier with one output per class of ``split`` (Baseline). The
        result must hold every tensor :meth:`init` returns, with the same shapes, since
        the checkpoint is evaluated with :meth:`adapt` / :meth:`predict` (contract test);
        extra tensors are owned by the optimizer and saved with the checkpoint.

        :param split: the meta-train split the run trains on (on the training device).
        """
        return self.init(spec, generator)

    def adapt(self, params: Params, x_support: Tensor, y_support: Tensor, *, n_way: int, train: bool = False) -> Any:
        """Adapt to one episode's support set; returns a pytree of tensors (the state).

        :param params: meta-parameters from :meth:`init` (or a checkpoint).
        :param x_support: ``[n_support, C, H, W]`` float in [0, 1].
        :param y_support: ``[n_support]`` int64 labels in ``[0, n_way)``.
        :param n_way: the number of classes; passed explicitly because shapes must be
            static under ``vmap`` (it cannot be read off ``y_support`` there).
        :param train: ``True`` only inside the harness's meta-training step; lets an
            algorithm use its training-time inner loop (e.g. fewer MAML steps).
            Evaluation and attacks always call with ``train=False``.
        """
        raise NotImplementedError

    def predict(self, params: Params, state: Any, x_query: Tensor) -> Tensor:
        """Logits ``[n_query_total, n_way]`` for ``x_query`` given the adapted state."""
        raise NotImplementedError

    def loss(self, params: Params, episode: Episode, *, n_way: int) -> Tensor:
        """Meta-training loss of one episode (the harness's default step averages it).

        Default: cross-entropy of the adapted learner's query logits, adapting with
        ``train=True``. Override only where an algorithm trains on another objective.
        """
        state = self.adapt(params, episode.x_support, episode.y_support, n_way=n_way, train=True)
        logits = self.predict(params, state, episode.x_query)
        return torch.nn.functional.cross_entropy(logits, episode.y_query)

    #: Optional override of the harness's outer step: ``train_step(ctx) -> loss``
    #: with ``ctx`` a :class:`bench.training.TrainContext`. ``None`` (the default) uses
    #: the harness's step (sample a batch, mean :meth:`loss`, one optimizer step), which
    #: is what adversarial and shifted meta-training build on.
    train_step: Any = None

    def train_defaults(self, spec: EpisodeSpec) -> "TrainDefaults":
        """The outer-loop settings of the original paper for episodes of ``spec``."""
        return TrainDefaults()

    def param_groups(self, params: Params) -> list[dict[str, Any]]:
        """Optimizer parameter groups; override to give some tensors their own lr."""
        return [{"params": list(params.values())}]


@dataclass(frozen=True)
class TrainDefaults:
    """Outer-loop defaults an algorithm asks the harness for.

    :param meta_batch: episodes per optimizer step.
    :param lr: Adam learning rate.
    :param lr_decay_every: halve-style step decay period in steps (0: none).
    :param lr_decay: multiplicative decay applied every ``lr_decay_every`` steps.
    :param steps: default number of outer steps.
    :param train_way: ways of *training* episodes (ProtoNet trains with more ways
        than it tests with); ``None`` keeps the suite's ``n_way``.
    :param train_query: queries per class in training episodes (``None``: suite's).
    """

    meta_batch: int = 1
    lr: float = 1e-3
    lr_decay_every: int = 0
    lr_decay: float = 0.5
    steps: int = 2000
    train_way: int | None = None
    train_query: int | None = None


class Dataset(Component):
    """A class-split image dataset.

    :cvar splits: the split names it provides, from ``meta-train``, ``meta-val``,
        ``meta-test``.
    :cvar needs_files: ``False`` for datasets generated without any file.
    """

    kind: ClassVar[str] = "dataset"
    splits: ClassVar[tuple[str, ...]] = ("meta-train", "meta-val", "meta-test")
    #: the image domain; a learner evaluated on another domain than it was trained on is
    #: a cross-domain transfer in the result entry. ``None``: the dataset's id.
    domain: ClassVar[str | None] = None
    needs_files: ClassVar[bool] = True

    def load(self, split: str, root: "Any | None" = None) -> "ImageSplit":
        """Decode (or read from the cache) one split.

        :param split: one of :attr:`splits`.
        :param root: dataset root folder; ``None`` resolves ``MRBENCH_DATA`` and then
            the per-user cache folder (see :func:`bench.data.resolve_root`).
        :raises bench.errors.DataError: a missing or corrupt archive, naming the file
            and the fix.
        """
        raise NotImplementedError

    def fixed_episodes(self, split: str, root: "Any | None" = None) -> "Any | None":
        """A dataset-defined fixed episode set (e.g. Lake's 20 runs), else ``None``."""
        return None


@dataclass
class ImageSplit:
    """One split of a dataset, in memory.

    :param images: uint8 ``[N, C, H, W]``, strokes bright on a dark background.
    :param labels: int64 ``[N]`` class index in ``[0, n_classes)``, non-decreasing
        (images of a class are contiguous).
    :param class_names: ``n_classes`` stable names (e.g. ``Alphabet/character07/rot090``).
    :param groups: per-class group name (the alphabet), or ``None``.
    :param revision: digest of the decoded content of this split.
    """

    images: Tensor
    labels: Tensor
    class_names: list[str]
    groups: list[str] | None = None
    revision: str = ""
    offsets: Tensor = field(init=False)
    counts: Tensor = field(init=False)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.numel() and bool((self.labels[1:] < self.labels[:-1]).any()):
            raise ValueError("labels must be non-decreasing (images grouped by class)")
        counts = torch.bincount(self.labels, minlength=len(self.class_names))
        if counts.numel() != len(self.class_names):
            raise ValueError("labels exceed the number of class names")
        self.counts = counts
        self.offsets = torch.cumsum(counts, 0) - counts

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def to(self, device: torch.device | str) -> "ImageSplit":
        out = ImageSplit(self.images.to(device), self.labels.to(device), self.class_names, self.groups, self.revision)
        return out


class Shift(Component):
    """A distribution shift applied to test episodes (corruption, label noise, ...).

    ``apply`` is deterministic under its generator, never mutates its input, keeps
    shapes, dtypes and the [0, 1] range of images, and works on a single episode or a
    batch with a leading episode dim (vectorised over it, on the episode's device).

    :cvar severities: the severity levels it accepts (1..5 for calibrated shifts).
    :cvar targets: which part of the episode it can change: ``query``, ``support``, ``both``.
    :cvar category: ``corruption`` for image corruptions (they enter the entry's mean
        corruption accuracy and relative degradation), ``support`` for support-set
        shifts (label noise, class imbalance), ``other`` otherwise.
    """

    kind: ClassVar[str] = "shift"
    category: ClassVar[str] = "other"
    severities: ClassVar[tuple[int, ...]] = (1, 2, 3, 4, 5)
    targets: ClassVar[tuple[Target, ...]] = TARGETS

    def apply(self, episode: Episode, severity: int, generator: torch.Generator) -> Episode:
        """Return the shifted episode (a new object; ``episode`` is unchanged)."""
        raise NotImplementedError


class Attack(Component):
    """An adversarial attack on few-shot episodes (see :mod:`bench.attacks`).

    ``perturb`` gets a :class:`bench.attacks.Victim` (the learner, run the harness's
    way), a batch of clean episodes ``[E, ...]``, ``eps`` and a target, and returns a
    new :class:`Episode` whose perturbed part stays in the ``norm`` ball of radius
    ``eps`` and in [0, 1]. It never mutates its input and draws every random number
    from ``generator``. The harness checks all of this after every call.

    :cvar norm: ``linf`` or ``l2``.
    :cvar targets: what it can attack: ``query`` (evasion against the adapted learner),
        ``support`` (poisoning through adaptation), ``both``.
    :cvar gradient_free: uses only the learner's outputs (a check against gradient masking).
    :cvar min_way: the fewest ways it is defined for (DLR losses need 3, targeted DLR 4).
    """

    kind: ClassVar[str] = "attack"
    norm: ClassVar[Norm] = "linf"
    targets: ClassVar[tuple[Target, ...]] = ("query",)
    gradient_free: ClassVar[bool] = False
    min_way: ClassVar[int] = 2

    def perturb(self, victim: Any, episodes: Episode, eps: float, target: str, generator: torch.Generator) -> Episode:
        """Return the adversarial episodes (new tensors; ``episodes`` is unchanged)."""
        raise NotImplementedError
