"""Where and with what a command runs (shared by train, infer and refine): the device
choice, the versions recorded in every output, the processes of a ``torchrun`` run and
deterministic mode."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import numpy as np
import torch

from .files import UserError

__all__ = ["DEVICES_HELP", "check_device_name", "resolve_device", "package_version", "versions", "Dist",
           "process_group", "deterministic_algorithms"]

DEVICES_HELP = "auto (cuda when available), cpu, cuda or cuda:K"


def check_device_name(name: str, option: str = "--device") -> None:
    if name not in ("auto", "cpu", "cuda") and not str(name).startswith("cuda:"):
        raise UserError(f"{option}: must be {DEVICES_HELP}, got {name!r}")


def resolve_device(name: str, local_rank: int | None = None, option: str = "--device") -> torch.device:
    """The torch device for ``name`` ('auto', 'cpu', 'cuda', 'cuda:K'). ``local_rank``: a
    process of a multi-process run takes GPU ``local_rank`` (mod the count) for 'cuda'."""
    check_device_name(name, option)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"{option} {name}: no CUDA device is available (use --device cpu)")
    dev = torch.device(name)
    if dev.index is None:
        return torch.device("cuda", (local_rank or 0) % torch.cuda.device_count())
    if dev.index >= torch.cuda.device_count():
        raise UserError(f"{option} {name}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def package_version() -> str:
    try:
        from importlib.metadata import version
        return version("ptycho_fast")
    except Exception:  # run from a checkout, not installed
        return "unknown (not installed)"


def versions() -> dict:
    """Versions of everything that shapes a result, for summary files."""
    import h5py
    from . import ops
    return {"ptycho_fast": package_version(), "torch": torch.__version__, "numpy": np.__version__,
            "h5py": h5py.__version__, "python": platform.python_version(),
            "extension": bool(ops.HAVE_EXTENSION)}


# ----------------------------------------------------------------------------- processes
@dataclass
class Dist:
    """This process's place in a multi-process (``torchrun``) run: ``world`` processes,
    this one ``rank`` (``local_rank`` on its machine). One process: world 1, rank 0."""
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Dist":
        world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if world <= 1:
            return cls()
        return cls(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: list[float], device) -> list[float]:
        """Sum of each number over the processes (float64)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def all_reduce_(self, *tensors: torch.Tensor) -> None:
        """In-place sum of each tensor over the processes."""
        if self.active:
            for t in tensors:
                torch.distributed.all_reduce(t)


@contextlib.contextmanager
def process_group(dist: Dist, device_name: str):
    """Start the process group of a ``torchrun`` run (NCCL for CUDA, gloo on CPU) unless one
    is running, and end it afterwards."""
    started = False
    if dist.active and not torch.distributed.is_initialized():
        want_cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
        torch.distributed.init_process_group(backend="nccl" if want_cuda else "gloo")
        started = True
    try:
        yield
    finally:
        if started:
            torch.distributed.destroy_process_group()


@contextlib.contextmanager
def deterministic_algorithms(on: bool, device: torch.device):
    """``torch.use_deterministic_algorithms(on)`` for the block (restored afterwards)."""
    previous = torch.are_deterministic_algorithms_enabled()
    if on:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
