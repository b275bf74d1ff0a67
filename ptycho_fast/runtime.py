"""Where and with what a command runs: the device choice and the versions recorded in
every output (shared by train, infer and refine)."""

from __future__ import annotations

import platform

import numpy as np
import torch

from .files import UserError

__all__ = ["DEVICES_HELP", "check_device_name", "resolve_device", "package_version", "versions"]

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
