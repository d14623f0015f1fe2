"""Markdown building blocks of the report: the report being written and cell formats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report.load import is_number


class MarkdownReport:
    """The report being written: its lines, the plots written and the sections that had data."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.lines: list[str] = []
        self.plots: list[Path] = []
        self.sections: list[str] = []

    def section(self, name: str, title: str) -> None:
        self.sections.append(name)
        if self.lines and self.lines[-1] != "":
            self.lines.append("")
        self.lines += [f"## {title}", ""]

    def table(self, head: list[str], rows: list[list[str]], text_cols: int = 1) -> None:
        """A Markdown table; the first ``text_cols`` columns left-aligned, numbers right-aligned."""
        self.lines.append("| " + " | ".join(head) + " |")
        self.lines.append("|" + "|".join("---" if i < text_cols else "--:" for i in range(len(head))) + "|")
        for r in rows:
            self.lines.append("| " + " | ".join(r) + " |")
        self.lines.append("")

    def plot(self, name: str, caption: str, draw: Any, *args: Any) -> None:
        path = self.out / name
        draw(path, *args)
        self.plots.append(path)
        self.lines += [f"![{caption}]({name})", ""]


def md(text: str) -> str:
    return str(text).replace("|", "\\|")


def pct(x: float | None) -> str:
    return "–" if x is None or not is_number(x) else f"{100 * x:.2f}"


def acc(m: dict[str, Any] | None) -> str:
    """``96.21 ± 0.39`` from a metric (``–`` when missing; no CI when it is not a number)."""
    if not m or not is_number(m.get("accuracy")):
        return "–"
    ci = m.get("ci95")
    return pct(m["accuracy"]) + (f" ± {pct(ci)}" if is_number(ci) else "")


def signed_points(d: float) -> str:
    return f"{100 * d:+.2f}"


def way_shot(spec: dict[str, Any] | None) -> str:
    if not spec or "n_way" not in spec or "k_shot" not in spec:
        return ""
    return f"{spec['n_way']}-way {spec['k_shot']}-shot"
