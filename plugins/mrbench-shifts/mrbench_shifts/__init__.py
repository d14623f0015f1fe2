"""mrbench's first-party distribution shifts.

Omniglot-C image corruptions (noise, blur, digital, weather, geometric, occlusion)
with five calibrated severities each, support label noise and support class
imbalance, and the support-query shift (support and queries under two different
corruptions). The corruption tables and the statistic each is monotone in are listed
in this distribution's README.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.hookspecs import hookimpl

if TYPE_CHECKING:
    from bench.components import Shift
    from bench.hookspecs import Register

__version__ = "0.1.0"


def all_shifts() -> tuple[type[Shift], ...]:
    """Every shift class this distribution provides, in registration order."""
    # Imported here, not at module level: loading the plugin stays cheap.
    from mrbench_shifts.corruptions import CORRUPTIONS
    from mrbench_shifts.geometry import GEOMETRIC
    from mrbench_shifts.labels import SUPPORT_SHIFTS
    from mrbench_shifts.occlusions import OCCLUSIONS
    from mrbench_shifts.support_query import SUPPORT_QUERY_SHIFTS

    return (*CORRUPTIONS, *GEOMETRIC, *OCCLUSIONS, *SUPPORT_SHIFTS, *SUPPORT_QUERY_SHIFTS)


@hookimpl
def mrbench_register_shifts(register: Register) -> None:
    for cls in all_shifts():
        register(cls)
