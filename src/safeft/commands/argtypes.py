"""argparse ``type=`` checks shared by the commands: numbers in a range, with the flag named by argparse
(``safeft X: error: argument --rank: must be >= 1, got 0``, exit 2)."""

from __future__ import annotations

import argparse
from collections.abc import Callable


def _number(text: str, kind: type) -> float:
    try:
        return kind(text)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def at_least(minimum: float, kind: type = int) -> Callable[[str], float]:
    """A ``type`` accepting numbers >= ``minimum`` (int) or > ``minimum`` (float)."""

    def parse(text: str):
        value = _number(text, kind)
        if (kind is int and value < minimum) or (kind is float and value <= minimum):
            relation = ">=" if kind is int else ">"
            raise argparse.ArgumentTypeError(f"must be {relation} {minimum:g}, got {text}")
        return value

    parse.__name__ = "int" if kind is int else "float"
    return parse


def in_range(low: float, high: float, *, open_ends: bool = False) -> Callable[[str], float]:
    """A ``type`` accepting floats in ``[low, high]`` (or ``(low, high)`` with ``open_ends``)."""

    def parse(text: str) -> float:
        value = _number(text, float)
        inside = low < value < high if open_ends else low <= value <= high
        if not inside:
            span = f"({low:g}, {high:g})" if open_ends else f"[{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be in {span}, got {text}")
        return value

    parse.__name__ = "float"
    return parse
