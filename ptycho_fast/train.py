"""Physics-informed training (``ptycho-fast train``; docs/training.md).

One step (docs/design.md §1)::

    X (B, C, N, N) measured amplitudes      (C = gridsize², groups of neighbouring positions)
      -> x = input(X)                        X / s (intensity scale s), and with --input
                                             backprojection also the back-projected
                                             patches (physics.InputTransform)
      -> patches = net(x)                    complex (B, C, N, N)           (model.py)
      -> object_big(patches, offsets)        gridsize > 1: local canvases   (object_big.py)
      -> A = g * |fft(probe * patch)|        probe gain g (physics.predicted_amplitude)
      -> loss(A, X)                          Poisson NLL on counts, or MAE on amplitudes

Adam with a learning-rate schedule, a validation split, a checkpoint after every epoch
(atomic; ``--resume`` continues from it, so a kill loses at most the epoch in progress),
CSV/JSON loss logs, a loss-curve PNG, optional patch statistics of the predicted patches
with a collapse guard, and the final model bundle in ``RUN/model`` (bundle.py).

Multi-process: launched by ``torchrun`` (``WORLD_SIZE > 1``) it trains with
DistributedDataParallel (gloo on CPU, NCCL on CUDA). ``--batch-size`` is the global batch;
each rank takes every WORLD_SIZE-th sample of one seeded permutation (DistributedSampler),
so a run on k processes takes the same steps as on one, up to float round-off. Only rank 0
writes files.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data.distributed import DistributedSampler

from . import figures, guard, physics
from .bundle import RUN_BUNDLE_SUBDIR, dataset_fingerprint, save_bundle
from .files import UserError, atomic_output, write_json as _write_json, write_text as _write_text
from .guard import DEFAULT_COLLAPSE_FLOOR, EXIT_COLLAPSE, CollapseError
from .runtime import Dist, deterministic_algorithms, process_group, resolve_device
from .model import AMP_ACTIVATIONS, ARCHITECTURES, SUPPORTED_N, NetworkConfig, PtychoPINNNet
from .schedule import COSINE_FINAL_FRACTION, LR_SCHEDULES, PLATEAU_PATIENCE, Schedule
from .object_big import WINDOWS, ObjectBig, make_window
from .progress import Progress

__all__ = [
    "TrainConfig", "TrainResult", "CollapseError", "train", "PINNTrainingModule",
    "CHECKPOINT", "LOSSES_CSV", "LOSSES_JSON", "LOSS_CURVE", "PATCH_STATS_JSON", "CONFIG_JSON",
    "DEFAULT_COLLAPSE_FLOOR", "EXIT_COLLAPSE", "LR_SCHEDULES",
]

CHECKPOINT = "checkpoint.pt"
LOSSES_CSV = "losses.csv"
LOSSES_JSON = "losses.json"
LOSS_CURVE = "loss_curve.png"
PATCH_STATS_JSON = "patch_stats.json"
CONFIG_JSON = "train_config.json"
CHECKPOINT_FORMAT = "ptycho_fast.checkpoint"
CHECKPOINT_VERSION = 1



@dataclass
class TrainConfig:
    """Every option of ``ptycho-fast train`` (see ``--help`` and docs/training.md)."""
    data: str = ""
    out: str = ""
    epochs: int = 50
    batch_size: int = 16
    gridsize: int = 2
    n_groups: int | None = None
    lr: float = 1e-3
    lr_schedule: str = "cosine"
    seed: int = 0
    val_fraction: float = 0.1
    device: str = "auto"
    deterministic: bool = False
    loss: str = "poisson"
    rate_floor: float = physics.DEFAULT_RATE_FLOOR
    width: float = 0.5                   # measured best in a fixed CPU budget (docs/training.md §11)
    amp_activation: str = "exp"
    arch: str = "cnn"
    modes: int = 12
    blocks: int = 4
    input: str = "backprojection"        # the measured fix of issue 11 (docs/training.md §11)
    grad_clip: float = 0.0               # max gradient norm; 0: no clipping
    max_time: float | None = None        # minutes; stop after the epoch that crosses it
    allow_degenerate: bool = False
    window: str = "probe"
    object_big: bool = True
    probe_gain: str = "auto"
    train_probe_gain: bool = False
    log_patch_stats: bool = False
    patch_stats_limit: int = 4
    collapse_floor: float = DEFAULT_COLLAPSE_FLOOR
    stop_after_epoch: int | None = None
    quiet: bool = False

    #: options that define the run: on --resume they come from the checkpoint, and giving a
    #: different value is an error
    RUN_FIELDS = ("batch_size", "gridsize", "n_groups", "lr", "lr_schedule", "seed", "val_fraction",
                  "loss", "rate_floor", "width", "amp_activation", "window", "object_big",
                  "probe_gain", "train_probe_gain", "arch", "modes", "blocks", "input", "grad_clip", "max_time",
                  "deterministic")
    #: what runs checkpointed before a field existed used (their checkpoints lack it)
    LEGACY_RUN_FIELDS = {"input": "amplitude"}

    def validate(self) -> "TrainConfig":
        def bad(option, message):
            raise UserError(f"--{option.replace('_', '-')}: {message}")
        if not str(self.data):
            raise UserError("train: give the training data file (DATA)")
        if not str(self.out):
            bad("out", "give the run directory")
        if int(self.epochs) < 1:
            bad("epochs", f"must be >= 1, got {self.epochs}")
        if int(self.batch_size) < 1:
            bad("batch_size", f"must be >= 1, got {self.batch_size}")
        if int(self.gridsize) < 1:
            bad("gridsize", f"must be >= 1, got {self.gridsize}")
        if self.n_groups is not None and int(self.n_groups) < 1:
            bad("n_groups", f"must be >= 1, got {self.n_groups}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad("lr", f"must be a number > 0, got {self.lr}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad("lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not 0 <= self.val_fraction < 1:
            bad("val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        if self.device not in ("auto", "cpu", "cuda"):
            bad("device", f"must be auto, cpu or cuda, got {self.device!r}")
        if self.loss not in physics.LOSSES:
            bad("loss", f"must be one of {', '.join(physics.LOSSES)}, got {self.loss!r}")
        if not (math.isfinite(self.rate_floor) and self.rate_floor > 0):
            bad("rate_floor", f"must be a number > 0 (counts), got {self.rate_floor}")
        if not (math.isfinite(self.width) and self.width > 0):
            bad("width", f"must be a number > 0, got {self.width}")
        if self.amp_activation not in AMP_ACTIVATIONS:
            bad("amp_activation", f"must be one of {', '.join(AMP_ACTIVATIONS)}, got {self.amp_activation!r}")
        if self.arch not in ARCHITECTURES:
            bad("arch", f"must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.input not in physics.INPUT_KINDS:
            bad("input", f"must be one of {', '.join(physics.INPUT_KINDS)}, got {self.input!r}")
        if int(self.modes) < 1:
            bad("modes", f"must be >= 1, got {self.modes}")
        if int(self.blocks) < 1:
            bad("blocks", f"must be >= 1, got {self.blocks}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            bad("grad_clip", f"must be a number >= 0 (0: off), got {self.grad_clip}")
        if self.max_time is not None and not (math.isfinite(self.max_time) and self.max_time > 0):
            bad("max_time", f"must be a number of minutes > 0, got {self.max_time}")
        if self.window not in WINDOWS:
            bad("window", f"must be one of {', '.join(WINDOWS)}, got {self.window!r}")
        if str(self.probe_gain) not in physics.PROBE_GAIN_MODES:
            try:
                gain = float(self.probe_gain)
            except ValueError:
                gain = math.nan
            if not (math.isfinite(gain) and gain > 0):
                bad("probe_gain", f"must be one of {', '.join(physics.PROBE_GAIN_MODES)} or a "
                                  f"number > 0, got {self.probe_gain!r}")
        if int(self.patch_stats_limit) < 1:
            bad("patch_stats_limit", f"must be >= 1, got {self.patch_stats_limit}")
        if not (self.collapse_floor >= 0 and math.isfinite(self.collapse_floor)):
            bad("collapse_floor", f"must be a number >= 0, got {self.collapse_floor}")
        if self.stop_after_epoch is not None and int(self.stop_after_epoch) < 1:
            bad("stop_after_epoch", f"must be >= 1, got {self.stop_after_epoch}")
        return self

    def run_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.RUN_FIELDS}


@dataclass
class TrainResult:
    history: list[dict]
    run_dir: Path
    bundle_dir: Path | None
    intensity_scale: float
    probe_gain: float
    epochs_done: int
    finished: bool
    model: PtychoPINNNet | None = None


# ----------------------------------------------------------------------------- the module
class PINNTrainingModule(nn.Module):
    """Network + object_big + physics: ``forward(x, offsets) -> (patches, amplitude)``
    where ``x = X / s`` and ``amplitude = g * |F(probe * patch)|`` in count units.
    ``patches`` is the network's own prediction (before object_big)."""

    def __init__(self, net: PtychoPINNNet, probe: torch.Tensor, gain: float,
                 train_gain: bool = False, object_big: ObjectBig | None = None):
        super().__init__()
        self.net = net
        # Constant buffers; not in the state dict (the bundle stores the probe itself).
        self.register_buffer("probe", probe.detach().clone(), persistent=False)
        if train_gain:
            self.log_gain = nn.Parameter(torch.tensor(math.log(gain), dtype=torch.float32))
        else:
            self.register_buffer("log_gain", torch.tensor(math.log(gain), dtype=torch.float32),
                                 persistent=False)
        self.object_big = object_big

    @property
    def gain(self) -> float:
        return float(self.log_gain.detach().exp())

    def forward(self, x: torch.Tensor, offsets: torch.Tensor):
        predicted = self.net(x)
        patches = predicted if self.object_big is None else self.object_big(predicted, offsets)
        amplitude = physics.predicted_amplitude(patches, self.probe, self.log_gain.exp())
        return predicted, amplitude


