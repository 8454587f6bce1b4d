"""Where a run computes: the device of a process under ``torchrun`` and the label that records
it in metrics and model cards."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["CPU_HARDWARE", "describe_hardware", "is_cpu_hardware", "init_distributed", "process_device"]

CPU_HARDWARE = "CPU ("  # how describe_hardware's CPU labels begin (after any "N x ")


def describe_hardware(device: torch.device, world: int = 1) -> str:
    """What an epoch ran on, for the metrics and the model card: the GPU's name, or the CPU
    threads torch used; prefixed with the process count under ``torchrun``."""
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        threads = torch.get_num_threads()
        what = f"{CPU_HARDWARE}{threads} thread{'' if threads == 1 else 's'})"
    return f"{world} x {what}" if world > 1 else what


def is_cpu_hardware(label: str) -> bool:
    """Whether a label written by :func:`describe_hardware` names CPU threads, not a GPU."""
    return label.split(" x ", 1)[-1].startswith(CPU_HARDWARE)


def init_distributed() -> tuple[int, int]:
    """(rank, world size), initialising the process group under torchrun (gloo on CPU, nccl on
    GPU); (0, 1) in a plain process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def process_device(rank: int) -> torch.device:
    """The device process ``rank`` computes on: one of the GPUs in turn, else the CPU."""
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")
