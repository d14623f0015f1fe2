"""mrbench: a plugin-based robustness benchmark suite for few-shot meta-learning."""

from __future__ import annotations

__version__ = "0.1.0"