# ----------------------------------------------------------------------------- helpers
def _rng_state(device: torch.device) -> dict:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_rest": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_rest"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), int(pos),
                         int(has_gauss), float(cached)))
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _patch_record(patches: torch.Tensor, epoch: int, batch: int, floor: float) -> tuple[dict, str | None]:
    """(log entry, collapse reason or None) of a batch of predicted complex patches: the
    guard shared with infer and refine (ptycho_fast.guard)."""
    summary = guard.summarize(patches)
    record = {"epoch": epoch, "batch": batch, "n_patches": summary["n_patches"],
              "complex_var_zero_mean": summary["complex_var_zero_mean"],
              "amplitude": summary["amplitude"], "phase": summary["phase"]}
    return record, guard.collapse_reason(summary, floor)


def _plot_losses(path: Path, history: list[dict]) -> None:
    png = figures.loss_curve_png([h["epoch"] for h in history],
                                 {"train": [h["train_loss"] for h in history],
                                  "validation": [h["val_loss"] for h in history]})
    with atomic_output(path) as tmp:
        tmp.write_bytes(png)


def _csv_text(history: list[dict]) -> str:
    out = io.StringIO()
    fields = ["epoch", "train_loss", "val_loss", "lr", "probe_gain", "patterns_per_s", "seconds"]
    w = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for h in history:
        w.writerow({k: ("" if h.get(k) is None else h.get(k)) for k in fields})
    return out.getvalue()


