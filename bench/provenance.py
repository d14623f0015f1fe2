"""Facts about the run that go into every checkpoint and result entry."""

from __future__ import annotations

import hashlib
import platform
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

import bench


def git_sha() -> str | None:
    """The repository's HEAD (with ``-dirty`` when the tree has changes), if any."""
    root = Path(bench.__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5)
        return sha.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}threads"


def cpu_name() -> str:
    """The processor model and the kernel capability torch dispatches to on it (e.g.
    ``Intel(R) Xeon(R) Processor [AVX512]``): together they decide a CPU run's float rounding."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return f"{model} [{capability}]"


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "harness_version": bench.__version__,
        "git_sha": git_sha(),
        "torch_version": torch.__version__,
        "python_version": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device_name(device),
        "cpu": cpu_name(),
    }


def peak_memory_bytes(device: torch.device) -> int:
    """Peak device memory for CUDA, else the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """Short stable digest of a JSON-able object (config keys)."""
    import json

    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
