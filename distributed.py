"""Sharing work between processes under ``torchrun`` / ``accelerate launch`` (one process otherwise).

``WORLD_SIZE`` > 1 in the environment starts (once) the default process group from the launcher's environment
(``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; gloo on the CPU, NCCL when CUDA is there); ``accelerate`` finds it
already started when training begins. Work is split by :func:`shard` (process ``r`` of ``w`` takes items
``r, r + w, …``) and put back together by :func:`gather` (every process gets every process's items); process 0
writes the outputs (:func:`is_main`). With one process every function is a no-op, so callers need no branches.
"""
from __future__ import annotations

import os
from typing import Sequence, TypeVar

T = TypeVar("T")


def world_size() -> int:
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def _group():
    """The default process group, started on first use."""
    import torch
    import torch.distributed as dist
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and os.environ.get("REWARDLOOP_DEVICE", "") != "cpu" else "gloo"
        if backend == "nccl":  # one GPU per process
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
        import atexit
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    return dist


def rank() -> int:
    return _group().get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    return rank() == 0


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items`` (every ``world_size()``-th item, starting at ``rank()``)."""
    w = world_size()
    return list(items) if w == 1 else list(items)[rank()::w]


def gather(mine: dict) -> dict:
    """Merge every process's ``{key: value}`` (keys distinct between processes); all processes get the union."""
    if world_size() == 1:
        return dict(mine)
    dist = _group()
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, dict(mine))
    out: dict = {}
    for p in parts:
        out.update(p)
    return out


def barrier() -> None:
    if world_size() > 1:
        _group().barrier()
