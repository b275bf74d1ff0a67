"""ptycho_fast: fast ptychographic reconstruction on custom PyTorch ops (docs/design.md).

Importing the package loads the compiled ops, so ``torch.ops.ptycho_fast.*`` is registered
after a bare ``import ptycho_fast`` (as ``import torchvision`` registers its ops).
"""

from . import ops  # noqa: F401  (registers torch.ops.ptycho_fast and its autograd)

__all__ = ["ops"]
