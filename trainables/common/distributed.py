"""Data parallelism for a trial that runs as N Ray Train workers (``--workers-per-trial N``).

The batch semantics are the same for any N: ``batch_size`` is the batch of one optimizer step, across all
workers. Every worker draws the same global batch, noise and timesteps from the same seeded generator, keeps
its own ``batch_size / N`` rows (:func:`shard`), and the gradients are averaged across workers before the
optimizer steps (:func:`average_gradients`). With equal shards the average of the per-worker mean losses is
the mean loss of the whole batch, so N workers take the same steps as one worker, up to the order of float
additions. Only rank 0 evaluates, writes MLflow records, checkpoints and files.

Outside Ray Train (one worker, a direct call) every function here is the identity.
"""

from __future__ import annotations

import torch


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _device() -> str:
    """Where collectives run: nccl needs CUDA tensors, gloo takes CPU ones."""
    return "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def rank() -> int:
    return torch.distributed.get_rank() if _initialized() else 0


def is_main() -> bool:
    """True on the worker that writes records, checkpoints and files (rank 0), and outside Ray Train."""
    return rank() == 0


def shard(tensor: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """This worker's rows of a global batch. ``parts`` > 1 for a batch made of equal blocks that must each be
    split (DreamBooth: instance rows then class rows), so every worker keeps the block structure."""
    size = world_size()
    if size == 1:
        return tensor
    blocks = tensor.chunk(parts, dim=0)
    rows = blocks[0].shape[0]
    if rows % size or any(b.shape[0] != rows for b in blocks):
        raise ValueError(f"a batch of {tensor.shape[0]} rows ({parts} blocks) cannot be split over {size} workers")
    step, start = rows // size, rank() * (rows // size)
    return torch.cat([b[start : start + step] for b in blocks]) if parts > 1 else tensor[start : start + step]


def average_gradients(params: list[torch.nn.Parameter]) -> None:
    """Replace every gradient by its mean over the workers: one all-reduce of all gradients at once."""
    size = world_size()
    if size == 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    torch.distributed.all_reduce(flat)
    flat /= size
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset : offset + n].view_as(g))
        offset += n


def mean_over_workers(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Each value averaged over the workers (the logged loss of the whole batch, not of rank 0's rows)."""
    size = world_size()
    if size == 1 or not values:
        return values
    keys = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[k]).detach().float().reshape(()).to(_device()) for k in keys])
    torch.distributed.all_reduce(stacked)
    return {k: v / size for k, v in zip(keys, stacked, strict=True)}


def any_worker(flag: bool) -> bool:
    """True when ``flag`` is true on some worker (a NaN loss on any shard stops every worker at once)."""
    if world_size() == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=_device())
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item())


def broadcast_parameters(params: list[torch.Tensor]) -> None:
    """Rank 0's values of the trained tensors on every worker (identical seeds make them equal already;
    this makes it certain)."""
    if world_size() == 1:
        return
    for p in params:
        with torch.no_grad():
            torch.distributed.broadcast(p.data, src=0)
