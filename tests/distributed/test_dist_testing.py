"""The multi-process test helper survives the port race it guards against."""

from __future__ import annotations

import socket

import pytest
import torch.distributed as dist
import torch.multiprocessing as mp
from dist_testing import free_port, init_gloo, spawn


def _join(rank: int, world: int, out: str) -> None:
    init_gloo()
    with open(f"{out}.{rank}", "w") as f:
        f.write(str(dist.get_world_size()))
    dist.destroy_process_group()


def _held_port() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_spawn_retries_when_the_rendezvous_port_was_taken(tmp_path):
    out = tmp_path / "joined"
    with _held_port() as held:
        spawn(_join, 2, str(out), ports=[held.getsockname()[1], free_port()])
    assert [(tmp_path / f"joined.{r}").read_text() for r in range(2)] == ["2", "2"]


def test_spawn_gives_up_when_every_port_was_taken(tmp_path):
    with _held_port() as held, pytest.raises(mp.ProcessRaisedException, match="(?i)address"):
        spawn(_join, 2, str(tmp_path / "joined"), ports=[held.getsockname()[1]])
