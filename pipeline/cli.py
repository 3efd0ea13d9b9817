"""The ``geoseg`` command line: the only module that knows about arguments and exit codes.

Each subcommand parses its options and calls library functions. Errors a user can fix
(:class:`~pipeline.errors.GeosegError`) print ``error: …`` on one line and exit 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from pipeline import __version__
from pipeline.errors import ClusterLostError, ConfigError, GeosegError, SeriesBusyError
from pipeline.gdal_messages import route_gdal_messages

#: Exit status when another monitor holds the series: sysexits' EX_TEMPFAIL, "try again later".
BUSY = 75
#: Exit statuses after Ctrl-C (SIGINT) and SIGTERM: 128 + the signal's number, as shells report.
INTERRUPTED, TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM
#: Exit status when the reader of our output closed it: 128 + SIGPIPE, as shells report.
PIPE_CLOSED = 128 + signal.SIGPIPE
#: Exit status when a run's Dask scheduler went away mid-run: sysexits' EX_UNAVAILABLE.
CLUSTER_LOST = 69


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _bbox_numbers(text: str) -> tuple[float, ...]:
    """``WEST,SOUTH,EAST,NORTH`` as four numbers (their order is checked with the rest)."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected WEST,SOUTH,EAST,NORTH, got {text!r}")
    return values


