"""The checkpoint zoo: every published model, content-addressed by its weights digest.

A zoo record is two files named after the weights digest
(:func:`bench.checkpoint.weights_sha256`, a sha256 of the tensors alone):

``<digest>.safetensors``
    the meta-parameters in the safetensors format (tensors only: loading it cannot
    run code), no optimizer state;
``<digest>.json``
    the sidecar: the checkpoint's metadata as :func:`bench.train` recorded it
    (algorithm id, version and options, training recipe, suite, environment), the
    sha256 and size of the tensors file, the ``.pt`` file it was published from
    (``source``), and the ``urls`` it can be downloaded from.

The sidecar is the record: it always lives in a zoo folder, while the tensors may
live next to it or only behind a URL. A checkpoint is resolved in this order:

1. the zoo folders: ``$MRBENCH_ZOO`` (``os.pathsep``-separated), then ``zoo/`` in
   every leaderboards folder (``$MRBENCH_SUITES``, then the repository's
   ``leaderboards/zoo/``);
2. the local cache, ``$MRBENCH_CACHE/zoo`` (default ``~/.cache/mrbench/zoo``);
3. each URL the sidecar records (``https://``; ``http://`` only to a loopback
   host, for tests and local mirrors), downloaded into the cache.

Whatever the source, the file's sha256 is checked against the sidecar before the
file is read, and the tensors' digest against the record's key after; a mismatch
is an error that names the file or URL and both digests, and nothing is loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from bench.checkpoint import atomic_write_text, weights_sha256
from bench.errors import MrbenchError
from bench.provenance import sha256_file

FORMAT = "mrbench-zoo-checkpoint"
FORMAT_VERSION = 1
ZOO_HINT = "`mrbench zoo list` shows the published checkpoints; `mrbench zoo publish CKPT.pt` adds one."
_LOOPBACK = {"localhost", "127.0.0.1", "::1"}


def repository_zoo() -> Path:
    """Where :func:`publish` writes by default: ``zoo/`` in the first leaderboards folder
    (``$MRBENCH_SUITES``' first entry, else the repository's ``leaderboards/``), next to the
    entries that reference the checkpoints."""
    from bench.suites import suites_dirs

    return suites_dirs()[0] / "zoo"


def zoo_folders(extra: Iterable[str | Path] = ()) -> list[Path]:
    """The zoo folders searched for records, in resolution order: ``extra``,
    ``$MRBENCH_ZOO``, then ``zoo/`` of every leaderboards folder (``$MRBENCH_SUITES``, then
    the repository's ``leaderboards/``)."""
    from bench.suites import suites_dirs

    env = [p for p in os.environ.get("MRBENCH_ZOO", "").split(os.pathsep) if p]
    out: list[Path] = []
    for p in [*extra, *env, *(d / "zoo" for d in suites_dirs())]:
        p = Path(p)
        if p not in out:
            out.append(p)
    return out


def cache_folder() -> Path:
    """Where downloaded checkpoints go: ``$MRBENCH_CACHE/zoo``, else ``~/.cache/mrbench/zoo``."""
    base = os.environ.get("MRBENCH_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "mrbench") / "zoo"


@dataclass(frozen=True)
class ZooRecord:
    """One published checkpoint (the content of its sidecar).

    :param weights_sha256: the key: digest of the tensors (names, dtypes, shapes, bytes).
    :param meta: the checkpoint's training metadata (as :func:`bench.train` wrote it).
    :param file_sha256: sha256 of the ``.safetensors`` file.
    :param size_bytes: its size.
    :param source: the ``.pt`` file it was published from (``file``, ``sha256``), if any;
        result entries written before the zoo name their checkpoint by that sha256.
    :param urls: where the tensors can be downloaded from.
    :param sidecar: the sidecar file this record was read from.
    """

    weights_sha256: str
    meta: dict[str, Any]
    file_sha256: str
    size_bytes: int
    source: dict[str, Any] | None = None
    urls: tuple[str, ...] = ()
    sidecar: Path | None = field(default=None, compare=False)

    @property
    def file_name(self) -> str:
        return f"{self.weights_sha256}.safetensors"

    @property
    def algorithm(self) -> str:
        return str(self.meta.get("algorithm", {}).get("id"))

    @property
    def suite(self) -> str | None:
        return self.meta.get("suite")

    @property
    def ref(self) -> str:
        """The reference :func:`bench.load_model` and ``--checkpoint`` take: ``zoo:<digest>``."""
        return f"zoo:{self.weights_sha256}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": FORMAT, "format_version": FORMAT_VERSION, "weights_sha256": self.weights_sha256,
                "file": self.file_name, "file_sha256": self.file_sha256, "size_bytes": self.size_bytes,
                "source": self.source, "urls": list(self.urls), "checkpoint": self.meta}


def _record(path: Path) -> ZooRecord:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise MrbenchError(f"Zoo record {path} is not readable JSON ({exc}).",
                           "Restore it from the repository (`git checkout -- FILE`).") from None
    if not isinstance(raw, dict) or raw.get("kind") != FORMAT:
        raise MrbenchError(f"{path} is not a zoo record (kind {raw.get('kind') if isinstance(raw, dict) else None!r}).",
                           "Zoo folders hold only <digest>.json records and <digest>.safetensors files.")
    if raw.get("format_version") != FORMAT_VERSION:
        raise MrbenchError(f"Zoo record {path} has format {raw.get('format_version')}, this mrbench reads "
                           f"{FORMAT_VERSION}.", "Upgrade mrbench.")
    digest = raw.get("weights_sha256", "")
    if path.stem != digest:
        raise MrbenchError(f"Zoo record {path} is filed under {path.stem[:16]} but records weights {digest[:16]}.",
                           "A record is named after its weights digest; restore the file.")
    return ZooRecord(digest, raw["checkpoint"], raw["file_sha256"], int(raw["size_bytes"]), raw.get("source"),
                     tuple(raw.get("urls") or ()), path)


def records(folders: Iterable[str | Path] | None = None) -> list[ZooRecord]:
    """Every record of the zoo folders (first folder wins for a digest found twice)."""
    out: dict[str, ZooRecord] = {}
    for folder in zoo_folders(folders or ()):
        for path in sorted(Path(folder).glob("*.json")):
            rec = _record(path)
            out.setdefault(rec.weights_sha256, rec)
    return sorted(out.values(), key=lambda r: (str(r.suite), r.algorithm, r.weights_sha256))


def find(ref: str, folders: Iterable[str | Path] | None = None) -> ZooRecord:
    """The record of ``ref``: a weights digest or a unique prefix of one (at least 8 hex
    digits, optionally written ``zoo:<digest>``), or the sha256 of the ``.pt`` file it was
    published from (how result entries written before the zoo name their checkpoint).

    :raises MrbenchError: unknown or ambiguous, listing the candidates.
    """
    key = ref.removeprefix("zoo:").strip().lower()
    if len(key) < 8 or any(c not in "0123456789abcdef" for c in key):
        raise MrbenchError(f"{ref!r} is not a checkpoint digest.",
                           "Write its weights sha256 or a prefix of at least 8 hex digits, e.g. zoo:3ca6f73a. "
                           + ZOO_HINT)
    all_records = records(folders)
    hits = [r for r in all_records if r.weights_sha256.startswith(key)]
    if not hits:
        hits = [r for r in all_records if (r.source or {}).get("sha256") == key]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise MrbenchError(f"Checkpoint prefix {key!r} matches {len(hits)} zoo records: "
                           + ", ".join(r.weights_sha256[:16] for r in hits) + ".", "Give more digits.")
    known = ", ".join(f"{r.weights_sha256[:12]} ({r.algorithm})" for r in all_records[:20])
    more = f" and {len(all_records) - 20} more" if len(all_records) > 20 else ""
    raise MrbenchError(f"No zoo checkpoint {key[:16]} in {', '.join(str(f) for f in zoo_folders(folders or ()))}"
                       f" (known: {known or 'none'}{more}).", ZOO_HINT)


def _check_file(path: Path, record: ZooRecord, where: str) -> None:
    actual = sha256_file(path)
    if actual != record.file_sha256:
        raise MrbenchError(f"{where} has sha256 {actual}, but zoo record {record.weights_sha256[:16]} expects "
                           f"{record.file_sha256}; it was not loaded.",
                           "The file is corrupt or was replaced: delete it (a cached copy is downloaded again) or "
                           "restore it from the repository.")


def _download(url: str, record: ZooRecord, dest: Path) -> None:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" and not (parts.scheme == "http" and parts.hostname in _LOOPBACK):
        raise MrbenchError(f"Zoo record {record.weights_sha256[:16]} names the URL {url}, which is not https://.",
                           "Checkpoints are downloaded over https only (http only from localhost).")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".download")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as f:
            for block in iter(lambda: resp.read(1 << 20), b""):
                h.update(block)
                f.write(block)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MrbenchError(f"Could not download zoo checkpoint {record.weights_sha256[:16]} from {url}: {exc}.",
                           "Check the network, or put the .safetensors file into a zoo folder by hand.") from None
    if h.hexdigest() != record.file_sha256:
        tmp.unlink()
        raise MrbenchError(f"The file downloaded from {url} has sha256 {h.hexdigest()}, but zoo record "
                           f"{record.weights_sha256[:16]} expects {record.file_sha256}; it was deleted, not loaded.",
                           "The URL serves another file: tell the record's maintainer, or use another mirror.")
    os.replace(tmp, dest)


