"""``ptycho-fast refine``: iterative physics reconstruction of the object (and optionally the
probe and the scan positions) on our kernels, from a flat start or from the network's image
(docs/refine.md; the engine is :mod:`ptycho_fast.refine`, the outputs
:mod:`ptycho_fast.refine_output`)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import guard, result_files
from .files import UserError
from .progress import Progress
from .refine import LOSSES, SUBPIXEL_MODELS, Refiner, RefineOptions, load_init_object
from .refine_output import (CHECKPOINT, load_checkpoint, refine_identity, save_checkpoint,
                            write_refinement)
from .runtime import DEVICES_HELP, Dist, check_device_name, deterministic_algorithms, process_group, resolve_device

__all__ = ["RefineConfig", "RefineResult", "run_refine", "config_from_args", "FORMATS",
           "DEFAULT_FORMATS"]

FORMATS, DEFAULT_FORMATS = result_files.FORMATS, result_files.DEFAULT_FORMATS
OPS = ("ptycho_fast", "reference")


@dataclass
class RefineConfig:
    """Every option of ``ptycho-fast refine`` (``--help``, docs/refine.md)."""
    data: str = ""
    out: str = ""
    init: str | None = None
    options: RefineOptions = field(default_factory=RefineOptions)
    device: str = "auto"
    ops: str = "ptycho_fast"
    formats: tuple = DEFAULT_FORMATS
    deterministic: bool = False
    resume: bool = False
    collapse_floor: float = guard.DEFAULT_COLLAPSE_FLOOR
    allow_degenerate: bool = False
    quiet: bool = False


@dataclass
class RefineResult:
    refiner: Refiner
    out: Path
    files: list
    summary: dict
    line: str


def _validate(config: RefineConfig) -> None:
    if not config.data:
        raise UserError("--data: required (the scan to reconstruct)")
    if not config.out:
        raise UserError("--out: required (the output directory)")
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    parent = out.parent if str(out.parent) else Path(".")
    if not out.exists() and not parent.is_dir():
        raise UserError(f"--out {out}: cannot create it: directory {parent} does not exist")
    if config.ops not in OPS:
        raise UserError(f"--ops: must be one of {', '.join(OPS)}, got {config.ops!r}")
    for f in config.formats:
        if f not in FORMATS:
            raise UserError(f"--format: must be a comma-separated list of {', '.join(FORMATS)}, got {f!r}")
    check_device_name(config.device)
    if not (math.isfinite(config.collapse_floor) and config.collapse_floor >= 0):
        raise UserError(f"--collapse-floor: must be a number >= 0, got {config.collapse_floor}")
    config.options.validate()


def run_refine(config: RefineConfig) -> RefineResult:
    """The ``refine`` command (module doc). Raises UserError for bad input and
    CollapseError (DivergedError) when the result is degenerate or the run diverged."""
    _validate(config)
    dist = Dist.from_env()
    with process_group(dist, config.device):
        device = resolve_device(config.device, dist.local_rank)
        with deterministic_algorithms(config.deterministic, device):
            return _run(config, dist, device)


def _load(config: RefineConfig, warn):
    from .data import load_dataset_reporting
    return load_dataset_reporting(config.data, warn, lazy=True)


def _run(config: RefineConfig, dist: Dist, device) -> RefineResult:
    from .data.dataset import dataset_fingerprint
    from .coords import canvas_frame
    quiet = config.quiet or not dist.main
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))

    def warn(message):
        say(f"ptycho-fast refine: warning: {message}")

    out = Path(config.out)
    ckpt = out / CHECKPOINT
    if not config.resume and ckpt.exists():
        raise UserError(f"--out {out}: already holds a refinement ({CHECKPOINT}); pass --resume to "
                        "continue it, or choose another --out")
    if config.resume and not ckpt.is_file():
        raise UserError(f"--resume: {out} has no {CHECKPOINT} to resume from")
    t_start = time.perf_counter()
    with _load(config, warn) as dataset:
        if "ptychodus" in config.formats and not dataset.metadata.pixel_size_m:
            raise UserError(f"--format ptychodus: {config.data} does not record the object pixel size "
                            "(metadata 'pixel_size_m') that a ptychodus product needs")
        frame = canvas_frame(dataset.positions, dataset.N, None if dataset.object is None else dataset.object.shape)
        init = None if config.init is None else load_init_object(config.init, frame.shape)
        refiner = Refiner(dataset, config.options, init_object=init, frame=frame, device=device,
                          ops=config.ops, dist=dist)
        identity = refine_identity(config.options, dataset_fingerprint(dataset)["fingerprint"],
                                   None if config.init is None else str(config.init), config.ops)
        if config.resume:
            load_checkpoint(ckpt, refiner, identity)
            say(f"ptycho-fast refine: resuming after epoch {refiner.state.epoch}")
        if dist.main:
            out.mkdir(exist_ok=True)
        o = config.options
        total = o.epochs
        bar = Progress(total, "refine", enabled=False if quiet else None, unit="epoch")
        bar.update(min(refiner.state.epoch, total))

        def on_epoch(record):
            if dist.main:
                save_checkpoint(ckpt, refiner, identity)
            bar.desc = f"refine loss {record.loss:.4g}"
            bar.update(1)

        with bar:
            refiner.run(on_epoch)
        reason = refiner.health(config.collapse_floor)
        degenerate = None
        if reason is not None:
            message = f"the refined object is degenerate: {reason}"
            if not config.allow_degenerate:
                raise guard.CollapseError(message + "; pass --allow-degenerate to write it anyway")
            degenerate = message
            warn(message + " (--allow-degenerate: writing it anyway)")
        files, summary = [], {}
        if dist.main:
            files, summary = write_refinement(
                out, refiner, dataset, data_path=config.data, init=config.init, formats=config.formats,
                extra_summary={"guard": {"floor": config.collapse_floor, "result": degenerate or "ok"},
                               "resumed": bool(config.resume), "deterministic": bool(config.deterministic)})
    s = refiner.state
    wall = time.perf_counter() - t_start
    line = (f"refined {refiner.P} patterns for {s.epoch} epochs into a {frame.shape[0]} x {frame.shape[1]} "
            f"object in {s.elapsed:.1f} s of refinement ({wall:.1f} s in all); final loss "
            f"{s.history[-1]['loss']:.4g} per pixel; images: {out / 'amplitude.png'}, {out / 'phase.png'}")
    return RefineResult(refiner, out, files, summary, line)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "reconstruct object, probe and positions by iterative physics refinement (our kernels)"
CLI_DESCRIPTION = """\
Reconstruct the object of DATA by gradient descent through the physics forward model on our
kernels (extract -> x probe -> FFT -> |.|, the adjoint stitch in the backward pass), from a
flat start or from --init (an infer/refine output directory or an NPZ with key 'object', e.g.
the network's image). Optionally refines the probe (--refine-probe, --probe-modes M) and the
scan positions (--refine-positions). The defaults are the recommended recipe.

Writes into DIR: object.npz, object.h5 [, object_ptychodus.h5], amplitude.png, phase.png,
probe.npy, positions.csv, loss_curve.png [, position_corrections.png], summary.json, and a
checkpoint after every epoch (refine_checkpoint.safetensors; --resume continues from it).

Several processes: torchrun --nproc_per_node K -m ptycho_fast refine --data ... --out ...
Exit codes: 0 done, 2 bad input, 3 degenerate result or divergence. See docs/refine.md."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    d = RefineOptions()
    io_ = p.add_argument_group("input and output")
    io_.add_argument("--data", "-d", metavar="FILE", required=True,
                     help="data file: PtychoPINN NPZ, our HDF5 (streamed when large) or a ptychodus product")
    io_.add_argument("--out", "-o", metavar="DIR", required=True, help="output directory (created if missing)")
    io_.add_argument("--init", metavar="PATH", default=None,
                     help="starting object: an infer/refine output directory or an NPZ with key 'object' "
                          "(default: flat 1 + 0j)")
    io_.add_argument("--format", action="append", metavar="FMT[,FMT]", default=None,
                     help=f"object files to write besides the defaults ({','.join(DEFAULT_FORMATS)}), from "
                          f"{', '.join(FORMATS)} (repeat or comma-separate; ptychodus adds the product)")
    io_.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    r = p.add_argument_group("stopping")
    r.add_argument("--epochs", "-e", type=int, default=d.epochs, metavar="K",
                   help="epochs (each visits every pattern once) (default: %(default)s)")
    r.add_argument("--max-time", type=float, default=None, metavar="MIN",
                   help="stop after the epoch that crosses MIN minutes; the step schedule follows the "
                        "time budget (default: no limit)")
    a = p.add_argument_group("algorithm")
    a.add_argument("--batch-size", "-b", type=int, default=d.batch_size, metavar="B",
                   help="patterns per update (default: %(default)s)")
    a.add_argument("--loss", choices=LOSSES, default=d.loss,
                   help="amplitude (Gaussian in sqrt(counts)) or poisson (counts) (default: %(default)s)")
    a.add_argument("--subpixel", choices=SUBPIXEL_MODELS, default=d.subpixel,
                   help="fractional positions: bilinear (our extract kernel interpolates the object; "
                        "analytic position gradients) or fourier (integer cut + the probe moved by a "
                        "Fourier phase ramp) (default: %(default)s)")
    a.add_argument("--step", type=float, default=d.step, metavar="S",
                   help="object step, a fraction of the full projection step (default: %(default)s)")
    a.add_argument("--momentum", type=float, default=d.momentum, metavar="M",
                   help="momentum between epochs (0 = none) (default: %(default)s)")
    a.add_argument("--seed", type=int, default=d.seed, help="seed of the minibatch order (default: %(default)s)")
    pr = p.add_argument_group("probe and positions")
    pr.add_argument("--refine-probe", action="store_true", help="refine the probe too")
    pr.add_argument("--probe-start", type=int, default=d.probe_start, metavar="E",
                    help="first epoch that updates the probe (default: %(default)s)")
    pr.add_argument("--probe-modes", type=int, default=None, metavar="M",
                    help="incoherent probe modes (initialised from the data's probe; default: as stored)")
    pr.add_argument("--refine-positions", action="store_true", help="refine the scan positions too")
    pr.add_argument("--positions-start", type=int, default=d.positions_start, metavar="E",
                    help="first epoch that updates positions (default: %(default)s)")
    pr.add_argument("--max-position-correction", type=float, default=d.max_position_correction, metavar="PX",
                    help="largest correction of a position, pixels (default: %(default)s)")
    m = p.add_argument_group("running")
    m.add_argument("--device", default="auto", metavar="DEV", help=f"{DEVICES_HELP} (default: %(default)s)")
    m.add_argument("--ops", choices=OPS, default="ptycho_fast",
                   help="ptycho_fast (our kernels) or reference (plain PyTorch; parity checks) (default: %(default)s)")
    m.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms: --resume then continues bit for bit")
    m.add_argument("--collapse-floor", type=float, default=guard.DEFAULT_COLLAPSE_FLOOR, metavar="F",
                   help="the guard's floor for the variance of the refined patches (default: %(default)g)")
    m.add_argument("--allow-degenerate", action="store_true", help="write a degenerate result (with a warning)")
    m.add_argument("--quiet", "-q", action="store_true", help="no progress bar, warnings or summary line")


def config_from_args(args: argparse.Namespace) -> RefineConfig:
    options = RefineOptions(
        epochs=args.epochs, max_time=args.max_time, batch_size=args.batch_size, loss=args.loss, subpixel=args.subpixel, step=args.step,
        momentum=args.momentum, seed=args.seed, refine_probe=args.refine_probe, probe_start=args.probe_start,
        probe_modes=args.probe_modes, refine_positions=args.refine_positions,
        positions_start=args.positions_start, max_position_correction=args.max_position_correction)
    return RefineConfig(data=args.data, out=args.out, init=args.init, options=options, device=args.device,
                        ops=args.ops, formats=result_files.parse_formats(args.format), deterministic=args.deterministic,
                        resume=args.resume, collapse_floor=args.collapse_floor,
                        allow_degenerate=args.allow_degenerate, quiet=args.quiet)


def cli_main(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    try:
        result = run_refine(config)
    except guard.CollapseError as exc:
        print(f"ptycho-fast: error: {exc}", file=sys.stderr)
        return guard.EXIT_COLLAPSE
    if not config.quiet and Dist.from_env().main:
        print(result.line)
    return 0

