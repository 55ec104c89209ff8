"""Trainer tests run torch on one thread: on a shared 2-core machine, two intra-op threads fighting
other processes made the tiny training runs 3-10x slower."""
import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