def _names(text: str) -> list[str]:
    """``a,b,c`` as names (checked against the known bands with the rest of the scene)."""
    names = [v.strip() for v in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(f"expected NAME,NAME,…, got {text!r}")
    return names


def _numbers(text: str) -> float | list[float]:
    """``F`` as a number, ``F,F,…`` as a list of them."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers, got {text!r}") from None
    return values[0] if len(values) == 1 else values


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors follow the ``error: …``, exit 2 convention."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print a one-line error that points at --help, exit 2."""
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, subcommands included."""
    catalog_opt = _Parser(add_help=False)
    catalog_opt.add_argument(
        "--catalog",
        type=Path,
        default=None,
        metavar="PATH",
        help="scene catalog (default: ./data_catalog.yaml, else the project's data_catalog.yaml)",
    )

    parser = _Parser(
        prog="geoseg",
        description="Satellite scenes to map-ready polygons of forest, mining and burn scars.",
    )
    parser.add_argument("--version", action="version", version=f"geoseg {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    _add_run(sub, catalog_opt)
    _add_monitor(sub, catalog_opt)
    _add_train(sub, catalog_opt)
    _add_evaluate(sub)
    _add_bench(sub)
    _add_catalog(sub, catalog_opt)
    return parser


def _add_run(sub: Any, catalog_opt: argparse.ArgumentParser) -> None:
    """The ``run`` subcommand."""
    run = sub.add_parser(
        "run",
        parents=[catalog_opt],
        help="run a workflow on a scene, or on many as one batch",
        description=(
            "Run WORKFLOW on a catalog scene and write classes.tif (with classes.qml and "
            "classes.tif.aux.xml), confidence.tif, polygons.gpkg, preview.png, run.json and "
            "item.json (and on request instances.tif, seams.tif) to OUT/WORKFLOW/SCENE/. "
            "Several --scene, --series or --all make a batch: one cluster and one model load "
            "for every scene, each scene's outputs as a single run writes them, a scene that "
            "fails or is too cloudy reported and skipped, and OUT/WORKFLOW/batch.json listing "
            "every scene with its status, time and counts. Scenes whose outputs are complete "
            "for the same inputs are not run again."
        ),
        epilog=(
            "exit status: 0 every scene done; 2 bad input, nothing run; in a batch, 3 some "
            "scenes unusable (too cloudy, or no change to show) and none failed, 4 some "
            "scenes failed; 69 the --scheduler went away mid-run (run again to resume); "
            "130 and 143 stopped by Ctrl-C or SIGTERM (no output replaced)"
        ),
    )
    run.add_argument(
        "workflow", help="workflow name under workflows/ (forest, mining, fire) or a .yaml path"
    )
    _add_scene_choice(run)
    run.add_argument(
        "--out",
        type=Path,
        default=Path("outputs"),
        metavar="DIR",
        help="output root (default: outputs/)",
    )
    run.add_argument(
        "--tile-size",
        type=_positive,
        metavar="N",
        help="block edge in pixels (default: the workflow's tile_size)",
    )
    run.add_argument(
        "--halo",
        type=_non_negative,
        metavar="N",
        help="context pixels read around each block (default: the workflow's halo)",
    )
    _add_cluster_options(run)
    run.add_argument(
        "--instances",
        action="store_true",
        help="also write instances.tif: each pixel's polygon instance_id (0: none)",
    )
    run.add_argument(
        "--seams",
        action="store_true",
        help="also write seams.tif: 1 where overlapping tiles predict different classes",
    )
    run.add_argument(
        "--bbox",
        type=_bbox_numbers,
        metavar="WEST,SOUTH,EAST,NORTH",
        help="run on this rectangle of each scene only, in the scene's CRS (or --bbox-crs), "
        "its edges moved out to whole pixels and clipped to the scene",
    )
    run.add_argument(
        "--bbox-crs",
        metavar="CRS",
        help="CRS of --bbox, e.g. EPSG:4326 (default: the scene's)",
    )
    # "-74.7,-8.6,…" is a value of --bbox, not an option: argparse only knows bare numbers.
    run._negative_number_matcher = re.compile(r"^-\d*\.?\d+(?:[eE][-+]?\d+)?(?:,|$)")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")
    _add_file_scene(run)


def _add_file_scene(run: argparse.ArgumentParser) -> None:
    """Options that make ``--scene`` and ``--before`` files, described on the command line."""
    files = run.add_argument_group(
        "a scene given as a file, without a catalog",
        "With --bands, --scene (and --before) are paths to multi-band rasters, described by "
        "these options as a catalog entry would describe them; the outputs go to "
        "OUT/WORKFLOW/NAME/, NAME the file's name without its suffix. One scene at a time.",
    )
    files.add_argument(
        "--bands",
        type=_names,
        metavar="NAME,…",
        help="the files' band names in band order, e.g. blue,green,red,nir,swir22",
    )
    files.add_argument(
        "--scale",
        type=_numbers,
        metavar="F[,F…]",
        help="reflectance = value × scale + offset: one for every band, or one per band "
        "(default 1; 0.0001 for Sentinel-2 and Landsat stored ×10000)",
    )
    files.add_argument("--offset", type=_numbers, metavar="F[,F…]", help="(default 0)")
    files.add_argument("--nodata", type=float, metavar="V", help="(default: the file's)")
    files.add_argument(
        "--sensor",
        metavar="NAME",
        help="e.g. sentinel-2-l1c, sentinel-2-l2a, landsat-8-l1: lets the cloud networks run",
    )
    files.add_argument("--acquired", metavar="YYYY-MM-DD", help="the scene's date")


def _add_monitor(sub: Any, catalog_opt: argparse.ArgumentParser) -> None:
    """The ``monitor`` subcommand."""
    mon = sub.add_parser(
        "monitor",
        parents=[catalog_opt],
        help="take a series' new scenes into its change alerts (safe to schedule)",
        description=(
            "Run WORKFLOW on each scene of a catalog series that the series' ledger has not "
            "taken, oldest first, in one batch (a two-date workflow: each after the latest "
            "usable scene), and update OUT/WORKFLOW/SERIES/: monitor.gpkg (alerts layer, "
            "timeline and ledger tables), the state raster and timeline.png. Each scene's own "
            "outputs stay in OUT/WORKFLOW/SCENE/. A pixel under cloud keeps its last observed "
            "class; an alert is low until a later clear observation confirms it (see the "
            "workflow's monitor: settings). One monitor runs per series at a time; a run "
            "killed mid-scene and started again finishes that scene once."
        ),
        epilog=(
            "exit status: 0 done (or nothing new); 2 bad input, nothing changed; 4 some "
            "scenes failed (reported; the next run tries them again); 69 the --scheduler went "
            "away (the next run resumes); 75 another monitor is updating the series (nothing "
            "changed; try again later); 130 and 143 stopped by Ctrl-C or SIGTERM"
        ),
    )
    mon.add_argument(
        "workflow", help="workflow name under workflows/ (forest, mining, fire) or a .yaml path"
    )
    mon.add_argument("--series", required=True, metavar="NAME", help="catalog series to follow")
    mon.add_argument("--out", type=Path, default=Path("outputs"), metavar="DIR", help="output root")
    _add_cluster_options(mon)
    mon.add_argument("--quiet", action="store_true", help="print only problems")


def _add_scene_choice(parser: argparse.ArgumentParser) -> None:
    """``run``'s scenes: ``--scene`` (with ``--before``), ``--series`` or ``--all``."""
    parser.add_argument(
        "--scene",
        action="append",
        default=[],
        metavar="ID",
        help="catalog id of a scene; repeat for a batch",
    )
    parser.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="ID",
        help="catalog id of the pre-event scene (fire, mining; forest: adds forest loss); "
        "in a batch, one per --scene, in order",
    )
    parser.add_argument(
        "--series",
        action="append",
        default=[],
        metavar="NAME",
        help="every scene of a catalog series, oldest first; a two-date workflow pairs each "
        "with the latest usable scene before it (repeatable)",
    )
    parser.add_argument(
        "--all",
        action="store_true",
        help="every catalog scene that has the bands the workflow reads (two-date workflows: "
        "every series of two such scenes or more)",
    )


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Where a run's tasks go: ``--workers``, ``--scheduler`` and ``--one-model``."""
    parser.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="local Dask worker processes, one torch thread each (default: one per core)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="use an existing Dask cluster, e.g. tcp://10.0.0.5:8786, instead of a local one",
    )
    parser.add_argument(
        "--one-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one worker holds the model and runs every forward pass, in batches; the others "
        "read and mask the tiles for it (default: on when the model runs on a CUDA GPU)",
    )