def fetch(record: ZooRecord, folders: Iterable[str | Path] | None = None) -> Path:
    """The local path of ``record``'s tensors file, resolved in the documented order
    (zoo folders, cache, URLs into the cache), its sha256 checked."""
    for folder in zoo_folders(folders or ()):
        path = Path(folder) / record.file_name
        if path.is_file():
            _check_file(path, record, str(path))
            return path
    cached = cache_folder() / record.file_name
    if cached.is_file():
        _check_file(cached, record, str(cached))
        return cached
    if not record.urls:
        raise MrbenchError(f"Zoo checkpoint {record.weights_sha256[:16]} ({record.algorithm}) has no tensors file in "
                           f"the zoo folders or the cache ({cache_folder()}) and records no URL.",
                           "Restore leaderboards/zoo from the repository, or put the file into MRBENCH_ZOO.")
    errors = []
    for url in record.urls:
        try:
            _download(url, record, cached)
            return cached
        except MrbenchError as exc:
            errors.append(str(exc))
    raise MrbenchError(" ".join(errors), "No URL of the record served the right file.")


def load(ref: str | ZooRecord, folders: Iterable[str | Path] | None = None,
         ) -> tuple[dict[str, torch.Tensor], dict[str, Any], ZooRecord]:
    """``(params, meta, record)`` of a zoo checkpoint; both digests checked."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    record = ref if isinstance(ref, ZooRecord) else find(ref, folders)
    path = fetch(record, folders)
    try:
        params = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise MrbenchError(f"{path} is not a readable safetensors file ({exc}).", "Delete it and fetch it again.") from None
    actual = weights_sha256(params)
    if actual != record.weights_sha256:
        raise MrbenchError(f"{path}: its tensors hash to {actual}, but the zoo record expects {record.weights_sha256}; "
                           "it was not loaded.", "The file does not hold the published weights: restore it.")
    return params, dict(record.meta), record


def publish(checkpoint: str | Path, folder: str | Path | None = None, urls: Iterable[str] = (),
            ) -> tuple[ZooRecord, bool]:
    """Add a trained ``.pt`` checkpoint to a zoo folder (default: the repository's).

    Writes ``<digest>.safetensors`` (tensors only, deterministic bytes: the same weights
    always give the same file) and ``<digest>.json``. Publishing a checkpoint whose
    weights are already there changes nothing.

    :returns: the record and whether it is new.
    """
    from safetensors.torch import save_file

    from bench.checkpoint import load_final

    checkpoint = Path(checkpoint)
    params, meta, file_sha = load_final(checkpoint)
    digest = weights_sha256(params)
    if meta.get("weights_sha256") not in (None, digest):
        raise MrbenchError(f"{checkpoint}: its tensors hash to {digest[:16]}, but it records weights_sha256 "
                           f"{str(meta['weights_sha256'])[:16]}.", "The file was altered after training; train it again.")
    folder = Path(folder) if folder is not None else repository_zoo()
    folder.mkdir(parents=True, exist_ok=True)
    sidecar = folder / f"{digest}.json"
    if sidecar.exists():
        return _record(sidecar), False
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in params.items()}
    target = folder / f"{digest}.safetensors"
    tmp = target.with_name(target.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": FORMAT, "weights_sha256": digest})
    os.replace(tmp, target)
    meta = {**meta, "weights_sha256": digest}
    record = ZooRecord(digest, meta, sha256_file(target), target.stat().st_size,
                       {"file": checkpoint.name, "sha256": file_sha}, tuple(urls), sidecar)
    atomic_write_text(sidecar, json.dumps(record.to_json(), indent=2, sort_keys=True) + "\n")
    return record, True


def export(ref: str | ZooRecord, out: str | Path) -> Path:
    """Write a zoo checkpoint as an ordinary ``.pt`` checkpoint (for tools that take a file)."""
    from bench.checkpoint import save_final

    params, meta, _ = load(ref)
    out = Path(out)
    save_final(out, params, meta)
    return out


def total_size(folders: Iterable[str | Path] | None = None) -> int:
    """Bytes on disk of the zoo folders' files (records and tensors)."""
    return sum(p.stat().st_size for f in zoo_folders(folders or ()) if Path(f).is_dir()
               for p in Path(f).iterdir() if p.is_file())


def is_zoo_ref(checkpoint: Any) -> bool:
    return isinstance(checkpoint, ZooRecord) or (isinstance(checkpoint, str) and checkpoint.startswith("zoo:"))


def load_checkpoint(checkpoint: str | Path | ZooRecord) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                                                     dict[str, Any]]:
    """``(params, meta, ref)`` of a ``.pt`` file or a zoo reference (``zoo:<digest>``);
    ``ref`` is the result entry's checkpoint block (``weights_sha256``, ``sha256``, ``file``)."""
    from bench.checkpoint import load_final

    if is_zoo_ref(checkpoint):
        params, meta, record = load(checkpoint)
        return params, meta, {"weights_sha256": record.weights_sha256, "sha256": record.file_sha256,
                              "file": record.file_name}
    params, meta, sha = load_final(Path(checkpoint))
    return params, meta, {"weights_sha256": weights_sha256(params), "sha256": sha, "file": Path(checkpoint).name}


