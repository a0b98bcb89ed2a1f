"""SIGTERM and SIGINT (Ctrl-C) during a command: the command stops where it is, its cleanup
runs, and one line says what was saved in ``--out`` and how to continue."""

from __future__ import annotations

import shlex
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

__all__ = ["Interrupted", "interrupt_message", "raise_on_signals", "saved_files"]

SIGNALS = (signal.SIGTERM, signal.SIGINT)
RESUMABLE = {"study": "--resume", "compare": "--resume"}  # command → its option to continue


class Interrupted(BaseException):  # like KeyboardInterrupt: not an error to catch
    """Raised in the main thread by :func:`raise_on_signals` when a signal arrives."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


@contextmanager
def raise_on_signals():
    """Within the block, SIGTERM and SIGINT raise :class:`Interrupted` (so ``finally`` clauses
    and context managers clean up); a second signal during that cleanup is ignored. Outside the
    main thread (where handlers cannot be set) nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        for s in SIGNALS:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    old = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def saved_files(out: Path, limit: int = 8) -> str | None:
    """What ``out`` holds, in a few words: its tables and files, checkpoints and InferenceData
    files; ``None`` if nothing."""
    if not out.is_dir():
        return None
    files = sorted(
        q.name
        for q in out.iterdir()
        if q.is_file() and not q.name.startswith(".") and not q.name.endswith(".tmp")
    )
    files += sorted(f"checkpoints/{q.name}" for q in (out / "checkpoints").glob("*.pt"))
    ncs = list((out / "idata").glob("*/*.nc"))
    if ncs:
        files.append(f"idata/ ({len(ncs)} design{'s' * (len(ncs) != 1)})")
    if not files:
        return None
    more = f" and {len(files) - limit} more" if len(files) > limit else ""
    return ", ".join(files[:limit]) + more


def interrupt_message(args, argv: list[str], signum: int) -> str:
    """One line: which signal, what is in ``--out``, and the command that continues."""
    name = signal.Signals(signum).name
    out = getattr(args, "out", None)
    command = ["bayesneuron", *argv]
    option = RESUMABLE.get(args.command)
    saved = saved_files(Path(out)) if out and args.command != "report" else None
    if option is not None:
        again = command if option in argv else [*command, option]
        what = f"saved in {out}: {saved}" if saved else f"nothing saved in {out} yet"
        return f"bayesneuron: interrupted by {name}; {what}; continue with: {shlex.join(again)}"
    return (
        f"bayesneuron: interrupted by {name}; nothing was saved ({args.command} writes its "
        f"results when it finishes); run it again: {shlex.join(command)}"
    )
