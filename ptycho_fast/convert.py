"""``ptycho-fast convert IN OUT [--to npz|h5|ptychodus]``: one dataset, another file format.

Formats (docs/data.md §5): a PtychoPINN NPZ, our HDF5 layout, a ptychodus product with its
diffraction file. IN is recognised by content (``data.load_dataset``; a directory holding
ptychodus' ``product.h5`` is a ptychodus product); OUT's format is ``--to``, else its
suffix (``.npz``, ``.h5`` / ``.hdf5`` = ours), else ptychodus for a directory. A ptychodus
OUT that is a directory (or has no suffix) receives ``product.h5`` + ``diffraction.h5``,
the layout ptychodus' workflow loads; a ``.h5`` name receives that product and
``<stem>-diffraction.h5``.

Lossless for every field both formats hold: the data layer reads into one
:class:`~ptycho_fast.data.PtychoDataset` and writes it out (atomically). What OUT cannot
hold is refused with a :class:`UserError` naming each field (a ptychodus product's name,
comments, losses, bad-pixel mask, OPR modes, ... going to NPZ / HDF5); ``--drop FIELD,...``
(or ``--drop all``) converts without them. Numbers stay numbers: amplitudes are float32 in
every format (a ptychodus file holds their squares, the counts).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .data.dataset import DataWarning, UserError

__all__ = ["convert", "ConvertResult", "target_format", "DROPPABLE", "CLI_HELP", "CLI_DESCRIPTION",
           "add_cli_arguments", "cli_main"]

FORMAT_NAMES = {"npz": "PtychoPINN NPZ", "h5": "ptycho_fast HDF5 file", "ptychodus": "ptychodus product"}
#: fields a ptychodus product holds that NPZ / our HDF5 cannot (``data.ptychodus_only_fields``)
DROPPABLE = ("name", "comments", "polarization", "losses", "position_photon_counts",
             "pattern_photon_counts", "bad_pixels", "opr_modes", "probe_pixel_size",
             "detector_pixel_size")
_SUFFIX = {".npz": "npz", ".h5": "h5", ".hdf5": "h5", ".hdf": "h5"}


@dataclass
class ConvertResult:
    source_format: str
    target_format: str
    written: list[Path]
    summary: str          # the dataset, in words
    dropped: dict[str, str]
    warnings: list[str]


def target_format(out: str | os.PathLike, to: str | None = None) -> str:
    """OUT's format: ``to``, else its suffix, else 'ptychodus' for a directory; UserError when
    it cannot be told or ``to`` contradicts the suffix."""
    out_s = str(out)
    suffix = Path(out_s).suffix.lower()
    by_suffix = _SUFFIX.get(suffix)
    is_dir = Path(out_s).is_dir() or out_s.endswith(os.sep)
    if to is not None:
        if to not in FORMAT_NAMES:
            raise UserError(f"--to {to}: expected one of {', '.join(FORMAT_NAMES)}")
        if (to == "npz" and (by_suffix == "h5" or is_dir)) or (to != "npz" and by_suffix == "npz") \
                or (to == "h5" and is_dir):
            raise UserError(f"--to {to} does not match OUT {out}")
        return to
    if is_dir:
        return "ptychodus"
    if by_suffix is None:
        raise UserError(f"{out}: cannot tell the output format from the name; give --to "
                        f"({', '.join(FORMAT_NAMES)}), or name a directory for a ptychodus product")
    return by_suffix


def _parse_drop(drop) -> set[str]:
    names = set()
    for item in drop or ():
        names.update(n.strip() for n in str(item).split(",") if n.strip())
    unknown = names - set(DROPPABLE) - {"all"}
    if unknown:
        raise UserError(f"--drop {','.join(sorted(unknown))}: unknown field; the fields that can be "
                        f"dropped are {', '.join(DROPPABLE)} (or all)")
    return set(DROPPABLE) if "all" in names else names


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def convert(source: str | os.PathLike, out: str | os.PathLike, to: str | None = None,
            diffraction_path=None, drop=(), pixel_size_m: float | None = None) -> ConvertResult:
    """Convert ``source`` into ``out`` (module doc). ``drop``: field names (or 'all') OUT may
    leave out; ``pixel_size_m``: the object pixel for a source that does not record it (a
    ptychodus OUT needs it). Warnings raised while reading / writing are collected in the
    result (and not shown)."""
    from .data import detect_format, load_dataset, ptychodus_only_fields, save_dataset
    from .data.ptychodus import PRODUCT_FILE, resolve_product_path
    source, out = Path(source), Path(out)
    fmt = target_format(out, to)
    allowed = _parse_drop(drop)
    src_fmt = detect_format(source)
    out_file = out / PRODUCT_FILE if fmt == "ptychodus" and (out.is_dir() or not out.suffix) else out
    if _same_file(resolve_product_path(source) if src_fmt == "ptychodus" else source, out_file):
        raise UserError(f"{out}: is the input file; write the conversion to another file")
    if pixel_size_m is not None and not (0 < pixel_size_m < float("inf")):
        raise UserError(f"--pixel-size {pixel_size_m:g}: expected a positive length in metres")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        dataset = load_dataset(source, lazy=True, diffraction_path=diffraction_path)
        with dataset:
            if pixel_size_m is not None:
                recorded = dataset.metadata.pixel_size_m
                if recorded is not None and recorded != pixel_size_m:
                    raise UserError(f"--pixel-size {pixel_size_m:g}: {source} records the object pixel "
                                    f"as {recorded:g} m")
                dataset.metadata.pixel_size_m = float(pixel_size_m)
            if fmt == "ptychodus" and dataset.metadata.pixel_size_m is None:
                raise UserError(f"{out}: a ptychodus product holds positions in metres, and {source} "
                                "does not record the object pixel size (pixel_size_m); give it with "
                                "--pixel-size METRES")
            lost = {} if fmt == "ptychodus" else ptychodus_only_fields(dataset.metadata, dataset.N)
            refused = {k: v for k, v in lost.items() if k not in allowed}
            if refused:
                fields = ", ".join(f"{k} ({v})" for k, v in refused.items())
                raise UserError(f"{out}: a {FORMAT_NAMES[fmt]} cannot hold these fields of {source}: "
                                f"{fields}; convert with --drop {','.join(refused)} (or --drop all) "
                                "to leave them out")
            written = save_dataset(dataset, out, fmt)
            summary = dataset.summary()
    others = [w for w in caught if not issubclass(w.category, DataWarning)]
    for w in others:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    written = list(written) if isinstance(written, tuple) else [Path(written)]
    return ConvertResult(src_fmt, fmt, [Path(p) for p in written], summary, lost,
                         [str(w.message) for w in caught if issubclass(w.category, DataWarning)])


# ---------------------------------------------------------------------------- CLI
CLI_HELP = "convert a dataset between PtychoPINN NPZ, our HDF5 and a ptychodus product"
CLI_DESCRIPTION = """\
Convert a dataset between a PtychoPINN NPZ, our HDF5 layout and a ptychodus product
(product + diffraction file), losslessly for every field both formats hold. IN is
recognised by its content (a directory holding ptychodus' product.h5 counts as a product).
OUT's format is --to, else its suffix (.npz; .h5/.hdf5 = ours), else ptychodus for a
directory: a directory OUT receives product.h5 + diffraction.h5, the layout ptychodus'
workflow loads; a .h5 OUT with --to ptychodus receives that product and
<stem>-diffraction.h5. Positions are converted between our pixel convention and
ptychodus' metres exactly (docs/data.md, sections 1 and 5.3).

Fields OUT cannot hold are an error naming each one; --drop FIELD,... (or --drop all)
converts without them. Output files are written atomically.

examples:
  ptycho-fast convert scan.npz scan.h5
  ptycho-fast convert scan.npz ptychodus_in/ --to ptychodus
  ptycho-fast convert ptychodus_run/ scan.npz --drop name,comments,losses
"""


def add_cli_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="data file: PtychoPINN NPZ, our HDF5, a ptychodus "
                   "product (or a directory holding product.h5)")
    p.add_argument("output", metavar="OUT", help="output file, or a directory for a ptychodus product")
    p.add_argument("--to", choices=tuple(FORMAT_NAMES), default=None,
                   help="output format (default: from OUT's suffix; a directory: ptychodus)")
    p.add_argument("--diffraction", metavar="FILE", default=None,
                   help="IN's ptychodus diffraction file (default: the one the product names, "
                        "<stem>-diffraction.h5 or diffraction.h5 beside it)")
    p.add_argument("--drop", metavar="FIELDS", action="append", default=[],
                   help=f"comma-separated fields OUT may leave out ({', '.join(DROPPABLE)}, or all); "
                        "default: none, a field OUT cannot hold is an error")
    p.add_argument("--pixel-size", type=float, default=None, metavar="M",
                   help="object pixel size in metres, for an IN that does not record it (a ptychodus "
                        "OUT needs it)")
    p.add_argument("--quiet", "-q", action="store_true", help="print nothing but errors")


def cli_main(args: argparse.Namespace) -> int:
    result = convert(args.input, args.output, to=args.to, diffraction_path=args.diffraction,
                     drop=args.drop, pixel_size_m=args.pixel_size)
    if not args.quiet:
        for message in result.warnings:
            print(f"ptycho-fast convert: warning: {message}", file=sys.stderr)
        dropped = [k for k in result.dropped]
        note = f"; left out: {', '.join(dropped)}" if dropped else ""
        print(f"{args.input} ({FORMAT_NAMES[result.source_format]}) -> "
              f"{', '.join(str(p) for p in result.written)} ({FORMAT_NAMES[result.target_format]}): "
              f"{result.summary}{note}")
    return 0
