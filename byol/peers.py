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
import threading
from typing import Callable, Optional, TypeVar

_TIMEOUT_S = 5  # to reach the agent's store, which is up while the agent stops the processes
_store = None  # the client, once made; False where none can be reached
_T = TypeVar("_T")


def _under_torchrun() -> bool:
    """Under torchrun, with its agent's store, where the restart count names this start of the processes alike on
    every node: one node, or no restarts. (On several nodes, an agent whose processes did not fail starts them again
    with its count unchanged, and theirs would read the failure of the start before as of this one.)"""
    env = os.environ.get
    return (env("TORCHELASTIC_USE_AGENT_STORE") == "True" and env("WORLD_SIZE", "1") != "1"
            and (env("LOCAL_WORLD_SIZE") == env("WORLD_SIZE") or env("TORCHELASTIC_MAX_RESTARTS", "0") == "0"))


def _agent_store():
    """A client of the agent's store (None without torchrun, or where it cannot be reached)."""
    global _store
    if _store is None:
        # (an agent gone, a torch without TCPStore, a store that never answers): each process says its own
        made = _in_time(_connect) if _under_torchrun() else None
        _store = made or False  # (not where a signal cut the making short: the next call tries again)
    return _store or None


def _connect():
    import socket
    from datetime import timedelta
    from torch.distributed import TCPStore
    address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    # Refused at once where no store is there: TCPStore would try again for _TIMEOUT_S, twice, logging each
    # failure with its C++ stack on stderr above the error's sentence
    socket.create_connection(address, timeout=_TIMEOUT_S).close()
    return TCPStore(*address, is_master=False, timeout=timedelta(seconds=_TIMEOUT_S))


def _in_time(ask: Callable[[], _T]) -> Optional[_T]:
    """``ask()``'s answer, or None where it raised or took longer than twice _TIMEOUT_S: TCPStore's timeout does not
    bound its handshake, which waits for good on a store that took the connection and never answers."""
    answer = []

    def run() -> None:
        try:
            answer.append(ask())
        except Exception:
            pass
    thread = threading.Thread(target=run, name="byol-peers", daemon=True)  # (left waiting, where it waits for good)
    thread.start()
    thread.join(2 * _TIMEOUT_S)
    return answer[0] if answer else None


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
    said = _key("said/" + hashlib.sha256(sentence.encode()).hexdigest())

    def tell() -> bool:
        store.compare_set(_key("failed"), "", str(rank))  # the first process to fail stays recorded
        return store.add(said, 1) == 1
    return _in_time(tell)


def failed_before(rank: int) -> Optional[int]:
    """The rank of another process of the run that failed before this one asked, or None."""
    store = _agent_store()
    if store is None:
        return None
    first = _in_time(lambda: int(store.get(_key("failed")).decode()) if store.check([_key("failed")]) else None)
    return first if first != rank else None


def stopped_line(first: int) -> str:
    """What rank 0 says where it was stopped because the process of rank ``first`` failed."""
    return f"byol: stopped: rank {first} of this torchrun run failed (its error is said above)"
