"""The data-parallel pieces on a real 2-process gloo group: each rank keeps its rows of a batch (block by
block for DreamBooth's instance + class rows), gradients and logged losses are averaged over the ranks, and a
bad loss on one rank is seen by both."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainables.common import distributed


def _ranks(rank: int, init: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        batch = torch.arange(8)  # rows 0-3 instance, 4-7 class
        plain, blocks = distributed.shard(batch), distributed.shard(batch, parts=2)
        # one parameter whose gradient differs per rank: the average is what one process would compute
        weight = torch.nn.Parameter(torch.zeros(3))
        weight.grad = torch.full((3,), float(rank + 1))
        distributed.average_gradients([weight])
        logged = distributed.mean_over_workers({"train/loss": torch.tensor(float(10 * rank))})
        bad = distributed.any_worker(rank == 1)
        out[rank] = (plain.tolist(), blocks.tolist(), weight.grad.tolist(), float(logged["train/loss"]), bad,
                     distributed.is_main())  # fmt: skip
    finally:
        dist.destroy_process_group()


def test_two_ranks_split_batches_and_average(tmp_path):
    out = mp.Manager().dict()
    mp.spawn(_ranks, args=(f"file://{tmp_path}/rendezvous", out), nprocs=2, join=True)
    assert out[0] == ([0, 1, 2, 3], [0, 1, 4, 5], [1.5, 1.5, 1.5], 5.0, True, True)
    assert out[1] == ([4, 5, 6, 7], [2, 3, 6, 7], [1.5, 1.5, 1.5], 5.0, True, False)


def test_one_process_is_the_identity():
    batch = torch.arange(6)
    assert distributed.world_size() == 1 and distributed.is_main()
    assert distributed.shard(batch, parts=2) is batch
    assert distributed.mean_over_workers({"x": torch.tensor(2.0)}) == {"x": torch.tensor(2.0)}
    assert distributed.any_worker(False) is False
