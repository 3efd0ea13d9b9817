"""The cloud and cloud-shadow networks of ``ukis-csmask``, run by OpenVINO.

``ukis-csmask`` (DLR, Apache 2.0; Wieland, Li and Martinis 2019, Remote Sensing of
Environment 230) ships U-Nets with an EfficientNet-B4 encoder, trained on SPARCS, CloudSEN12+
and samples of its authors for Sentinel-2 and Landsat 8/9, as ONNX files: for Level-1C
(top-of-atmosphere) and Level-2A (surface) reflectance, on six bands (blue, green, red, NIR,
SWIR 1.6 and 2.2 µm) or four (blue to NIR), at about 30 m. Classes: 0 clear, 1 cloud,
2 cloud shadow. We read the package's ONNX files and normalization statistics and run them
with OpenVINO, which geoseg already uses, rather than through the package's own wrapper,
which needs onnxruntime and works on whole scenes in memory.

Why these networks and not ``s2cloudless`` or a threshold: ``BENCHMARKS.md`` ("Cloud masks").
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ModelError

#: Cells on a side of the tiles the networks were trained on, and run on.
TILE_CELLS = 256
#: Cells by which neighbouring tiles overlap, their answers blended across it.
OVERLAP_CELLS = 64
#: The package that ships the networks.
PACKAGE = "ukis_csmask"


def package_folder() -> Path:
    """Where ``ukis-csmask``'s files lie (found without importing it: it imports onnxruntime)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the cloud networks come with the Python package ukis-csmask, which is not "
            "installed; run `pip install ukis-csmask` or set mask: method: spectral"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@functools.cache
def network_meta(name: str) -> dict[str, Any]:
    """The JSON the package ships beside network ``name`` (bands, statistics, version)."""
    path = package_folder() / f"{name}.json"
    if not path.is_file():
        raise ModelError(f"ukis-csmask has no network {name!r} ({path} not found)")
    meta: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return meta


def network_version(name: str) -> str:
    """``ukis-csmask <package version> <network version>``, e.g. for ``run.json``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        package = version("ukis-csmask")
    except PackageNotFoundError:
        package = "unknown"
    return f"ukis-csmask {package}, network {network_meta(name)['model']['version']}"


class CloudNetwork:
    """One ukis-csmask network compiled for the CPU: reflectance cells in, classes out."""

    def __init__(
        self, name: str, threads: int | None = None, cache_dir: Path | None = None
    ) -> None:
        meta = network_meta(name)
        stats = meta["data"]["dataset_statistics"]
        self.name = name
        self.bands: tuple[str, ...] = tuple(stats["band_names"])
        self._mean = np.asarray(stats["img"][0], dtype=np.float32)[:, None, None]
        self._std = np.asarray(stats["img"][1], dtype=np.float32)[:, None, None]
        settings: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
        if threads:
            settings["INFERENCE_NUM_THREADS"] = threads
        self._request = _compile(name, len(self.bands), settings, cache_dir).create_infer_request()

    def probabilities(self, cells: np.ndarray) -> np.ndarray:
        """float32 ``[3, h, w]`` probabilities of clear, cloud and shadow for one tile of cells.

        ``cells`` is reflectance ``[C, TILE_CELLS, TILE_CELLS]``, normalized here as in
        training.
        """
        expected = (len(self.bands), TILE_CELLS, TILE_CELLS)
        if cells.shape != expected:
            raise ValueError(f"network {self.name} takes {list(expected)}, got {list(cells.shape)}")
        x = (cells - self._mean) / self._std
        scores = self._request.infer({0: np.ascontiguousarray(x[None], dtype=np.float32)})[0][0]
        scores = scores - scores.max(axis=0, keepdims=True)
        exp = np.exp(scores)
        return (exp / exp.sum(axis=0, keepdims=True)).astype(np.float32)


def _compile(name: str, bands: int, settings: dict[str, Any], cache_dir: Path | None) -> Any:
    """Network ``name`` compiled for the CPU, through the compiled form kept in ``cache_dir``.

    The network, reshaped to its tiles, is kept there in OpenVINO's own format
    (:func:`_kept_network`), and compiled from that file: OpenVINO then finds the compiled
    form it keeps beside it without reading or reshaping the ONNX network (half the load
    time; ``BENCHMARKS.md``, "Planning and worker set-up"). Workers that start
    together would write the same files at once (OpenVINO then fails on them), so they take
    turns under a file lock; a cache that cannot be used costs time, never the run.
    """
    import openvino as ov

    if cache_dir is None:
        return ov.Core().compile_model(_reshaped(ov.Core(), name, bands), "CPU", settings)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with open(cache_dir / ".lock", "a+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            core = ov.Core()
            core.set_property({"CACHE_DIR": str(cache_dir)})
            return core.compile_model(_kept_network(core, name, bands, cache_dir), "CPU", settings)
    except (OSError, RuntimeError):
        return ov.Core().compile_model(_reshaped(ov.Core(), name, bands), "CPU", settings)


def _reshaped(core: Any, name: str, bands: int) -> Any:
    """Network ``name`` read from the package's ONNX file, for one tile of ``bands`` bands."""
    model = core.read_model(package_folder() / f"{name}.onnx")
    model.reshape([1, bands, TILE_CELLS, TILE_CELLS])
    return model


def _kept_network(core: Any, name: str, bands: int, cache_dir: Path) -> Path:
    """Where :func:`_reshaped`'s network lies in OpenVINO's format in ``cache_dir``, written once.

    The file's name changes with the ONNX file (size and modification time) and OpenVINO's
    version, so a new package or OpenVINO never finds an old network. Weights stay float32.
    The weights file is moved into place before the description, which marks a whole pair.
    """
    import openvino as ov

    onnx = (package_folder() / f"{name}.onnx").stat()
    source = f"{onnx.st_size}:{onnx.st_mtime_ns}:{ov.__version__}"
    stem = f"{name}-{bands}x{TILE_CELLS}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
    kept = cache_dir / f"{stem}.xml"
    if not kept.is_file():
        part = cache_dir / f".{stem}.part.xml"
        ov.save_model(_reshaped(core, name, bands), part, compress_to_fp16=False)
        part.with_suffix(".bin").replace(kept.with_suffix(".bin"))
        part.replace(kept)
    return kept


_LOADED: dict[str, CloudNetwork] = {}
#: How this process compiles the networks it loads (see :func:`configure`).
_SETTINGS: dict[str, Any] = {"threads": None, "cache_dir": None}


def configure(threads: int | None = None, cache_dir: Path | None = None) -> None:
    """How this process compiles the networks it loads from now on.

    For ``threads`` threads (a Dask worker has one), their compiled form kept in ``cache_dir``
    for the next process.
    """
    _SETTINGS.update(threads=threads, cache_dir=cache_dir)


def load(name: str) -> CloudNetwork:
    """Network ``name``, compiled once per process, as :func:`configure` last said."""
    if name not in _LOADED:
        _LOADED[name] = CloudNetwork(name, _SETTINGS["threads"], _SETTINGS["cache_dir"])
    return _LOADED[name]
