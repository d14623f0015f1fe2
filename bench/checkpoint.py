"""Checkpoints: tensors plus JSON metadata, loaded with ``weights_only=True``.

A final checkpoint ``X.pt`` holds the meta-parameters and its metadata (as a JSON
string, so the file holds only tensors and plain values); a sidecar ``X.pt.json``
repeats the metadata with the file's sha256. A training run in progress keeps a
resumable ``X.pt.partial`` (optimizer and generator state included), written
atomically, so an interrupted run loses at most the last few seconds.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from bench.errors import MrbenchError
from bench.provenance import sha256_file

FORMAT = "mrbench-checkpoint"
FORMAT_VERSION = 1


def atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def partial_path(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def sidecar_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def weights_sha256(params: dict[str, torch.Tensor]) -> str:
    """sha256 of the tensors alone (names, dtypes, shapes and bytes, in name order).

    The file's sha256 identifies one file: its metadata hold the wall time and the git
    sha, so a second training run never writes the same bytes. Two runs trained the
    same weights exactly when their ``weights_sha256`` agree.
    """
    import hashlib

    h = hashlib.sha256()
    for name in sorted(params):
        t = params[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def save_final(path: Path, params: dict[str, torch.Tensor], meta: dict[str, Any]) -> str:
    """Write the final checkpoint and its sidecar; returns the file's sha256. The
    metadata gain ``weights_sha256`` (:func:`weights_sha256`) unless they have it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**meta, "weights_sha256": meta.get("weights_sha256") or weights_sha256(params)}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "params": {k: v.detach().to("cpu").contiguous() for k, v in params.items()},
        "meta": json.dumps(meta, sort_keys=True),
    }
    atomic_save(payload, path)
    sha = sha256_file(path)
    atomic_write_text(sidecar_path(path), json.dumps({**meta, "sha256": sha}, indent=2, sort_keys=True) + "\n")
    return sha


def _load(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MrbenchError(f"Checkpoint {path} does not exist.",
                           "Train one with `mrbench train ALGO --suite SUITE --out PATH`, or check the path.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise MrbenchError(f"Checkpoint {path} could not be read ({type(exc).__name__}: {str(exc)[:200]}).",
                           "It is truncated or not an mrbench checkpoint; train it again.") from None


def load_final(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], str]:
    """Load ``(params, meta, sha256)`` from a final checkpoint."""
    path = Path(path)
    payload = _load(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise MrbenchError(f"{path} is not an mrbench checkpoint (no format marker).",
                           "Pass a file written by `mrbench train`.")
    if payload.get("format_version") != FORMAT_VERSION:
        raise MrbenchError(f"{path} has checkpoint format {payload.get('format_version')}, this mrbench reads {FORMAT_VERSION}.",
                           "Use the mrbench version that wrote it, or train again.")
    return payload["params"], json.loads(payload["meta"]), sha256_file(path)


def load_partial(path: Path) -> dict[str, Any] | None:
    p = partial_path(Path(path))
    if not p.exists():
        return None
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        # A partial that cannot be read is only a lost resume point, never lost results.
        import warnings

        warnings.warn(f"Ignoring unreadable resume file {p}; training starts over.", stacklevel=2)
        return None