# ----------------------------------------------------------------------------- data
@dataclass
class _Data:
    X: torch.Tensor          # (P, N, N) float32 amplitudes (counts units)
    indices: torch.Tensor    # (G, C) int64
    offsets: torch.Tensor    # (G, C, 2) float32
    train_ids: torch.Tensor  # group ids
    val_ids: torch.Tensor
    probe: np.ndarray
    N: int
    canvas_size: int | None
    fingerprint: dict
    intensity_scale: float
    probe_gain: float
    probe_gain_how: str
    counts: dict             # guard.CountSpread summary: does the object absorb?


def _prepare_data(config: TrainConfig) -> _Data:
    from .data import group_positions, load_dataset
    ds = load_dataset(config.data)
    if ds.N not in SUPPORTED_N:
        raise UserError(f"{config.data}: patterns are {ds.N} x {ds.N}; the network supports "
                        f"N = {', '.join(map(str, SUPPORTED_N))}")
    fingerprint = dataset_fingerprint(ds)
    s = physics.intensity_scale(ds.diffraction)
    if not (math.isfinite(s) and s > 0):
        raise UserError(f"{config.data}: the diffraction is zero everywhere (intensity scale {s})")
    try:
        g, how = physics.choose_probe_gain(ds.diffraction, ds.probe, str(config.probe_gain),
                                           calibrated=ds.metadata.says_probe_calibrated)
    except ValueError as exc:
        raise UserError(f"--probe-gain: {exc}") from None
    try:
        groups = group_positions(ds.positions, config.gridsize, config.n_groups, seed=config.seed)
    except ValueError as exc:
        raise UserError(f"--gridsize {config.gridsize} / --n-groups {config.n_groups}: {exc}") from None
    G = groups.n_groups
    n_val = int(round(config.val_fraction * G))
    if config.val_fraction > 0 and n_val == 0 and G >= 2:
        n_val = 1
    perm = np.random.default_rng([int(config.seed), 1]).permutation(G)
    val_ids, train_ids = np.sort(perm[:n_val]), np.sort(perm[n_val:])
    if len(train_ids) < config.batch_size:
        raise UserError(f"--batch-size {config.batch_size} is larger than the {len(train_ids)} "
                        f"training groups ({G} groups, {n_val} for validation); use a smaller "
                        "batch, more --n-groups or a smaller --val-fraction")
    C = config.gridsize ** 2
    canvas = groups.local_canvas_size(ds.N) if (C > 1 and config.object_big) else None
    return _Data(X=torch.from_numpy(np.ascontiguousarray(ds.diffraction, dtype=np.float32)),
                 indices=torch.from_numpy(groups.indices.astype(np.int64)),
                 offsets=torch.from_numpy(groups.offsets.astype(np.float32)),
                 train_ids=torch.from_numpy(train_ids.astype(np.int64)),
                 val_ids=torch.from_numpy(val_ids.astype(np.int64)),
                 probe=ds.probe, N=ds.N, canvas_size=canvas, fingerprint=fingerprint,
                 intensity_scale=float(s), probe_gain=float(g), probe_gain_how=how,
                 counts=guard.CountSpread.of(ds.diffraction).summary())


