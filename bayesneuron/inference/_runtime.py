"""What the inference functions need from the process without changing it: local seeding,
a private Pyro parameter store, progress bars.

A fit may use the global random number generators (Pyro's samplers and guides draw from
torch's) and Pyro's global parameter store, but the caller must find both as they were:
:func:`seeded` saves the torch (CPU, and the model's CUDA device), numpy and ``random`` states,
seeds them, and restores them on exit; :func:`private_param_store` runs its body on an empty
parameter store and puts the caller's back afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pyro
import torch

__all__ = ["progress_bar", "private_param_store", "seeded"]


@contextmanager
def seeded(seed: int, device: torch.device | str | None = None) -> Iterator[None]:
    """Seed torch's CPU generator (and ``device``'s, when it is a CUDA device), numpy's and
    Python's ``random`` with ``seed`` as ``pyro.set_rng_seed`` does, run the body, and restore
    every one of those states afterwards (also on an exception). Other CUDA devices are not
    touched (``torch.manual_seed`` would seed them all)."""
    seed = int(seed)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    cuda = []
    if dev.type == "cuda":
        cuda = [dev.index if dev.index is not None else torch.cuda.current_device()]
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=cuda):
            torch.default_generator.manual_seed(seed)
            for d in cuda:
                with torch.cuda.device(d):
                    torch.cuda.manual_seed(seed)
            np.random.seed(seed % 2**32)
            random.seed(seed)
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def private_param_store() -> Iterator[dict]:
    """Run the body on an empty Pyro parameter store; the caller's store (its entries and the
    very tensors) is back in place afterwards. Yields the private store's state, which holds
    the body's parameters once the block has exited."""
    with pyro.get_param_store().scope() as state:
        yield state


def progress_bar(total: int, enabled: bool, desc: str, initial: int = 0):
    """A ``tqdm`` bar (closed by the caller), or a do-nothing stand-in when not ``enabled``."""
    if not enabled:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, leave=False)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kw) -> None:
        pass

    def close(self) -> None:
        pass
