"""Errors the harness raises for bad input.

Every user-facing error says what is wrong and what to do about it; the CLI prints
the message as one paragraph and exits with status 2, without a traceback.
"""

from __future__ import annotations


class MrbenchError(Exception):
    """A problem with the user's input or environment, with a fix.

    :param message: what is wrong (and where).
    :param hint: what to do about it.
    """

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class UnknownComponentError(MrbenchError, KeyError):
    """An id that no registered component has; the message lists the known ids."""

    def __init__(self, kind: str, wanted: str, known: list[str]) -> None:
        import difflib

        close = difflib.get_close_matches(wanted, known, n=1)
        guess = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"Unknown {kind} {wanted!r}.{guess}",
            f"Known {kind}s: {', '.join(sorted(known)) or '(none)'}. "
            f"Run `mrbench plugins` to see what is installed.",
        )

    # KeyError.__str__ would quote the message; keep ours.
    __str__ = MrbenchError.__str__


class OptionsError(MrbenchError, ValueError):
    """Options that a component's strict ``Options`` model rejects."""


class DataError(MrbenchError):
    """A dataset archive is missing, truncated or corrupt."""


class PluginError(MrbenchError):
    """A plugin failed to load or registered something invalid."""
