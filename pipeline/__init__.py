"""geoseg: satellite scenes to map-ready polygons, tile by tile.

Stages, data flowing one way: :mod:`pipeline.catalog` → :mod:`pipeline.grid` →
:mod:`pipeline.reading` → :mod:`pipeline.models` / :mod:`pipeline.inference` →
:mod:`pipeline.stitch` → :mod:`pipeline.vectorize` → :mod:`pipeline.publish`, run by
:mod:`pipeline.orchestrate` and driven from :mod:`pipeline.cli`.
"""

from importlib.metadata import PackageNotFoundError, version

from pipeline.errors import GeosegError

try:
    __version__ = version("geoseg")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["GeosegError", "__version__"]
