"""The units a recording file may use, and their factors to the package's mV and nA."""

from __future__ import annotations

from bayesneuron.errors import RecordingError

# factor that takes a value in the file's unit to mV (voltage) or nA (current)
VOLTAGE_TO_MV = {
    "mv": 1.0,
    "millivolt": 1.0,
    "millivolts": 1.0,
    "v": 1e3,
    "volt": 1e3,
    "volts": 1e3,
}
CURRENT_TO_NA = {
    "pa": 1e-3,
    "picoampere": 1e-3,
    "picoamperes": 1e-3,
    "na": 1.0,
    "nanoampere": 1.0,
    "nanoamperes": 1.0,
    "a": 1e9,
    "ampere": 1e9,
    "amperes": 1e9,
}

_KNOWN = {
    "voltage": ("mV", "V", "volts", VOLTAGE_TO_MV),
    "current": ("pA", "nA", "A", CURRENT_TO_NA),
}


def unit_factor(unit, quantity: str, where: str) -> float:
    """Factor from ``unit`` to mV (``quantity="voltage"``) or nA (``"current"``).

    Raises:
        RecordingError: the unit is not one of the quantity's (mV/V; pA/nA/A), e.g. a
            voltage in amperes, which is what a voltage-clamp recording looks like.
    """
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    text = str(unit).strip().strip("\x00").strip()
    *names, table = _KNOWN[quantity]
    if text.lower() in table:
        return table[text.lower()]
    other = "current" if quantity == "voltage" else "voltage"
    hint = ""
    if text.lower() in _KNOWN[other][-1]:
        hint = (
            f" ({text!r} is a {other} unit: this looks like a voltage-clamp recording; "
            "bayesneuron reads current clamp only)"
        )
    elif not text:
        hint = " (no unit recorded)"
    raise RecordingError(
        f"{where}: {quantity} in unit {text!r}; expected one of {', '.join(names)}{hint}"
    )
