"""Block-parallel NoProp-DT: the T blocks split over processes, epoch by epoch, for ``fit``.

NoProp's blocks never exchange gradients, so ``TrainConfig(block_workers=n)`` gives each of
n processes a contiguous share of the blocks (:func:`block_partition`).  The calling process
is rank 0: it trains the first share and, between epochs, merges every share into the full
model for validation, checkpoints and the final test.  Helper processes (ranks 1..n-1, gloo)
train the other shares.  Every rank runs the same batches and label noise; only the head's
and ``W_embed``'s gradients are all-reduced, so the merged model is the one serial training
gives (equal up to float summation order; dropout masks come from each rank's own generator).

After every epoch each helper sends rank 0 its share, optimiser state and generator states
(``train.EpochRunner.state_dict``), so one checkpoint holds everything a resume needs, and
its share's mean training loss; their sum is the whole model's loss, as serial training
reports it (each share holds its blocks' terms and 1/n of the shared terms).
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from diffpolicy.noprop.dt import NoPropDT
from diffpolicy.noprop.lifeline import end_with_parent


# How long a rank waits for the others at a collective: rank 0 validates and checkpoints
# between epochs while the helpers wait; a rank that died is noticed at the next collective.
TIMEOUT = timedelta(minutes=30)


def block_partition(T: int, world_size: int) -> list[list[int]]:
    """Contiguous groups of the blocks 1..T, as even as possible, one per process."""
    if not 1 <= world_size <= T:
        raise ValueError(f"world_size must be in 1..T={T}, got {world_size}")
    bounds = [round(i * T / world_size) for i in range(world_size + 1)]
    return [list(range(bounds[r] + 1, bounds[r + 1] + 1)) for r in range(world_size)]


def share(model: NoPropDT, world_size: int, rank: int) -> NoPropDT:
    """Rank ``rank``'s blocks of ``model`` (a copy), in the model's block layout."""
    part = model.subset(block_partition(model.T, world_size)[rank])
    part.blocks.set_layout(model.blocks.layout)
    return part


def allreduce_shared(model: NoPropDT) -> None:
    """Sum the shared parameters' gradients over ranks (block gradients stay local)."""
    for p in model.shared_parameters:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


