"""Helpers of the multi-process tests: spawn `world_size` CPU processes joined by gloo."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, fn: Callable[..., Any], args: tuple) -> None:
    # The variables torchrun would set, so that code under test joins the group as in real use.
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)  # two processes on a two-core CI machine
    fn(rank, world_size, *args)


# How the rendezvous reports a port that another process took between `free_port` and the bind.
PORT_TAKEN = ("EADDRINUSE", "address already in use")


def spawn(
    fn: Callable[..., Any], world_size: int, *args: Any, ports: Iterable[int] | None = None
) -> None:
    """Run `fn(rank, world_size, *args)` in `world_size` fresh processes; an exception in any of
    them fails the caller. `fn` must be importable (a module-level function) and safe to run
    again from the start: a port found free can be taken before rank 0 binds it, so a spawn
    whose rendezvous found its port taken is retried on the next of `ports` (three fresh ones
    by default)."""
    ports = iter(ports) if ports is not None else (free_port() for _ in range(3))
    port = next(ports)
    while True:
        try:
            mp.spawn(_entry, args=(world_size, port, fn, args), nprocs=world_size, join=True)
            return
        except mp.ProcessRaisedException as err:
            message = str(err).lower()
            retry = next(ports, None) if any(s.lower() in message for s in PORT_TAKEN) else None
            if retry is None:
                raise
            port = retry


def init_gloo() -> None:
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
