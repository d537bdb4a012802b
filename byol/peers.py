"""What the processes of one torchrun run tell each other of their failures, through the store that
torchrun's agent keeps for them (its TCPStore, up from before the first process starts to after the
last ends, and reachable where no process group is up yet).

An error every process meets alike (a wrong ``--data.root``) is said once, by the first process to
say it; one only some processes meet, by each of them. When a process fails, torchrun stops the others
with a SIGTERM, or a collective they wait in fails ("Connection closed by peer"): rank 0 then says
that another process failed, rather than that it was terminated, or a traceback of the collective.
Torch-free until a process under torchrun has something to say.
"""

import hashlib
import os
from typing import Optional

_TIMEOUT_S = 5  # to reach the agent's store, which is up while the agent stops the processes
_store = None  # the client, once made; False where none can be reached


def _under_torchrun() -> bool:
    return os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("WORLD_SIZE", "1") != "1"


def _agent_store():
    """A client of the agent's store (None without torchrun, or where it cannot be reached)."""
    global _store
    if _store is None:
        made = False
        if _under_torchrun():
            try:
                from datetime import timedelta
                from torch.distributed import TCPStore
                made = TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                                timeout=timedelta(seconds=_TIMEOUT_S))
            except Exception:  # (an agent gone, a torch without TCPStore): each process says its own
                pass
        _store = made  # (not where a signal cut the making short: the next call tries again)
    return _store or None


def _key(name: str) -> str:
    """``name`` for this start of the run: an agent that restarts the processes keeps its store."""
    run, start = os.environ.get("TORCHELASTIC_RUN_ID", ""), os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"byol/{run}/{start}/{name}"


def failed(sentence: str, rank: int) -> Optional[bool]:
    """Record that this process failed, saying ``sentence``; whether no other process of the run said
    that sentence before it (so that this one says it), or None without torchrun's store."""
    store = _agent_store()
    if store is None:
        return None
    try:
        store.compare_set(_key("failed"), "", str(rank))  # the first process to fail stays recorded
        said = _key("said/" + hashlib.sha256(sentence.encode()).hexdigest())
        return store.add(said, 1) == 1
    except Exception:
        return None


def failed_before(rank: int) -> Optional[int]:
    """The rank of another process of the run that failed before this one asked, or None."""
    store = _agent_store()
    if store is None:
        return None
    try:
        if not store.check([_key("failed")]):
            return None
        first = int(store.get(_key("failed")).decode())
    except Exception:
        return None
    return first if first != rank else None


def stopped_line(first: int) -> str:
    """What rank 0 says where it was stopped because the process of rank ``first`` failed."""
    return f"byol: stopped: rank {first} of this torchrun run failed (its error is said above)"