# ----------------------------------------------------------------------------- resume
def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable checkpoint ({exc}); remove it to start over") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path}: not a ptycho_fast training checkpoint")
    if ckpt.get("version") != CHECKPOINT_VERSION:
        raise UserError(f"{path}: checkpoint version {ckpt.get('version')!r} is not supported "
                        f"(expected {CHECKPOINT_VERSION})")
    return ckpt


def _merge_resume(config: TrainConfig, explicit: set[str], ckpt: dict) -> TrainConfig:
    stored = json.loads(ckpt["config"])
    conflicts = [f"--{k.replace('_', '-')} {getattr(config, k)!r} (the run has {stored[k]!r})"
                 for k in config.RUN_FIELDS if k in explicit and stored.get(k) != getattr(config, k)]
    if conflicts:
        raise UserError("--resume: these options differ from the interrupted run: "
                        + "; ".join(conflicts) + ". Omit them, or start a new run with another --out")
    merged = dataclasses.replace(config, **{k: stored.get(k, config.LEGACY_RUN_FIELDS.get(k, getattr(config, k)))
                                            for k in config.RUN_FIELDS})
    stored_epochs = int(stored["epochs"])
    if "epochs" not in explicit:
        merged.epochs = stored_epochs
    elif merged.epochs != stored_epochs and merged.lr_schedule == "cosine":
        raise UserError(f"--resume: --epochs {merged.epochs} differs from the run's {stored_epochs}; "
                        "the cosine schedule depends on it (use --lr-schedule plateau or constant "
                        "to extend a run)")
    if merged.epochs < int(ckpt["epoch"]):
        raise UserError(f"--epochs {merged.epochs}: the run has already done {ckpt['epoch']} epochs")
    return merged


# ----------------------------------------------------------------------------- training
def train(config: TrainConfig, resume: bool = False, explicit: set[str] | None = None) -> TrainResult:
    """Train a model (the ``train`` command). ``explicit``: names of options the user gave
    (with ``resume``, giving a run-defining option that differs from the checkpoint is an
    error; ``None`` means all given). Raises UserError for bad input and CollapseError when
    the collapse guard trips."""
    config = dataclasses.replace(config)
    config.validate()
    dist = Dist.from_env()
    run_dir = Path(config.out)
    ckpt_path = run_dir / CHECKPOINT
    ckpt = None
    if resume:
        if not ckpt_path.is_file():
            raise UserError(f"--resume: {run_dir} has no {CHECKPOINT} to resume from")
        ckpt = _load_checkpoint(ckpt_path)
        config = _merge_resume(config, set(TrainConfig.RUN_FIELDS) | {"epochs"} if explicit is None
                               else explicit, ckpt)
        config.validate()
    elif ckpt_path.exists():
        raise UserError(f"--out {run_dir}: already holds a training run ({CHECKPOINT}); pass "
                        "--resume to continue it, or choose another --out")
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"--out {run_dir}: exists and is not a directory")
    if not run_dir.parent.is_dir():
        raise UserError(f"--out {run_dir}: directory {run_dir.parent} does not exist")

    with process_group(dist, config.device):
        device = resolve_device(config.device, dist.local_rank)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with deterministic_algorithms(config.deterministic, device):
            return _train(config, dist, device, run_dir, ckpt)


