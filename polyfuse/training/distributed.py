"""Data-parallel training on PyTorch's own engine: ``torchrun`` starts the processes, DDP keeps
their weights equal (gloo on CPU, NCCL on GPU), a DistributedSampler seeded from the spec gives
each rank its share of every epoch, and rank 0 alone writes checkpoints and the artifact.

    polyfuse train spec.yaml --out m --nproc 2                              # this machine
    torchrun --nnodes 2 --node-rank R --rdzv-backend c10d --rdzv-endpoint HOST:29500 \\
             --nproc-per-node 8 -m polyfuse train spec.yaml --out m          # a cluster
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Dist:
    """This process's place in the run: rank, world size, and its device's local index."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The run torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK), with its process group joined;
    a plain process is rank 0 of 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    import torch.distributed as tdist

    dist = Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not tdist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(dist.local_rank)
        tdist.init_process_group(backend)
    return dist


def finish(dist: Dist) -> None:
    """Leave the process group (after the last collective call)."""
    if dist.enabled:
        import torch.distributed as tdist

        if tdist.is_initialized():
            tdist.destroy_process_group()


def epoch_order(n: int, epoch: int, seed: int, dist: Dist, rng: np.random.Generator) -> np.ndarray:
    """This rank's rows for one epoch: all of them shuffled (one process), or its share drawn by a
    DistributedSampler seeded from the spec (each rank the same count, so their steps stay in step)."""
    if not dist.enabled:
        return rng.permutation(n)
    from torch.utils.data import DistributedSampler

    sampler = DistributedSampler(range(n), num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=seed)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)


def batch_size(size: int, dist: Dist) -> int:
    """Rows per step on each rank: the spec's batch is the global one, so accuracy matches one process."""
    return max(1, -(-size // dist.world))


def all_sum(values: list[float], dist: Dist) -> list[float]:
    """Sums across ranks (for the epoch's loss and row count)."""
    if not dist.enabled:
        return values
    import torch.distributed as tdist

    t = torch.tensor(values, dtype=torch.float64)
    tdist.all_reduce(t)
    return t.tolist()


def sync_buffers(module: torch.nn.Module, dist: Dist) -> None:
    """Rank 0's buffers (batch-norm statistics) on every rank: each rank's last step updated its own,
    and validation must see one model so that every rank takes the same early-stopping decision."""
    if dist.enabled:
        import torch.distributed as tdist

        for buffer in module.buffers():
            tdist.broadcast(buffer, 0)


def from_main(value: float, dist: Dist) -> float:
    """Rank 0's value of a number on every rank (the validation score the loop decides on)."""
    if not dist.enabled:
        return value
    import torch.distributed as tdist

    t = torch.tensor([value], dtype=torch.float64)
    tdist.broadcast(t, 0)
    return float(t.item())


class StepLoss(torch.nn.Module):
    """One batch's training loss as a module, so that DDP wraps the whole of it (its forward is
    where DDP hooks the gradient all-reduce, alone-loss terms included)."""

    def __init__(self, net: torch.nn.Module, loss_fn: Any):
        super().__init__()
        self.net, self.loss_fn = net, loss_fn

    def forward(self, xb: dict, yb: dict) -> torch.Tensor:
        return self.loss_fn(self.net, xb, yb)


def wrap(module: torch.nn.Module, dist: Dist) -> torch.nn.Module:
    """DDP around ``module`` under torchrun; the module itself otherwise."""
    if not dist.enabled:
        return module
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist.local_rank] if torch.cuda.is_available() else None
    # inputs missing from a batch leave branches unused; frozen parts have no gradients at all
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def launch(argv: list[str], nproc: int) -> int:
    """Run ``polyfuse train ARGV`` under torchrun with ``nproc`` processes on this machine; a rank
    that dies is named, with the command that resumes from the last checkpoint."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "polyfuse", "train", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(max(1, _cpus() // nproc)))}
    done = subprocess.run(cmd, env=env)
    if done.returncode != 0:
        how = (f"signal {signal.Signals(-done.returncode).name}" if done.returncode < 0
               else f"exit code {done.returncode}")
        resume = " ".join(["polyfuse", "train", *[a for a in argv if a != "--resume"], "--resume", "--nproc", str(nproc)])
        print(f"distributed training stopped: a training process failed ({how}; torchrun's log above names the "
              f"rank). Every finished epoch is checkpointed; continue with:\n  {resume}", file=sys.stderr)
    return done.returncode


def _cpus() -> int:
    from polyfuse.threads import usable_cpus

    return usable_cpus()
