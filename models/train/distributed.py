"""Distributed helpers: process-group setup from torchrun's environment, and gathers.

One process (CPU or one GPU) and ``torchrun --nproc_per_node N [--nnodes M ...]`` run the same code:
:func:`init_distributed` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` and calls
``init_process_group`` only when ``WORLD_SIZE > 1`` (``nccl`` on GPU, ``gloo`` on CPU).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclass
class DistInfo:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: Optional[str] = None, backend: Optional[str] = None) -> DistInfo:
    """Set up the process group when launched by torchrun (``WORLD_SIZE > 1``); return :class:`DistInfo`.

    ``device``: "cpu", "cuda" or None (cuda when available). Each process uses ``cuda:LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    dev = torch.device(f"cuda:{local_rank}") if want_cuda else torch.device("cpu")
    if want_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if want_cuda else "gloo")
        # rank 0 evaluates alone at the end of an epoch while the others wait in a barrier: allow it time
        minutes = int(os.environ.get("CCMB_DIST_TIMEOUT_MIN", "120"))
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=minutes))
        logger.info("process group %s: rank %d/%d (local %d) on %s", backend, rank, world, local_rank, dev)
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def cleanup_distributed() -> None:
    """Destroy the process group. Drop every ``DistributedDataParallel`` wrapper first: a DDP reducer freed
    after its gloo group can deadlock (the group's destructor joins a thread that waits for the GIL)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def gather_with_local_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` [B, ...] from every rank into [W*B, ...]; this rank's slice keeps its gradient.

    The other ranks' slices are constants here; their gradients are computed on their own ranks, where
    the same global loss is evaluated. With every rank computing the full global loss, DDP's gradient
    *average* then equals ``1/W`` of the single-process gradient: callers fix that with
    :func:`scale_grad`. All ranks must pass the same batch size.
    """
    w = world_size()
    if w == 1:
        return x
    parts: List[torch.Tensor] = [torch.empty_like(x) for _ in range(w)]
    dist.all_gather(parts, x.detach().contiguous())
    parts[rank()] = x
    return torch.cat(parts, dim=0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather ``x`` [B, ...] into [W*B, ...] with the gradient flowing back to every rank's slice
    (``torch.distributed.nn.all_gather``: the backward sums, on each rank, the gradients every rank's loss
    sends to its slice). Use it when each rank computes only its *own* part of a global loss (FGR's
    negatives from other ranks): after DDP averages, the gradient is that of the mean of the ranks' losses."""
    if world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()), dim=0)


def gather_nograd(x: torch.Tensor) -> torch.Tensor:
    """All-gather without gradient (teacher features, ids, hidden states for negative sampling)."""
    w = world_size()
    if w == 1:
        return x.detach()
    parts = [torch.empty_like(x) for _ in range(w)]
    dist.all_gather(parts, x.detach().contiguous())
    return torch.cat(parts, dim=0)


def scale_grad(loss: torch.Tensor, factor: float) -> torch.Tensor:
    """Same value as ``loss``, gradient multiplied by ``factor``."""
    if factor == 1:
        return loss
    return loss * factor - loss.detach() * (factor - 1)


def all_reduce_mean(value: float, device: torch.device) -> float:
    """Mean of a scalar over ranks (for logging)."""
    if world_size() == 1:
        return float(value)
    t = torch.tensor([float(value)], device=device, dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()