def _check_cluster_options(args: argparse.Namespace) -> None:
    """``--workers`` and ``--scheduler`` exclude each other."""
    if args.workers and args.scheduler:
        raise ConfigError("--workers sizes the local cluster; it cannot be used with --scheduler")


def _add_train(sub: Any, catalog_opt: argparse.ArgumentParser) -> None:
    """The ``train`` subcommand."""
    train = sub.add_parser(
        "train",
        parents=[catalog_opt],
        help="train a workflow's TorchGeo network on labelled scenes",
        description=(
            "Train the `kind: torchgeo` network of WORKFLOW on chips sampled from catalog "
            "scenes and write a checkpoint that carries its model card."
        ),
    )
    train.add_argument("workflow", help="workflow name under workflows/ or a .yaml path")
    train.add_argument(
        "--scene",
        action="append",
        required=True,
        metavar="ID",
        help="catalog id of a training scene (repeat for several)",
    )
    train.add_argument(
        "--before",
        action="append",
        default=[],
        metavar="ID",
        help="pre-event scene of each --scene, in the same order (two-date models)",
    )
    train.add_argument(
        "--labels",
        action="append",
        required=True,
        metavar="LABELS",
        help="class labels: a raster mask or polygons (GeoPackage …); one for all scenes or "
        "one per --scene",
    )
    train.add_argument("--val-scene", metavar="ID", help="scene scored after training")
    train.add_argument("--val-before", metavar="ID", help="pre-event scene of --val-scene")
    train.add_argument(
        "--val-labels", metavar="LABELS", help="labels of --val-scene (default: the first --labels)"
    )
    train.add_argument(
        "--label-field",
        default="class",
        metavar="NAME",
        help="polygon field holding the class value (default: class)",
    )
    train.add_argument("--epochs", type=_positive, default=10, metavar="N", help="default: 10")
    train.add_argument(
        "--steps-per-epoch", type=_positive, default=50, metavar="N", help="default: 50"
    )
    train.add_argument("--batch-size", type=_positive, default=8, metavar="N", help="default: 8")
    train.add_argument(
        "--chip-size",
        type=_positive,
        default=128,
        metavar="N",
        help="training chip edge in pixels (default: 128)",
    )
    train.add_argument("--lr", type=float, default=1e-3, metavar="F", help="default: 0.001")
    train.add_argument("--seed", type=_non_negative, default=0, metavar="N", help="default: 0")
    train.add_argument(
        "--weights",
        metavar="NAME",
        help="TorchGeo pretrained backbone weights, e.g. ResNet18_Weights.SENTINEL2_ALL_MOCO, "
        "read from the torch hub cache (never downloaded)",
    )
    train.add_argument("--licence", default="unspecified", help="licence recorded in the card")
    train.add_argument(
        "--out", type=Path, required=True, metavar="MODEL.ckpt", help="checkpoint to write"
    )
    train.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (a bar on a terminal, a line per epoch elsewhere) or summary",
    )


