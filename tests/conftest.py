"""Test hygiene: seeded RNGs, and markers that skip cleanly where a dependency is absent."""

import importlib.util
import random

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    try:
        import pyro

        pyro.clear_param_store()
    except ImportError:
        pass
    yield


def pytest_collection_modifyitems(config, items):
    no_neuron = importlib.util.find_spec("neuron") is None
    no_gpu = not torch.cuda.is_available()
    for item in items:
        if no_neuron and "neuron" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="NEURON is not installed (pip install neuron)"))
        if no_gpu and "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="no CUDA device"))
