"""geoseg: satellite scenes to map-ready polygons, tile by tile.

From Python (:mod:`pipeline.api`)::

    import pipeline

    result = pipeline.run("forest", "s2-virginia", out="outputs")
    forest = result.polygons()          # a geopandas.GeoDataFrame
    batch = pipeline.run_batch("forest", series=["slovenia"], out="outputs")

Stages, data flowing one way: :mod:`pipeline.catalog` → :mod:`pipeline.grid` →
:mod:`pipeline.reading` → :mod:`pipeline.masking` → :mod:`pipeline.models` /
:mod:`pipeline.inference` → :mod:`pipeline.stitch` → :mod:`pipeline.vectorize` →
:mod:`pipeline.publish`, planned by :mod:`pipeline.planning`, run by
:mod:`pipeline.orchestrate` and driven from :mod:`pipeline.api` and :mod:`pipeline.cli`.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from pipeline.errors import GeosegError

if TYPE_CHECKING:
    from pipeline.api import (
        load_workflow,
        monitor,
        open_catalog,
        run,
        run_batch,
        scene_from_file,
    )
    from pipeline.orchestrate import RunResult

try:
    __version__ = version("geoseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

#: The Python API, imported when first used: workers import this package and need none of it.
_API = {"run", "run_batch", "monitor", "open_catalog", "load_workflow", "scene_from_file"}


def __getattr__(name: str) -> Any:
    if name in _API:
        from pipeline import api

        return getattr(api, name)
    if name == "RunResult":
        from pipeline.orchestrate import RunResult

        return RunResult
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GeosegError",
    "RunResult",
    "__version__",
    "load_workflow",
    "monitor",
    "open_catalog",
    "run",
    "run_batch",
    "scene_from_file",
]