def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand."""
    ev = sub.add_parser(
        "evaluate",
        help="score a prediction against reference labels",
        description=(
            "Per-class IoU, F1, precision and recall of a prediction (classes.tif or "
            "polygons.gpkg) against truth (a label raster or polygons)."
        ),
    )
    ev.add_argument("--pred", required=True, metavar="PATH", help="classes.tif or polygons.gpkg")
    ev.add_argument("--truth", required=True, metavar="PATH", help="label raster or polygons")
    ev.add_argument(
        "--pred-map",
        metavar="SPEC",
        help="recode predicted classes first, e.g. '0-2=0,3-6=1' (fire severities to burned)",
    )
    ev.add_argument("--truth-map", metavar="SPEC", help="recode truth classes first")
    ev.add_argument(
        "--label-field",
        default="class",
        metavar="NAME",
        help="polygon field holding the class value (default: class)",
    )
    ev.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _add_bench(sub: Any) -> None:
    """The ``bench`` subcommand."""
    bench = sub.add_parser(
        "bench",
        help="measure speed and memory on generated scenes",
        description=(
            "Generate scenes of SIZE×SIZE pixels and measure, each step in its own process with "
            "its peak memory: the model stage (forward passes alone on the pipeline's tiles, the "
            "whole pipeline from reading to GeoPackage, TorchGeo's own RasterDataset + "
            "GridGeoSampler + DataLoader way, and class agreement between tile sizes 256 and "
            "1024) and vectorizing (geoseg's block-wise way against the usual whole-raster way)."
        ),
    )
    bench.add_argument(
        "--size", type=_positive, default=2048, metavar="N", help="scene edge (default 2048)"
    )
    bench.add_argument(
        "--part",
        choices=("all", "model", "vectorize"),
        default="all",
        help="what to measure (default: all)",
    )
    bench.add_argument(
        "--model",
        metavar="CKPT",
        help="checkpoint written by geoseg train (default: an untrained U-Net/ResNet18, "
        "6 bands; tile parity says little with random weights)",
    )
    bench.add_argument(
        "--workers", type=_positive, metavar="N", help="Dask worker processes (default: cores)"
    )
    bench.add_argument(
        "--tile-size",
        type=_positive,
        default=None,
        metavar="PX",
        help="pipeline block edge (default: 1024 with --engine openvino, 768 with torch, whose "
        "workers would pass 1.5 GiB at 1024)",
    )
    bench.add_argument(
        "--halo",
        type=_non_negative,
        default=None,
        metavar="PX",
        help="context read around each block and cut off after the forward pass (default: 32)",
    )
    bench.add_argument(
        "--engine",
        choices=("auto", "torch", "openvino"),
        default="auto",
        help="what runs the pipeline's and model-only forward passes, chosen as a workflow's "
        "engine: auto is (the peer always uses torch; default: auto)",
    )
    bench.add_argument(
        "--precision",
        choices=("auto", "f32", "bf16"),
        default="auto",
        help="forward-pass arithmetic, as a workflow's precision: auto is; bf16 needs "
        "--engine openvino (default: auto)",
    )
    bench.add_argument(
        "--one-model",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="one worker holds the model and the others feed it; the model alone then runs in "
        "one process, in the same batches (default: on when the model runs on a CUDA GPU)",
    )
    bench.add_argument("--no-peer", action="store_true", help="skip TorchGeo's way")
    bench.add_argument(
        "--no-mask", action="store_true", help="skip the cloud mask alone (mask_only_s)"
    )
    bench.add_argument("--no-baseline", action="store_true", help="skip the whole-raster baseline")
    bench.add_argument("--json", action="store_true", help="print JSON")


def _add_catalog(sub: Any, catalog_opt: argparse.ArgumentParser) -> None:
    """The ``catalog`` subcommand."""
    cat = sub.add_parser("catalog", help="inspect the scene catalog")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, parser_class=_Parser)
    cat_sub.add_parser(
        "list",
        parents=[catalog_opt],
        help="list the catalog's scenes and whether their files exist",
    )


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.api import open_catalog, run
    from pipeline.workflow import load_workflow

    _check_cluster_options(args)
    if not (args.scene or args.series or args.all):
        raise ConfigError("give --scene ID (repeat it for a batch), --series NAME or --all")
    workflow = load_workflow(args.workflow).with_overrides(args.tile_size, args.halo)
    files = _file_scene_options(args)
    if len(args.scene) > 1 or args.series or args.all:
        return _cmd_batch(args, workflow)
    if len(args.before) > 1:
        raise ConfigError(f"{len(args.before)} --before for one --scene; give one")
    result = run(
        workflow,
        args.scene[0],
        args.before[0] if args.before else None,
        catalog=None if files else open_catalog(args.catalog),
        out=args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        one_model=args.one_model,
        progress=not args.quiet and sys.stderr.isatty(),
        instances=args.instances,
        seams=args.seams,
        bbox=args.bbox,
        bbox_crs=args.bbox_crs,
        **files,
    )
    if not args.quiet:
        s = result.summary
        print(
            f"{workflow.name} on {result.folder.name}: {s['counts']['polygons']} polygons, "
            f"{s['times']['total_s']:.1f} s"
        )
        for name, info in s["counts"]["polygon_classes"].items():
            print(f"  {name}: {info['polygons']} polygons, {info['polygon_area_m2'] / 1e6:.3f} km²")
        print(f"outputs in {result.folder}")
        for f in result.files:
            print(f"  {f}")
    return 0


def _file_scene_options(args: argparse.Namespace) -> dict[str, Any]:
    """The description of a scene given as a file (``--bands`` …); {} for catalog ids.

    The options are :data:`pipeline.api.FILE_OPTIONS` but ``series``: ``--series`` names
    a catalog series here.
    """
    from pipeline.api import FILE_OPTIONS
    from pipeline.reading import is_raster

    described = [k for k in FILE_OPTIONS if k != "series"]
    given = {k: getattr(args, k) for k in described if getattr(args, k) is not None}
    if given and "bands" not in given:
        flags = ", ".join(f"--{k}" for k in given)
        verb = "describes" if len(given) == 1 else "describe"
        raise ConfigError(f"{flags} {verb} a scene given as a file: add --bands NAME,…")
    if not given:
        for sid in (*args.scene, *args.before):
            if is_raster(sid) and Path(sid).is_file():
                raise ConfigError(
                    f"--scene and --before are catalog ids; to run the file {sid} without a "
                    "catalog, give its band names in band order with --bands (and --scale …)"
                )
        return {}
    if len(args.scene) != 1 or args.series or args.all or args.catalog:
        raise ConfigError(
            "--bands runs one --scene given as a file (and its --before); for several "
            "scenes, a series or a catalog, describe the files in a catalog"
        )
    return given


def _cmd_batch(args: argparse.Namespace, workflow: Any) -> int:
    """``geoseg run`` with several scenes: one batch; its exit status says how it went."""
    from pipeline.api import run_batch

    def heard(outcome: Any) -> None:
        if not args.quiet or outcome.status != "done":
            print(outcome.line(), file=sys.stdout if outcome.status == "done" else sys.stderr)

    record = run_batch(
        workflow,
        scenes=args.scene,
        befores=args.before,
        series=args.series,
        every=args.all,
        catalog=args.catalog,
        out=args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        one_model=args.one_model,
        instances=args.instances,
        seams=args.seams,
        bbox=args.bbox,
        bbox_crs=args.bbox_crs,
        on_outcome=heard,
        on_left_out=None if args.quiet else lambda line: print(f"left out {line}"),
    )
    n = record.counts()
    if not args.quiet:
        print(
            f"{workflow.name}: {len(record.outcomes)} scenes, {n['done']} done, "
            f"{n['unusable']} unusable, {n['failed']} failed in {record.total_s:.1f} s "
            f"(cluster and model {record.setup_s:.1f} s); table in {record.path}"
        )
    return 4 if n["failed"] else 3 if n["unusable"] else 0


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.api import monitor

    _check_cluster_options(args)

    def heard(item: Any, row: dict[str, Any]) -> None:
        failed = getattr(item, "status", "") == "failed" and not row
        if failed:
            print(f"{item.scene}: failed: {item.message}", file=sys.stderr)
        elif not args.quiet:
            print(_monitor_line(item, row))

    report = monitor(
        args.workflow,
        args.series,
        catalog=args.catalog,
        out=args.out,
        workers=args.workers,
        scheduler=args.scheduler,
        one_model=args.one_model,
        on_scene=heard,
    )
    if not args.quiet:
        alerts = ", ".join(f"{n} {k}" for k, n in sorted(report.alerts.items())) or "none"
        if report.nothing_new:
            print(f"series {args.series}: nothing new; nothing changed (alerts: {alerts})")
        else:
            print(
                f"series {args.series}: {len(report.taken)} scenes taken, "
                f"{len(report.failed)} failed in {report.seconds:.1f} s; alerts: {alerts}; "
                f"see {report.folder / 'monitor.gpkg'}"
            )
    return 4 if report.failed else 0


def _monitor_line(row: Any, timeline: dict[str, Any]) -> str:
    """One recorded scene, as ``geoseg monitor`` prints it."""
    head = f"{row.scene} ({row.acquired or 'no date'}): {row.status}"
    if row.status != "done":
        return f"{head}: {row.message}" if row.message else head
    new = timeline.get("new_alerts_km2") or 0.0
    confirmed = timeline.get("confirmed_km2") or 0.0
    masked = timeline.get("masked_fraction") or 0.0
    return f"{head}, {masked:.0%} masked, new alerts {new:.3f} km², confirmed {confirmed:.3f} km²"


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.catalog import default_catalog, load_catalog
    from pipeline.training import Sample, TrainOptions, train
    from pipeline.workflow import load_workflow

    workflow = load_workflow(args.workflow)
    catalog = load_catalog(args.catalog or default_catalog())
    scenes = args.scene
    if args.before and len(args.before) != len(scenes):
        raise ConfigError(
            f"{len(args.before)} --before for {len(scenes)} --scene; give one per scene, in order"
        )
    if len(args.labels) not in (1, len(scenes)):
        raise ConfigError(
            f"{len(args.labels)} --labels for {len(scenes)} --scene; give one for all or one each"
        )
    labels = args.labels * len(scenes) if len(args.labels) == 1 else args.labels
    befores = args.before or [None] * len(scenes)
    for path in {*labels, *([args.val_labels] if args.val_labels else [])}:
        if "://" not in path and not Path(path).is_file():
            raise ConfigError(f"labels file not found: {path}")
    samples = [
        Sample(catalog.scene(s), catalog.scene(b) if b else None, lab)
        for s, b, lab in zip(scenes, befores, labels, strict=True)
    ]
    validation = None
    if args.val_scene:
        validation = Sample(
            catalog.scene(args.val_scene),
            catalog.scene(args.val_before) if args.val_before else None,
            args.val_labels or labels[0],
        )
    elif args.val_before or args.val_labels:
        raise ConfigError("--val-before and --val-labels need --val-scene")
    import lightning.pytorch  # noqa: F401  (it sets its loggers' levels when imported)

    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    options = TrainOptions(
        epochs=args.epochs,
        steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size,
        chip_size=args.chip_size,
        lr=args.lr,
        seed=args.seed,
        label_field=args.label_field,
        weights=args.weights,
        licence=args.licence,
        progress=not args.quiet and sys.stderr.isatty(),
        on_epoch=None if args.quiet or sys.stderr.isatty() else _print_epoch,
    )
    result = train(workflow, samples, args.out, validation, options)
    if not args.quiet:
        m = result.card.metrics
        first, last = m.get("loss_first", float("nan")), m.get("loss_last", float("nan"))
        print(
            f"trained {result.card.arch}/{result.card.backbone} for {len(result.losses)} steps: "
            f"loss {first:.3f} -> {last:.3f}"
        )
        for key, value in m.items():
            if key.startswith("val_"):
                print(f"  {key}: {value:.3f}")
        print(f"checkpoint: {args.out}")
    return 0


def _print_epoch(epoch: int, epochs: int, loss: float) -> None:
    """Training's progress where no progress bar can be drawn (a log, a pipe)."""
    print(f"epoch {epoch}/{epochs}: loss {loss:.3f}", flush=True)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from pipeline.evaluate import evaluate, format_table, parse_class_map

    for flag, path in (("--pred", args.pred), ("--truth", args.truth)):
        if "://" not in path and not Path(path).exists():
            raise ConfigError(f"{flag} file not found: {path}")
    report = evaluate(
        args.pred,
        args.truth,
        pred_map=parse_class_map(args.pred_map) if args.pred_map else None,
        truth_map=parse_class_map(args.truth_map) if args.truth_map else None,
        label_field=args.label_field,
    )
    if args.json:
        print(json.dumps(report.to_dict(), allow_nan=False, indent=2))
    else:
        print(format_table(report))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import json

    from pipeline.bench import bench_model, bench_vectorize, default_workers
    from pipeline.bench.model import HALO, describe

    workers = args.workers or default_workers()
    if args.precision == "bf16" and args.engine != "openvino":
        raise ConfigError("--precision bf16 needs --engine openvino")
    result: dict[str, object] = {}
    if args.part in ("all", "model"):
        result |= bench_model(
            args.size,
            workers,
            model=args.model,
            tile=args.tile_size,
            halo=HALO if args.halo is None else args.halo,
            peer=not args.no_peer,
            mask=not args.no_mask,
            engine=args.engine,
            precision=args.precision,
            one_model=args.one_model,
        )
    if args.part in ("all", "vectorize"):
        result |= bench_vectorize(args.size, workers, baseline=not args.no_baseline)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


