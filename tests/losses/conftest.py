"""Fixtures shared by the loss tests."""

import pytest
import torch.distributed as dist


@pytest.fixture
def gloo_world_of_one(tmp_path):
    """A one-process gloo group, so DistributedLossWrapper runs its distributed branch."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}",
                            rank=0, world_size=1)
    yield
    dist.destroy_process_group()
