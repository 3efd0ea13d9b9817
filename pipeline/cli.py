"""The ``geoseg`` command line: the only module that knows about arguments and exit codes.

Each subcommand parses its options and calls library functions. Errors a user can fix
(:class:`~pipeline.errors.GeosegError`) print ``error: …`` on one line and exit 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline import __version__
from pipeline.errors import ConfigError, GeosegError

#: Catalog used when --catalog is not given and ./data_catalog.yaml does not exist.
PROJECT_CATALOG = Path(__file__).resolve().parents[1] / "data_catalog.yaml"


def default_catalog() -> Path:
    """``./data_catalog.yaml`` if present, else the project's own catalog."""
    here = Path.cwd() / "data_catalog.yaml"
    return here if here.is_file() else PROJECT_CATALOG


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

    run = sub.add_parser(
        "run",
        parents=[catalog_opt],
        help="run a workflow on a scene",
        description=(
            "Run WORKFLOW on a catalog scene and write classes.tif, confidence.tif, "
            "polygons.gpkg and run.json to OUT/WORKFLOW/SCENE/."
        ),
    )
    run.add_argument(
        "workflow", help="workflow name under workflows/ (forest, mining, fire) or a .yaml path"
    )
    run.add_argument("--scene", required=True, metavar="ID", help="catalog id of the scene")
    run.add_argument(
        "--before", metavar="ID", help="catalog id of the pre-event scene (fire, mining)"
    )
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
    run.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="local Dask worker processes, one torch thread each (default: one per core)",
    )
    run.add_argument(
        "--scheduler",
        metavar="ADDR",
        help="use an existing Dask cluster, e.g. tcp://10.0.0.5:8786, instead of a local one",
    )
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary lines")

    cat = sub.add_parser("catalog", help="inspect the scene catalog")
    cat_sub = cat.add_subparsers(dest="catalog_command", required=True, parser_class=_Parser)
    cat_sub.add_parser(
        "list",
        parents=[catalog_opt],
        help="list the catalog's scenes and whether their files exist",
    )
    return parser


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline.catalog import load_catalog
    from pipeline.orchestrate import RunOptions, run
    from pipeline.workflow import load_workflow

    if args.workers and args.scheduler:
        raise ConfigError("--workers sizes the local cluster; it cannot be used with --scheduler")
    workflow = load_workflow(args.workflow).with_overrides(args.tile_size, args.halo)
    catalog = load_catalog(args.catalog or default_catalog())
    progress = not args.quiet and sys.stderr.isatty()
    result = run(
        workflow,
        catalog,
        args.scene,
        args.before,
        RunOptions(out=args.out, workers=args.workers, scheduler=args.scheduler, progress=progress),
    )
    if not args.quiet:
        s = result.summary
        print(
            f"{workflow.name} on {args.scene}: {s['counts']['polygons']} polygons, "
            f"{s['times']['total_s']:.1f} s"
        )
        for c in workflow.classes:
            if c.vectorize:
                info = s["counts"]["classes"][c.name]
                print(
                    f"  {c.name}: {info['polygons']} polygons, "
                    f"{info['polygon_area_m2'] / 1e6:.3f} km²"
                )
        print(f"outputs in {result.folder}")
        for f in result.files:
            print(f"  {f}")
    return 0


def _cmd_catalog_list(args: argparse.Namespace) -> int:
    from pipeline.catalog import load_catalog

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
    """Drop Dask's routine cluster start-up and shutdown messages; keep its errors."""
    return record.levelno >= logging.ERROR or not record.name.startswith("distributed")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geoseg`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_dask)
    try:
        if args.command == "run":
            return _cmd_run(args)
        if args.command == "catalog" and args.catalog_command == "list":
            return _cmd_catalog_list(args)
        parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    except GeosegError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; no output was replaced", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
