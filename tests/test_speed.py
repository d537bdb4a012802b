"""benchmarks.speed's rounds: what each system is asked to run before its clock starts (no timing here)."""

import importlib.util
import types

import pytest
import torch

from benchmarks import speed, systems


class _Remote:
    """A stand-in for a system's process that records the (steps, settle) it is asked for."""

    def __init__(self, name: str, ahead: int):
        self.name, self.ahead, self.failed, self.requests = name, ahead, None, []

    def seconds(self, steps: int, settle: int = 0, limit=None) -> float:
        self.requests.append((steps, settle))
        return 1.0


def test_a_round_settles_a_system_past_the_batches_its_input_pipeline_prepared_ahead():
    """lightly's DataLoader workers fill their prefetch buffer while the other systems run; a round timed on
    that buffer (CUDA's defaults: no settling step, 20 timed) took batches augmented outside its clock."""
    ours, lightly = _Remote("byol", 0), _Remote("lightly", 16)
    args = types.SimpleNamespace(warmup=1, first_step_limit=None, repeats=2, steps=20, settle=0, batch=4)
    rates = speed.measure([ours, lightly], args)
    assert ours.requests == [(1, 0), (20, 0), (20, 0)]  # warm-up, then rounds as asked
    assert lightly.requests == [(1, 0), (20, 16), (20, 16)]
    assert rates == {"byol": [80.0, 80.0], "lightly": [80.0, 80.0]}  # steps x batch / seconds
    args.settle = 20
    lightly.requests.clear()
    speed.measure([lightly], args)
    assert lightly.requests[1:] == [(20, 20), (20, 20)]  # more settling asked for: as asked


@pytest.mark.skipif(importlib.util.find_spec("lightly") is None, reason="lightly not installed (setup_peers.sh)")
def test_lightly_says_how_many_batches_its_workers_prepare_ahead():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    with_workers = systems.Lightly(images, 4, torch.device("cpu"), None, 2, width=8, head_width=64)
    assert with_workers.ahead == with_workers.loader.prefetch_factor * 2 == 4
    assert "after 4 untimed steps (its workers prefetch 4 batches)" in with_workers.notes  # (3 buffers on CUDA)
    assert systems.Lightly(images, 4, torch.device("cpu"), None, 0, width=8, head_width=64).ahead == 0
