"""The torch backend sets torch's process-wide intra-op thread count for its life only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.backends import BackendSpec, create_backend
from pipeline.errors import CheckpointError
from pipeline.models import create_model
from pipeline.processing.base import to_network_input


def test_threads_are_set_for_the_backends_life_and_put_back_on_close(tmp_path):
    path = tmp_path / "tiny.pth"
    torch.save(create_model("milesial", base_channels=4).state_dict(), path)
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    backend = create_backend(BackendSpec(name="torch", model="milesial", checkpoint=str(path),
                                         threads=wanted),
                             to_network_input)
    try:
        assert torch.get_num_threads() == wanted
        assert backend.run(np.zeros((1, 16, 16, 3), np.uint8)).shape == (1, 2, 16, 16)
    finally:
        backend.close()
    assert torch.get_num_threads() == before
    backend.close()  # idempotent, and does not touch the count again
    assert torch.get_num_threads() == before


def test_a_backend_that_fails_to_build_leaves_threads_alone(tmp_path):
    before = torch.get_num_threads()
    spec = BackendSpec(name="torch", model="milesial", checkpoint=str(tmp_path / "missing.pth"),
                       threads=before + 1)
    with pytest.raises(CheckpointError, match="does not exist"):
        create_backend(spec, to_network_input)
    assert torch.get_num_threads() == before