def _cmd_catalog_list(args: argparse.Namespace) -> int:
    from pipeline.catalog import default_catalog, load_catalog

    catalog = load_catalog(args.catalog or default_catalog())
    print(f"catalog: {catalog.path}")
    rows = []
    for sid in catalog.ids():
        entry = catalog.entries[sid]
        bands = entry.bands if entry.bands is not None else tuple(entry.assets or ())
        problem = catalog.available(sid)
        rows.append(
            (
                sid,
                str(entry.acquired or "-"),
                entry.sensor or "-",
                entry.series or "-",
                ",".join(bands),
                "ok" if problem is None else "missing",
            )
        )
    header = ("scene", "acquired", "sensor", "series", "bands", "files")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    return 0


def _quiet_dask(record: logging.LogRecord) -> bool:
    """Drop Dask's routine cluster start-up and shutdown messages; keep its errors.

    But for its client's failed reconnections to a scheduler that went away: the run says
    so itself, in one line (:func:`pipeline.orchestrate.cluster.scheduler_lost`). Once a
    signal stops the run, nothing from Dask or the Tornado and asyncio loops it runs on
    reaches stderr: a stop that lands while Dask's ``sync`` waits makes its loop log a
    traceback of its own.
    """
    if record.name.startswith(("tornado", "asyncio")):
        return not STOPPED_BY
    if not record.name.startswith("distributed"):
        return True
    if STOPPED_BY:  # stopped on purpose: what breaks as the cluster goes is expected
        return False
    if record.levelno < logging.ERROR or record.getMessage().startswith("Failed to reconnect"):
        return False
    lost = record.exc_info[1] if record.exc_info else None
    return not isinstance(lost, (OSError, asyncio.CancelledError))


