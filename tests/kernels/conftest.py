import numpy as np
import pytest

from pybitnet import kernels


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def restore_threads():
    before = kernels.threads()
    yield
    kernels.set_threads(before)
