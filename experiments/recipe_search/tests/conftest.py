"""Fixtures of the recipe-search tests (tests/conftest.py's are not visible from this folder)."""
import pytest
import torch


@pytest.fixture()
def one_thread():
    """One intra-op thread: faster than two contended ones for these tiny models on the 2 shared
    cores, and the float results do not depend on the thread count."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