def entry_checkpoint(entry: Any, folders: Iterable[str | Path] | None = None) -> ZooRecord:
    """The zoo record behind a result entry (a :class:`bench.results.schema.ResultEntry` or its
    JSON): by its ``checkpoint.weights_sha256``, else by the ``.pt`` file's sha256 it names.

    :raises MrbenchError: the entry's checkpoint is not in the zoo.
    """
    ck = entry["checkpoint"] if isinstance(entry, Mapping) else entry.checkpoint.model_dump()
    weights, sha = ck.get("weights_sha256"), ck.get("sha256")
    if weights:
        return find(weights, folders)
    if sha:
        try:
            return find(sha, folders)
        except MrbenchError:
            pass
    raise MrbenchError(f"The checkpoint of this entry (file {ck.get('file')}, sha256 {str(sha)[:16]}) is not in the zoo.",
                       "Publish it with `mrbench zoo publish CKPT.pt`; a lost checkpoint's entries must be re-created "
                       "and superseded.")


@dataclass(frozen=True)
class Model:
    """A published model, ready to adapt and predict (:func:`load_model`).

    :param algorithm: the algorithm instance, with the options the checkpoint was trained with.
    :param params: its meta-parameters.
    :param record: the zoo record (``record.ref`` is what ``--checkpoint`` and
        :func:`bench.evaluate` take).
    """

    algorithm: Any
    params: dict[str, torch.Tensor]
    record: ZooRecord

    @property
    def ref(self) -> str:
        return self.record.ref

    def logits(self, x_support: torch.Tensor, y_support: torch.Tensor, x_query: torch.Tensor,
               n_way: int | None = None) -> torch.Tensor:
        """Adapt on one episode's support set and predict its queries (differentiable in both)."""
        n_way = n_way or int(y_support.max()) + 1
        state = self.algorithm.adapt(self.params, x_support, y_support, n_way=n_way)
        return self.algorithm.predict(self.params, state, x_query)


def load_model(ref: str | ZooRecord, registry: Any = None) -> Model:
    """Load a published model: ``ref`` is a weights digest (or a prefix of at least 8 hex
    digits, ``zoo:`` optional) or a result entry file, whose checkpoint is loaded."""
    from bench.plugins import get_registry

    if isinstance(ref, (str, Path)) and str(ref).endswith(".json") and Path(ref).is_file():
        record = entry_checkpoint(json.loads(Path(ref).read_text()))
    else:
        record = ref if isinstance(ref, ZooRecord) else find(str(ref))
    params, meta, record = load(record)
    algorithm = (registry or get_registry()).create("algorithm", meta["algorithm"]["id"], meta["algorithm"]["options"])
    return Model(algorithm, params, record)
