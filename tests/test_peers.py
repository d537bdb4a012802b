"""byol.peers: where torchrun's agent store cannot be reached, or never answers, each process says its own error
as it did without the store, at once or after a bounded wait, and nothing else. (The store at work: test_cli's
test_under_torchrun_an_error_is_said_once_and_a_peer_s_failure_as_such, and the torchrun runs of test_distributed.)"""

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from torch.distributed import TCPStore

from byol import peers

SAY = "from byol import error_lines, peers; peers._TIMEOUT_S = 1; error_lines.say_error('a sentence', everywhere=True)"


def _say_under_torchrun(port: int) -> tuple[str, float]:
    env = {**os.environ, "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": "2", "RANK": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONWARNINGS": "ignore"}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", SAY], cwd=Path(__file__).resolve().parents[1], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stderr, time.monotonic() - start


def test_a_store_that_is_not_there_or_never_answers_leaves_the_error_its_own_sentence():
    """A store that took the connection and never answered (its handshake has no timeout) hung the process for
    good before it said its error; where none listened, torch's tries printed their C++ stacks above it."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        with socket.socket() as gone:
            gone.bind(("127.0.0.1", 0))
            closed = gone.getsockname()[1]  # (nothing listens there once closed)
        for port in (closed, silent.getsockname()[1]):
            err, seconds = _say_under_torchrun(port)
            assert err == "byol: error (rank 1): a sentence\n" and seconds < 30, (port, err[-2000:], seconds)


def test_on_several_nodes_with_restarts_a_failure_of_an_earlier_start_is_not_read_as_of_this_one(monkeypatch):
    """Two torchrun agents (--nnodes=2, --max_restarts=1): where rank 1 failed at the first start, the agent whose
    process had not failed started its process again with TORCHELASTIC_RESTART_COUNT still 0, which read rank 1's
    failure as of this start (rank 0 would say it was stopped by it, for a user's SIGTERM or its own bug)."""
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    for name, value in (("TORCHELASTIC_USE_AGENT_STORE", "True"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"),
                        ("MASTER_PORT", str(store.port)), ("TORCHELASTIC_RUN_ID", "test"),
                        ("TORCHELASTIC_RESTART_COUNT", "0"), ("TORCHELASTIC_MAX_RESTARTS", "1")):
        monkeypatch.setenv(name, value)
    store.set("byol/test/0/failed", "1")  # (rank 1, at the first start)
    for local_world, max_restarts, read in (("1", "1", None), ("2", "1", 1), ("1", "0", 1)):
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_world)  # 1: one process a node, on two nodes
        monkeypatch.setenv("TORCHELASTIC_MAX_RESTARTS", max_restarts)
        monkeypatch.setattr(peers, "_store", None)
        assert peers.failed_before(0) == read, (local_world, max_restarts)


def test_a_store_that_cannot_be_reached_is_tried_once_per_process(monkeypatch):
    """A process that fails in a collective asks the store who failed first, then records its own failure: where
    the store never answers, a second try waited out its timeout again (a mutation audit: not remembering the
    failed try survived every test)."""
    tries = []

    def unreachable():
        tries.append(1)
        raise ConnectionRefusedError("no store here")
    for name, value in (("TORCHELASTIC_USE_AGENT_STORE", "True"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(peers, "_store", None)
    monkeypatch.setattr(peers, "_connect", unreachable)
    assert peers.failed_before(0) is None and peers.failed("a sentence", 0) is None
    assert tries == [1]


def test_an_error_only_one_process_meets_is_said_by_it_though_another_said_its_own(monkeypatch):
    """Each sentence is said once: rank 0's error does not silence rank 1's other one (a mutation audit: one
    count for every sentence survived every test)."""
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10))
    for name, value in (("TORCHELASTIC_USE_AGENT_STORE", "True"), ("WORLD_SIZE", "2"), ("LOCAL_WORLD_SIZE", "2"),
                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(store.port))):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(peers, "_store", None)
    assert peers.failed("a wrong data.root", 0) is True
    assert peers.failed("a wrong data.root", 1) is False  # said by rank 0 already
    assert peers.failed("rank 1's own error", 1) is True