def _train(config: TrainConfig, dist: Dist, device: torch.device, run_dir: Path,
           ckpt: dict | None) -> TrainResult:
    log = (lambda *a: print(*a, flush=True)) if (dist.main and not config.quiet) else (lambda *a: None)
    data = _prepare_data(config)
    if ckpt is not None and json.loads(ckpt["fingerprint"]) != data.fingerprint["fingerprint"]:
        raise UserError(f"--resume: {config.data} is not the data the run in {run_dir} was trained on "
                        "(its fingerprint differs)")
    if config.batch_size % dist.world:
        raise UserError(f"--batch-size {config.batch_size} must be divisible by the number of "
                        f"processes ({dist.world})")
    if dist.main:
        run_dir.mkdir(exist_ok=True)
        _write_json(run_dir / CONFIG_JSON, {
            "options": dataclasses.asdict(config), "world_size": dist.world,
            "computed": {"intensity_scale": data.intensity_scale, "probe_gain": data.probe_gain,
                         "probe_gain_choice": data.probe_gain_how,
                         "local_canvas_size": data.canvas_size},
            "training_data": data.fingerprint})

    # Model, seeded: identical on every rank.
    torch.manual_seed(config.seed)
    np.random.seed(config.seed % (2 ** 32))
    random.seed(config.seed)
    try:
        net_config = NetworkConfig(N=data.N, gridsize=config.gridsize, width=config.width,
                                   amp_activation=config.amp_activation, arch=config.arch,
                                   modes=config.modes, blocks=config.blocks, input=config.input)
    except ValueError as exc:
        raise UserError(f"train: network settings: {exc}") from None
    net = PtychoPINNNet(net_config)
    if not config.deterministic:
        net.use_channels_last()   # faster; not bit-for-bit repeatable across processes
    probe_t = torch.as_tensor(data.probe)
    C = net_config.C
    merge = None
    if C > 1 and config.object_big:
        merge = ObjectBig(make_window(config.window, data.N, data.probe), data.canvas_size)
    module = PINNTrainingModule(net, probe_t, data.probe_gain, config.train_probe_gain, merge).to(device)
    optimizer = torch.optim.Adam(module.parameters(), lr=config.lr)
    steps = len(data.train_ids) // config.batch_size
    scheduler = Schedule(optimizer, config.lr_schedule, config.lr, total_steps=config.epochs * steps,
                         max_seconds=None if config.max_time is None else 60.0 * config.max_time)
    history: list[dict] = []
    patch_log: list[dict] = []
    start_epoch, spent = 0, 0.0
    if ckpt is not None:
        module.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        history = json.loads(ckpt["history"])
        spent = float(ckpt.get("seconds", sum(h["seconds"] for h in history)))
        patch_log = json.loads(ckpt.get("patch_stats", "[]"))
        start_epoch = int(ckpt["epoch"])
        _set_rng_state(ckpt["rng"], device)
        log(f"resuming {run_dir} after epoch {start_epoch} of {config.epochs}")
    model = module
    if dist.active:
        with warnings.catch_warnings():
            # The buffers (probe, window, fixed gain) are constants, identical on every rank:
            # nothing to broadcast. torch >= 2.13 flags the argument as deprecated in favour
            # of one that still syncs at init; this one keeps its meaning.
            warnings.filterwarnings("ignore", message=".*broadcast_buffers", category=FutureWarning)
            model = nn.parallel.DistributedDataParallel(
                module, device_ids=[device.index] if device.type == "cuda" else None,
                broadcast_buffers=False)

    X = data.X.to(device) if device.type == "cpu" or data.X.numel() * 4 < (2 << 30) else data.X
    indices, offsets = data.indices.to(X.device), data.offsets.to(device)
    s, B = data.intensity_scale, config.batch_size
    # the input is computed with the starting gain, also when --train-probe-gain moves it
    transform = physics.InputTransform(config.input, s, data.probe, data.probe_gain)
    b = B // dist.world
    n_train = len(data.train_ids)
    sampler = DistributedSampler(range(n_train), num_replicas=dist.world, rank=dist.rank,
                                 shuffle=True, seed=config.seed, drop_last=True)
    train_ids = data.train_ids
    val_ids = data.val_ids[dist.rank::dist.world]
    log(f"training on {device} ({dist.world} process{'es' if dist.world > 1 else ''}): "
        f"{len(data.X)} patterns N={data.N}, gridsize {config.gridsize} -> {n_train} training / "
        f"{len(data.val_ids)} validation groups, {steps} steps of {B} per epoch; "
        f"intensity scale {s:.6g}, probe gain {data.probe_gain:.6g} ({data.probe_gain_how})")

    def batch(group_ids: torch.Tensor):
        pidx = indices[group_ids.to(indices.device)]
        Xb = X[pidx].to(device, non_blocking=True)
        return Xb, offsets[group_ids.to(device)]

    def loss_of(Xb, off):
        predicted, amplitude = model(transform(Xb), off)
        return predicted, physics.amplitude_loss(config.loss, amplitude, Xb, config.rate_floor)

    stop_at = config.epochs if config.stop_after_epoch is None else min(config.epochs, config.stop_after_epoch)
    epochs_done, out_of_time = start_epoch, False
    for epoch in range(start_epoch, stop_at):
        module.train()
        sampler.set_epoch(epoch)
        order = torch.tensor(list(iter(sampler)), dtype=torch.int64)
        t0 = time.perf_counter()
        loss_sum = 0.0
        desc = f"epoch {epoch + 1}/{config.epochs}"
        # counts diffraction patterns (C per group) of all processes: patterns/s
        bar = Progress(steps * B * C, desc, enabled=False if (config.quiet or not dist.main) else None,
                       unit="pat")
        with bar:
            for k in range(steps):
                gids = train_ids[order[k * b:(k + 1) * b]]
                Xb, off = batch(gids)
                predicted, loss = loss_of(Xb, off)
                if config.log_patch_stats and k < config.patch_stats_limit:
                    record, reason = _patch_record(predicted.detach(), epoch + 1, k, config.collapse_floor)
                    reason = _on_every_rank(reason, dist, device, "another process's predicted patches collapsed")
                    patch_log.append(record)
                    if reason is not None:
                        if dist.main:
                            _write_json(run_dir / PATCH_STATS_JSON, patch_log)
                        raise CollapseError(f"training collapsed at epoch {epoch + 1}, batch {k}: {reason}; "
                                            f"patch statistics in {run_dir / PATCH_STATS_JSON}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip > 0:
                    nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
                scheduler.before_step(epoch * steps + k, spent + time.perf_counter() - t0)
                optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise CollapseError(f"training diverged at epoch {epoch + 1}, batch {k}: the loss is "
                                        f"{value}; try a smaller --lr")
                loss_sum += value
                bar.desc = f"{desc} loss {value:.4g}"
                bar.update(B * C)
        train_seconds = time.perf_counter() - t0
        train_loss = dist.all_reduce_sum([loss_sum], device)[0] / max(steps * dist.world, 1)
        val_loss = _validate(module, data, val_ids, indices, X, offsets, transform, b, config, device, dist)
        seconds = time.perf_counter() - t0
        lr_used = optimizer.param_groups[0]["lr"]
        scheduler.after_epoch(val_loss if val_loss is not None else train_loss)
        spent += seconds
        _check_amplitude(predicted.detach(), data.counts, config, epoch + 1, log, dist, device)
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss, "lr": lr_used,
                  "probe_gain": module.gain, "patterns_per_s": steps * B * C / train_seconds, "seconds": seconds}
        history.append(record)
        epochs_done = epoch + 1
        if dist.main:
            _save_checkpoint(run_dir, module, optimizer, scheduler, epoch + 1, config, history,
                             patch_log, data, device, spent)
        val_text = "" if val_loss is None else f"  val {val_loss:.5g}"
        log(f"epoch {epoch + 1}/{config.epochs}  train {train_loss:.5g}{val_text}  lr {lr_used:.3g}  "
            f"{record['patterns_per_s']:.0f} pat/s  {seconds:.1f} s")
        if not math.isfinite(train_loss) or (val_loss is not None and not math.isfinite(val_loss)):
            raise CollapseError(f"training diverged at epoch {epoch + 1}: train loss {train_loss}, "
                                f"validation loss {val_loss}")
        if config.max_time is not None and spent >= 60.0 * config.max_time:
            out_of_time = epoch + 1 < config.epochs
            if out_of_time:
                log(f"--max-time {config.max_time:g} min reached after epoch {epoch + 1} "
                    f"({spent / 60:.1f} min of training)")
            break
    finished = epochs_done >= config.epochs or out_of_time
    bundle_dir = None
    if dist.main:
        if finished:
            bundle_dir = save_bundle(
                run_dir / RUN_BUNDLE_SUBDIR, module.net, intensity_scale=s, probe_gain=module.gain,
                probe=data.probe, input_gain=data.probe_gain, window=config.window, object_big=config.object_big,
                local_canvas_size=data.canvas_size, training_data=data.fingerprint,
                training={"loss": config.loss, "epochs": config.epochs, "epochs_done": epochs_done,
                          "max_time_min": config.max_time, "training_seconds": spent,
                          "grad_clip": config.grad_clip, "batch_size": config.batch_size,
                          "lr": config.lr, "lr_schedule": config.lr_schedule, "seed": config.seed,
                          "probe_gain_choice": data.probe_gain_how,
                          "probe_gain_trained": config.train_probe_gain,
                          "final_train_loss": history[-1]["train_loss"] if history else None,
                          "final_val_loss": history[-1]["val_loss"] if history else None,
                          "world_size": dist.world})
            if history:
                _plot_losses(run_dir / LOSS_CURVE, history)
            log(f"model bundle: {bundle_dir}")
        else:
            log(f"stopped after epoch {epochs_done} of {config.epochs}; continue with --resume")
    if dist.active:
        torch.distributed.barrier()
    return TrainResult(history=history, run_dir=run_dir, bundle_dir=bundle_dir,
                       intensity_scale=s, probe_gain=module.gain, epochs_done=epochs_done,
                       finished=finished, model=module.net)


