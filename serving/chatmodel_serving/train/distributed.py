"""Running as a torchrun worker: which rank this process is, the process group, and the collectives the
trainer needs. A plain `chatmodel train` (no WORLD_SIZE in the environment) is a world of one, and
every helper here is then a no-op, so the single-process path stays exactly as it was.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK (and MASTER_ADDR/PORT for the rendezvous); we use NCCL
between GPUs and gloo on CPUs."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger("chatmodel.train")


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Rank 0 alone writes the artifact, metrics.json, checkpoints and the termination message."""
        return self.rank == 0

    def shard(self, items: list[int]) -> list[int]:
        """This rank's part of a global batch: every rank takes every size-th item, so a global batch of B
        becomes B / size per rank and the optimizer step sees the same examples as one process would."""
        return items[self.rank :: self.size]

    def device(self, preference: str) -> str:
        """Each worker of a multi-GPU node drives the GPU matching its LOCAL_RANK."""
        if not self.distributed or preference == "cpu":
            return preference
        if preference in ("auto", "cuda") and torch.cuda.is_available():
            return f"cuda:{self.local_rank}"
        return preference

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, *values: float) -> list[float]:
        """Sums over all ranks (float64 on the CPU for gloo, on the GPU for NCCL)."""
        if not self.distributed:
            return list(values)
        device = torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else "cpu"
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()


SINGLE = World()  # a plain `chatmodel train`


def from_env() -> World:
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    return World(size, int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")))


def start(world: World, device: str) -> None:
    """Join the process group torchrun set up the rendezvous for."""
    if not world.distributed or dist.is_initialized():
        return
    cuda = device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend=backend)
    log.info("rank %d of %d joined the process group (%s)", world.rank, world.size, backend)


def shard(model: torch.nn.Module, root: torch.nn.Module) -> None:
    """FSDP2: parameters, gradients and optimizer state split over the workers. Each transformer block
    is a unit of its own (gathered just before it runs, freed after), the rest (embeddings, which the
    output layer shares, and the final norm) belongs to `root`."""
    from torch.distributed.fsdp import fully_shard

    for module in model.modules():
        if type(module).__name__.endswith("DecoderLayer"):
            fully_shard(module)
    fully_shard(root)


def full_state(module: torch.nn.Module, world: World) -> dict[str, torch.Tensor]:
    """The whole state dict of a sharded module on rank 0's CPU ({} elsewhere); every rank must call it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(module, options=options)
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if world.main else {}


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