#: The signals that asked the run to stop, the first first; empty while none has. From the
#: first on, Dask's complaints about its cluster going away are expected, and kept off
#: stderr (:func:`_quiet_dask`).
STOPPED_BY: list[int] = []


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C's KeyboardInterrupt.

    A KeyboardInterrupt subclass, so that everything that cleans up after Ctrl-C (the
    staging's scratch files, the cluster) cleans up after a stop from systemd, Slurm or
    Kubernetes too, where Python's default would end the process on the spot.
    """


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Signals to stop raise inside the block: SIGTERM :class:`Terminated`, SIGINT as ever.

    Both note the stop (:data:`STOPPED_BY`); the handlers before are put back.

    Only in the main thread, the one Python delivers signals to (``main`` called from
    another thread, as a test may, keeps the handler it has).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        STOPPED_BY.append(signum)
        raise Terminated

    def interrupt(signum: int, frame: FrameType | None) -> None:
        STOPPED_BY.append(signum)
        raise KeyboardInterrupt

    STOPPED_BY.clear()
    before = signal.signal(signal.SIGTERM, stop), signal.signal(signal.SIGINT, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before[0])
        signal.signal(signal.SIGINT, before[1])


def _stopped(signum: int) -> int:
    """Report a stop by ``signum`` on stderr, which it may have found captured; its status."""
    from pipeline.publish import restore_stderr

    restore_stderr()
    if signum == signal.SIGTERM:
        print("error: terminated (SIGTERM); no output was replaced", file=sys.stderr)
        return TERMINATED
    print("error: interrupted; no output was replaced", file=sys.stderr)
    return INTERRUPTED


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geoseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from pipeline.reading import gdal_cache_setting

    # Before GDAL first reads: the client gets the block cache its workers get.
    os.environ["GDAL_CACHEMAX"] = gdal_cache_setting()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_dask)
    route_gdal_messages()
    try:
        with _sigterm_as_interrupt():
            if args.command == "run":
                return _cmd_run(args)
            if args.command == "monitor":
                return _cmd_monitor(args)
            if args.command == "train":
                return _cmd_train(args)
            if args.command == "evaluate":
                return _cmd_evaluate(args)
            if args.command == "bench":
                return _cmd_bench(args)
            if args.command == "catalog" and args.catalog_command == "list":
                return _cmd_catalog_list(args)
            parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    except SeriesBusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return BUSY
    except ClusterLostError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return CLUSTER_LOST
    except GeosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # The reader went away (`geoseg catalog list | head`): end quietly, as `ls` does.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return PIPE_CLOSED
    except Terminated:
        return _stopped(signal.SIGTERM)
    except KeyboardInterrupt:
        return _stopped(signal.SIGINT)
    except SystemExit:
        # Lightning ends a fit that a signal stopped with sys.exit(1), after its clean-up.
        if not STOPPED_BY:
            raise
        return _stopped(STOPPED_BY[0])
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