def _on_every_rank(reason: str | None, dist: Dist, device, elsewhere: str) -> str | None:
    """``reason`` on this process, or ``elsewhere`` when only another process has one: every
    process stops together (one all-reduce; nothing without DDP)."""
    if not dist.active:
        return reason
    flag = torch.tensor([0.0 if reason is None else 1.0], device=device)
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return elsewhere if reason is None and flag.item() > 0 else reason


def _check_amplitude(predicted: torch.Tensor, counts: dict, config: TrainConfig, epoch: int, log,
                     dist: Dist, device) -> None:
    """The degenerate-amplitude rule (guard.degenerate_amplitude_reason) on the epoch's last
    training batch: a CollapseError (exit 3), or a warning line with --allow-degenerate.
    Every process stops together."""
    reason = guard.degenerate_amplitude_reason(guard.summarize(predicted), config.collapse_floor, counts)
    reason = _on_every_rank(reason, dist, device, "another process's predicted amplitude collapsed")
    if reason is None:
        return
    if config.allow_degenerate:
        log(f"warning: epoch {epoch}: {reason} (--allow-degenerate: training goes on)")
        return
    raise CollapseError(f"training collapsed at epoch {epoch}: {reason}. Pass --allow-degenerate to "
                        "train on anyway")


@torch.no_grad()
def _validate(module, data: _Data, val_ids, indices, X, offsets, transform, b, config, device, dist):
    if len(data.val_ids) == 0:
        return None
    module.eval()
    total, count = 0.0, 0
    for start in range(0, len(val_ids), max(b, 1)):
        gids = val_ids[start:start + b]
        Xb = X[indices[gids.to(indices.device)]].to(device)
        _, amplitude = module(transform(Xb), offsets[gids.to(device)])
        total += float(physics.amplitude_loss(config.loss, amplitude, Xb, config.rate_floor, reduction="sum"))
        count += Xb.numel()
    total, count = dist.all_reduce_sum([total, float(count)], device)
    module.train()
    return total / count


