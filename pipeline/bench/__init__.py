"""``geoseg bench``: measured speed and memory of the pipeline on generated scenes.

:mod:`.model` measures the model stage (model alone, whole pipeline, TorchGeo's own way, tile
parity); :mod:`.vectorizing` measures polygons (geoseg's block-wise way against the usual
whole-raster way); :mod:`.scenes` generates what both run on; :mod:`.common` holds what they
share. Each measured step runs in its own process, so its peak memory is its own.
"""

from pipeline.bench.common import bench_grid, default_workers
from pipeline.bench.model import bench_model
from pipeline.bench.scenes import write_class_raster, write_scene
from pipeline.bench.vectorizing import bench_vectorize

__all__ = [
    "bench_grid",
    "bench_model",
    "bench_vectorize",
    "default_workers",
    "write_class_raster",
    "write_scene",
]
