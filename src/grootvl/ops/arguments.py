"""Checks of scalar arguments shared by the operators, layers and models.

One message format everywhere: the argument's name, what is allowed and the value given
(``channels must be an even int >= 2, got 3``). bool is never accepted as a number.
"""
from __future__ import annotations

import math
import numbers

__all__ = ["is_int", "check_int", "check_real"]


def is_int(value) -> bool:
    """An integer (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, minimum: int = 1, note: str = "") -> int:
    """``value`` if it is an int >= ``minimum``, else a ValueError naming ``name``."""
    if not is_int(value) or value < minimum:
        allowed = "a positive int" if minimum == 1 else f"an int >= {minimum}"
        raise ValueError(f"{name} must be {allowed}{note}, got {value!r}")
    return int(value)


def check_real(name: str, value, low: float = -math.inf, high: float = math.inf, *,
               low_open: bool = False, high_open: bool = False, note: str = "") -> float:
    """``value`` as a float if it is a finite number in the interval, else a ValueError
    naming ``name``, the interval and the value."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (low < value if low_open else low <= value)
          and (value < high if high_open else value <= high))
    if not ok:
        interval = (f"{'(' if low_open or low == -math.inf else '['}{low:g}, "
                    f"{high:g}{')' if high_open or high == math.inf else ']'}")
        raise ValueError(f"{name} must be a finite number in {interval}{note}, got {value!r}")
    return float(value)