def _save_checkpoint(run_dir, module, optimizer, scheduler, epoch, config, history, patch_log, data, device,
                     seconds):
    ckpt = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "epoch": epoch, "seconds": seconds,
        "model": {k: v.detach().cpu() for k, v in module.state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": _rng_state(device),
        "config": json.dumps({**config.run_dict(), "epochs": config.epochs}),
        "history": json.dumps(history),
        "patch_stats": json.dumps(patch_log),
        "fingerprint": json.dumps(data.fingerprint["fingerprint"]),
    }
    with atomic_output(run_dir / CHECKPOINT) as tmp:
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
    # Logs follow the checkpoint (a kill between the two leaves them one epoch behind,
    # and --resume rewrites them from the checkpoint's history).
    _write_text(run_dir / LOSSES_CSV, _csv_text(history))
    _write_json(run_dir / LOSSES_JSON, {"config": dataclasses.asdict(config), "epochs": history})
    if config.log_patch_stats:
        _write_json(run_dir / PATCH_STATS_JSON, patch_log)


# ----------------------------------------------------------------------------- CLI
CLI_HELP = "train a PtychoPINN model on a dataset (physics-informed, self-supervised)"
CLI_DESCRIPTION = """\
Train the PtychoPINN network on DATA (any file the data layer reads: PtychoPINN NPZ, our
HDF5, a ptychodus product). Writes into RUN: checkpoint.pt (every epoch; --resume continues
from it), losses.csv / losses.json, loss_curve.png, train_config.json, patch_stats.json
(--log-patch-stats) and, at the end, the model bundle RUN/model.

Multi-process (DistributedDataParallel, gloo on CPU, NCCL on GPUs):
  torchrun --nproc_per_node 2 -m ptycho_fast train DATA --out RUN ...
--batch-size is the global batch (split across processes). See docs/training.md."""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    # Defaults are None here (filled from TrainConfig) so that --resume can tell which
    # options the user actually gave.
    p.add_argument("data", metavar="DATA", help="training data file (NPZ, HDF5, ptychodus product)")
    p.add_argument("--out", "-o", required=True, metavar="RUN",
                   help="run directory (created; checkpoint, logs and the model bundle go here)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", "-e", type=int, default=None, help=f"number of epochs (default: {d.epochs})")
    t.add_argument("--batch-size", "-b", type=int, default=None,
                   help=f"groups per step, over all processes (default: {d.batch_size})")
    t.add_argument("--lr", type=float, default=None, help=f"Adam learning rate (default: {d.lr:g})")
    t.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help=f"cosine: anneal to lr*{COSINE_FINAL_FRACTION:g} over the epochs; plateau: halve "
                        f"after {PLATEAU_PATIENCE} epochs without a better validation loss; constant "
                        f"(default: {d.lr_schedule})")
    t.add_argument("--loss", choices=physics.LOSSES, default=None,
                   help=f"poisson: Poisson NLL of the counts; mae: mean absolute error of the "
                        f"amplitudes (default: {d.loss})")
    t.add_argument("--rate-floor", type=float, default=None,
                   help=f"counts added to the predicted rate inside the Poisson log (default: {d.rate_floor:g})")
    t.add_argument("--seed", type=int, default=None,
                   help=f"seed for the model, grouping, split and shuffling (default: {d.seed})")
    t.add_argument("--val-fraction", type=float, default=None,
                   help=f"fraction of the groups held out for validation (default: {d.val_fraction})")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                   help=f"auto: cuda when available (default: {d.device})")
    t.add_argument("--deterministic", action="store_true", default=None,
                   help="torch.use_deterministic_algorithms(True): bit-for-bit repeatable runs")
    t.add_argument("--resume", action="store_true",
                   help=f"continue the run in RUN from its {CHECKPOINT} (its options are reused)")
    t.add_argument("--max-time", type=float, default=None, metavar="MIN",
                   help="time budget in minutes: stop after the epoch that crosses it (the bundle is "
                        "written); the cosine schedule anneals over whichever of --epochs and "
                        "--max-time runs out first (default: no limit)")
    t.add_argument("--grad-clip", type=float, default=None, metavar="NORM",
                   help=f"clip the gradient norm to NORM; 0: off (default: {d.grad_clip:g})")
    t.add_argument("--stop-after-epoch", type=int, default=None, metavar="K",
                   help="stop after epoch K, as if interrupted (a job-slot limit); continue with --resume")
    m = p.add_argument_group("model")
    m.add_argument("--gridsize", type=int, default=None,
                   help=f"groups of gridsize^2 neighbouring positions (default: {d.gridsize})")
    m.add_argument("--n-groups", type=int, default=None,
                   help="number of groups (default: one per position; more oversamples)")
    m.add_argument("--arch", choices=ARCHITECTURES, default=None,
                   help=f"generator: cnn (PtychoPINN's encoder/decoder) or ffno (factorised Fourier "
                        f"layers + a conv refiner) (default: {d.arch})")
    m.add_argument("--input", choices=physics.INPUT_KINDS, default=None,
                   help=f"network input: amplitude (the measured amplitudes X / s, PtychoPINN's) or "
                        f"backprojection (X / s plus each pattern propagated back through the probe: "
                        f"an image aligned with the output, docs/training.md) (default: {d.input})")
    m.add_argument("--width", type=float, default=None,
                   help=f"size multiplier s: cnn conv blocks of 32s, 64s, 128s filters; ffno 32s "
                        f"channels (default: {d.width:g})")
    m.add_argument("--modes", type=int, default=None,
                   help=f"ffno: Fourier modes kept per axis (default: {d.modes})")
    m.add_argument("--blocks", type=int, default=None,
                   help=f"ffno: Fourier blocks (default: {d.blocks})")
    m.add_argument("--amp-activation", choices=AMP_ACTIVATIONS, default=None,
                   help=f"amplitude output activation (default: {d.amp_activation})")
    m.add_argument("--window", choices=WINDOWS, default=None,
                   help=f"object_big stitching window: probe (|probe|^2), central (N/2 block), ones "
                        f"(default: {d.window})")
    m.add_argument("--no-object-big", dest="object_big", action="store_false", default=None,
                   help="skip the gridsize > 1 consistency step")
    m.add_argument("--probe-gain", default=None, metavar="auto|calibrated|fit|G",
                   help=f"probe gain g: calibrated (1), fit (Parseval), a number, or auto (calibrated "
                        "when the data file says its probe is (metadata probe_calibrated = 1, as "
                        f"'ptycho-fast simulate' writes), else fit) (default: {d.probe_gain})")
    m.add_argument("--train-probe-gain", action="store_true", default=None,
                   help="make the probe gain a trainable parameter (starting from --probe-gain)")
    h = p.add_argument_group("monitoring")
    h.add_argument("--log-patch-stats", action="store_true", default=None,
                   help=f"record statistics of the predicted patches (first K batches of each epoch) in "
                        f"RUN/{PATCH_STATS_JSON}, and stop if they collapse")
    h.add_argument("--patch-stats-limit", type=int, default=None, metavar="K",
                   help=f"batches per epoch to record (default: {d.patch_stats_limit})")
    h.add_argument("--collapse-floor", type=float, default=None,
                   help=f"collapse when the variance of the predicted complex patches "
                        f"(var_zero_mean of real + imag) is below this "
                        f"(default: {d.collapse_floor:g})")
    h.add_argument("--allow-degenerate", action="store_true", default=None,
                   help="go on (with a warning) when the predicted amplitude is constant in every "
                        "patch although the data say the object absorbs (otherwise: exit 3)")
    h.add_argument("--quiet", "-q", action="store_true", default=None, help="no progress bar or epoch lines")


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, set[str]]:
    """TrainConfig from parsed arguments, and the names of the options given explicitly."""
    values, explicit = {}, set()
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("data", "out"):
            continue
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
            explicit.add(f.name)
    return TrainConfig(data=args.data, out=args.out, **values), explicit


def cli_main(args: argparse.Namespace) -> int:
    config, explicit = config_from_args(args)
    try:
        result = train(config, resume=args.resume, explicit=explicit)
    except CollapseError as exc:
        print(f"ptycho-fast: error: {exc}", file=sys.stderr)
        return EXIT_COLLAPSE
    if not config.quiet and result.finished and result.history and Dist.from_env().main:
        first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
        print(f"done: {result.epochs_done} epochs, train loss {first:.4g} -> {last:.4g}; "
              f"bundle {result.bundle_dir}")
    return 0
