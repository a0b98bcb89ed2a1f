"""Sweep selection, checked against the sweeps a file or recording has."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bayesneuron.errors import RecordingError


def describe(available: Sequence[int]) -> str:
    """``"16 sweeps (0–15)"`` or ``"3 sweeps (2, 5, 9)"``."""
    a = sorted(available)
    n = f"{len(a)} sweep{'s' if len(a) != 1 else ''}"
    if not a:
        return "no sweeps"
    if a == list(range(a[0], a[-1] + 1)):
        return f"{n} ({a[0]}–{a[-1]})" if len(a) > 1 else f"{n} ({a[0]})"
    shown = ", ".join(map(str, a[:10])) + (", …" if len(a) > 10 else "")
    return f"{n} ({shown})"


def select_sweeps(available: Sequence[int], sweeps, where: str) -> list[int]:
    """The sweep numbers asked for, in the order given; ``None`` means all, sorted.

    Args:
        available: the sweep numbers present.
        sweeps: ``None``, one sweep number, or a sequence of them.
        where: what holds the sweeps (a file name), for messages.

    Raises:
        RecordingError: an empty selection, a repeated or non-integer sweep, or one not present.
    """
    if sweeps is None:
        return sorted(available)
    if isinstance(sweeps, (int, np.integer)) and not isinstance(sweeps, bool):
        sweeps = [sweeps]
    try:
        asked = list(sweeps)
    except TypeError:
        raise RecordingError(
            f"sweeps = {sweeps!r} must be None (all), a sweep number or a list of them"
        ) from None
    if not asked:
        raise RecordingError(
            f"empty sweep selection: {where} has {describe(available)}; name at least one, "
            "or pass sweeps=None for all"
        )
    for s in asked:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool):
            raise RecordingError(f"sweep {s!r} must be an integer sweep number")
    dup = sorted({int(s) for s in asked if asked.count(s) > 1})
    if dup:
        raise RecordingError(f"sweeps {dup} are selected twice; name each sweep once")
    present = set(available)
    missing = [int(s) for s in asked if s not in present]
    if missing:
        raise RecordingError(
            f"sweep {missing[0]} is out of range: {where} has {describe(available)}"
        )
    return [int(s) for s in asked]
