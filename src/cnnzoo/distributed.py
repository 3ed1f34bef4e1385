"""The one place that knows about torch.distributed: process-group setup and teardown, the rank-0 rule, and
the collectives the trainer needs (sums for exact evaluation, one flag vector per step for stop/NaN decisions).

Run any training command under ``torchrun --nproc_per_node=N``: the environment variables torchrun sets select
the process group (gloo on CPU, nccl on CUDA); without them everything here is a no-op for a single process.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

__all__ = ["DistEnv", "setup", "teardown", "barrier", "all_reduce_sum", "print0", "wrap", "restart_count"]


@dataclass(frozen=True)
class DistEnv:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device: str | None = None) -> DistEnv:
    """Join the process group torchrun describes (if any) and pick the device: CUDA when present."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    kind = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if kind.startswith("cuda") and ":" not in kind:
        kind = f"cuda:{local_rank}" if world > 1 else "cuda"
    dev = torch.device(kind)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        _init_group("nccl" if dev.type == "cuda" else "gloo", rank, world)
    return DistEnv(rank, world, local_rank, dev)


def _init_group(backend: str, rank: int, world: int) -> None:
    # Generous timeout: on a loaded machine a peer may be slow to reach a collective; never flake for it.
    timeout = timedelta(minutes=10)
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # torchrun's agent store outlives a worker restart; the restarted group could read the dead group's
        # addresses from it ("Connection refused", pytorch/pytorch#135712). One key prefix per attempt isolates them.
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world, is_master=False,
                              timeout=timeout)
        store = dist.PrefixStore(f"cnnzoo/attempt{restart_count()}", store)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=timeout)
    else:
        dist.init_process_group(backend, timeout=timeout)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def restart_count() -> int:
    """How many times torchrun has restarted this worker group (0 on a first start or outside torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum ``tensor`` over all processes in place (identity for one process)."""
    if env.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def print0(*args, env: DistEnv, file=None, **kwargs) -> None:
    """print on rank 0 only."""
    if env.is_main:
        print(*args, file=file or sys.stdout, **kwargs, flush=True)


def wrap(model: torch.nn.Module, env: DistEnv, sync_bn: bool = False) -> torch.nn.Module:
    """DistributedDataParallel around ``model`` when running distributed (optionally with synchronised BN)."""
    if not env.distributed:
        return model
    if sync_bn:
        if env.device.type != "cuda":
            print0("warning: --sync-bn needs CUDA; batch norm statistics stay per process", env=env, file=sys.stderr)
        else:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [env.device.index] if env.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