class BlockWorkers:
    """Rank 0 of block-parallel training; the interface of ``train.EpochRunner``.

    ``model`` (also ``evaluated``) is the full NoPropDT, updated in place after every epoch;
    ``runner`` is the class that trains one process's share for an epoch (``train.EpochRunner``).  The helpers
    start at the first ``train_epoch`` (after a resume has loaded its state) and stop
    at ``close``.  Their state in a checkpoint is ``{"block_workers": [rank 0's, ...]}``.
    """

    def __init__(self, model: NoPropDT, cfg, x: torch.Tensor, y: torch.Tensor, runner: type):
        if not isinstance(model, NoPropDT):
            raise ValueError("block_workers > 1 trains NoProp-DT's blocks apart; "
                             f"got {type(model).__name__}")
        if cfg.block_schedule != "all":
            raise ValueError("block-parallel training runs every held block on every batch "
                             f"(block_schedule='all'), got {cfg.block_schedule!r}")
        if torch.device(cfg.device).type != "cpu":
            raise ValueError(f"block_workers > 1 runs on CPU processes (gloo); device is "
                             f"{cfg.device!r}")
        self.model, self.cfg, self.x, self.y, self.runner = model, cfg, x, y, runner
        self.evaluated = model                                  # no weight average (cfg.ema) here
        self.n = cfg.block_workers
        block_partition(model.T, self.n)                       # world size within 1..T
        self.states: list[dict] | None = None                  # per rank, from a checkpoint
        self.procs: list | None = None
        self.rank0 = None                                       # a runner for rank 0's share
        self._tmp: tempfile.TemporaryDirectory | None = None

    def _start(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="noprop-blocks-")
        init = f"file://{Path(self._tmp.name) / 'rendezvous'}"
        threads = torch.get_num_threads()
        ctx = mp.get_context("spawn")
        self.procs = [ctx.Process(target=_helper, daemon=True,
                                  args=(rank, self.n, init, self.model, self.cfg, self.x, self.y,
                                        self.states[rank] if self.states else None, threads,
                                        self.runner))
                      for rank in range(1, self.n)]
        for p in self.procs:
            p.start()
        dist.init_process_group("gloo", init_method=init, rank=0, world_size=self.n,
                                timeout=TIMEOUT)
        self.rank0 = self.runner(share(self.model, self.n, 0), self.cfg, self.x, self.y,
                                 shared_weight=1 / self.n, sync=allreduce_shared)
        if self.states:
            self.rank0.load_state_dict(self.states[0])

    def train_epoch(self, epoch: int, desc: str) -> dict:
        """Every rank trains its share for an epoch; ``model`` then holds the merged result.
        ``loss`` is the whole model's (the ranks' losses summed), ``seconds`` counts the whole
        call (starting the helpers, gathering, merging), ``merge_seconds`` the gathering and
        merging after the last step; with ``grad_clip``, ``clipped`` is the mean of the ranks'
        clipped fractions (each rank counts its blocks and the shared group)."""
        t0 = time.perf_counter()
        if self.procs is None:
            self._start()
        dist.broadcast_object_list([epoch], src=0)
        stats = self.rank0.train_epoch(epoch, desc)
        t_merge = time.perf_counter()
        gathered: list = [None] * self.n
        dist.gather_object(_epoch_report(self.rank0, stats), gathered, dst=0)
        parts = []
        for rank, got in enumerate(gathered):
            part = share(self.model, self.n, rank)
            part.load_state_dict(got["part"])
            parts.append(part)
        merged = NoPropDT.merge(parts)
        self.model.load_state_dict(merged.state_dict())
        self.states = [got["train"] for got in gathered]
        end = time.perf_counter()
        clip = ({"clipped": sum(got["clipped"] for got in gathered) / self.n}
                if "clipped" in stats else {})
        return dict(stats, loss=sum(got["loss"] for got in gathered), seconds=end - t0,
                    merge_seconds=end - t_merge, **clip)

    def state_dict(self) -> dict:
        if self.states is None:
            raise RuntimeError("no epoch trained yet: nothing to checkpoint")
        return {"block_workers": self.states}

    def load_state_dict(self, state: dict) -> None:
        got = state.get("block_workers")
        if got is None or len(got) != self.n:
            trained = "in one process" if got is None else f"with block_workers={len(got)}"
            raise ValueError(f"this checkpoint was trained {trained}; the config asks for "
                             f"block_workers={self.n} (use the same setting, or another "
                             "checkpoint path)")
        self.states = got

    def close(self, abort: bool = False) -> None:
        """Stop the helpers: after the last epoch they are told to; on an error (``abort``)
        they may be waiting inside a collective, so they are terminated."""
        if self.procs is None:
            return
        procs, self.procs = self.procs, None
        try:
            if not abort:
                dist.broadcast_object_list([None], src=0)
        finally:
            for p in procs:
                if abort:
                    p.terminate()
                p.join(timeout=60)
                if p.is_alive():
                    p.terminate()
                    p.join()
            dist.destroy_process_group()
            self._tmp.cleanup()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed and not abort:
            raise RuntimeError(f"a NoProp block worker exited with code {failed[0]} "
                               "(its traceback is above)")


def _epoch_report(runner, stats: dict) -> dict:
    """What each rank sends rank 0 after an epoch: its share, its training state, its loss
    (and with ``grad_clip`` the fraction of its gradient groups clipped)."""
    return {"part": runner.model.state_dict(), "train": runner.state_dict(), "loss": stats["loss"],
            **({"clipped": stats["clipped"]} if "clipped" in stats else {})}


def _helper(rank: int, world_size: int, init_method: str, model: NoPropDT, cfg, x: torch.Tensor,
            y: torch.Tensor, state: dict | None, threads: int, runner: type) -> None:
    """Ranks 1..n-1: train this rank's share for each epoch rank 0 announces; ``None`` stops."""
    end_with_parent()          # rank 0 killed alone: this helper stops too
    dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world_size,
                            timeout=TIMEOUT)
    try:
        torch.set_num_threads(threads)
        ours = runner(share(model, world_size, rank), replace(cfg, progress=False), x, y,
                      shared_weight=1 / world_size, sync=allreduce_shared)
        del model
        if state is not None:
            ours.load_state_dict(state)
        while True:
            cmd = [None]
            dist.broadcast_object_list(cmd, src=0)
            if cmd[0] is None:
                break
            stats = ours.train_epoch(cmd[0], desc=f"block worker {rank}")
            dist.gather_object(_epoch_report(ours, stats), None, dst=0)
    finally:
        dist.destroy_process_group()
