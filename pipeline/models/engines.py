"""The OpenVINO engine: a TorchGeo network's forward pass run by OpenVINO on the CPU, no torch.

:func:`prepare_openvino` converts a workflow's network once to OpenVINO's model files, its
normalization included, checks the conversion against torch on a tile of another size, and
caches the result under a key of the model's content (configuration, checkpoint bytes,
classes, versions); :class:`OpenVINOModel` loads those files and classifies numpy tiles.
Processes that only run the network (the workers) never import torch.

Why an engine beside torch, measured on the development machine (AMD EPYC with AVX-512 and
bfloat16 instructions, one thread, one 832² U-Net/ResNet18 pass): torch 1.35 s, OpenVINO in
float32 1.10 s (scores within 2e-5 of torch's), OpenVINO in bfloat16 0.55 s; a process
holding OpenVINO and the network peaks at 0.46 GB (bf16) to 0.67 GB (f32), one holding torch
and the network at 1.2–1.5 GB.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline import __version__
from pipeline.errors import ModelError
from pipeline.models.card import ModelCard
from pipeline.workflow import ClassDef, TorchGeoModelConfig, model_content

if TYPE_CHECKING:
    from pipeline.models.networks import TorchGeoSegmentation

#: Encoders halve the resolution five times: inputs are padded to multiples of this.
STRIDE = 32


def stride_padding(h: int, w: int) -> tuple[int, int, bool]:
    """Rows and columns to add below and right of an ``h``×``w`` tile, and whether by reflection.

    Reflection needs more pixels than it adds; smaller tiles repeat their edge instead.
    """
    ph, pw = (-h) % STRIDE, (-w) % STRIDE
    return ph, pw, h > ph and w > pw


#: Side of the tile (not a multiple of 32, not square) the conversion is checked on.
_CHECK_SHAPE = (75, 109)
#: Largest difference of scores allowed between torch and the f32 conversion.
_CHECK_TOLERANCE = 1e-3


@dataclass(frozen=True)
class NetworkInfo:
    """What a run needs to know of a converted network without loading it."""

    bands: tuple[str, ...]
    needs_before: bool
    num_classes: int
    model_id: str
    card: ModelCard | None
    #: Where the converted files lie.
    folder: Path

    @property
    def in_channels(self) -> int:
        """Channels the network expects: the bands, twice when a pre-event scene is needed."""
        return len(self.bands) * (2 if self.needs_before else 1)

    @classmethod
    def load(cls, folder: Path) -> NetworkInfo:
        """Read the description :func:`export_openvino` wrote beside the model files."""
        meta = json.loads((folder / "network.json").read_text(encoding="utf-8"))
        card = meta.get("card")
        return cls(
            bands=tuple(meta["bands"]),
            needs_before=bool(meta["needs_before"]),
            num_classes=int(meta["num_classes"]),
            model_id=str(meta["model_id"]),
            card=ModelCard.model_validate(card) if card else None,
            folder=folder,
        )


def openvino_version() -> str:
    """The installed OpenVINO's version, or raise :class:`ModelError` when it is missing."""
    try:
        from openvino import get_version
    except ImportError:
        raise ModelError(
            "engine openvino needs the openvino package (pip install openvino), "
            "or set `engine: torch`"
        ) from None
    return str(get_version())


def cpu_capabilities() -> list[str]:
    """The arithmetic OpenVINO's CPU plugin can run natively here (FP32, BF16, INT8 …)."""
    import openvino as ov

    return list(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def check_precision(precision: str) -> None:
    """Raise :class:`ModelError` when this CPU cannot run ``precision`` natively."""
    if precision != "bf16":
        return
    caps = cpu_capabilities()
    if "BF16" not in caps:
        raise ModelError(
            "precision bf16 needs a CPU with bfloat16 instructions (AVX512_BF16 or AMX); "
            f"this one offers {', '.join(caps)}: set `precision: f32`"
        )


#: Share of pixels whose class bf16 must give as f32 does for ``engine: auto`` to choose it.
BF16_AGREEMENT = 0.999
#: Side of the smooth reflectance tiles the bf16 agreement is measured on, and their number.
_AGREEMENT_TILE, _AGREEMENT_TILES = 256, 4


@dataclass(frozen=True)
class EngineChoice:
    """What runs a model's forward pass, and why: what ``run.json`` records as ``engine``."""

    engine: str  # "torch", "openvino" or "index" (numpy kernels, no network)
    precision: str  # "f32" or "bf16"
    device: str  # "cpu" or "cuda"
    reason: str

    def to_dict(self) -> dict[str, str]:
        """The choice as JSON data."""
        return {
            "engine": self.engine,
            "precision": self.precision,
            "device": self.device,
            "reason": self.reason,
        }


def cuda_present() -> bool:
    """Whether torch sees a CUDA GPU; torch is imported only where an NVIDIA driver is loaded."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if not gpus.is_dir() or not any(gpus.iterdir()):
        return False
    import torch

    return bool(torch.cuda.is_available())


def choose_engine(
    config: TorchGeoModelConfig, classes: tuple[ClassDef, ...], cache: Path
) -> EngineChoice:
    """What runs ``config`` here: its own ``engine`` and ``precision``, ``auto`` resolved.

    ``engine: auto`` is the fastest engine that keeps the model's answers: torch on a CUDA
    GPU; otherwise OpenVINO when its conversion reproduces torch's scores (checked when it
    converts); torch where the conversion fails. ``precision: auto`` on OpenVINO is bf16 when
    the CPU has the instructions and bf16 gives the classes f32 gives on at least
    :data:`BF16_AGREEMENT` of the check pixels (:func:`bf16_agreement`); f32 otherwise.
    """
    if config.engine == "torch" or (config.engine == "auto" and cuda_present()):
        device = "cuda" if cuda_present() else "cpu"
        why = "set in the workflow" if config.engine == "torch" else "a CUDA GPU is present"
        return EngineChoice("torch", "f32", device, why)
    try:
        folder, _ = prepare_openvino(config.model_copy(update={"precision": "f32"}), classes, cache)
    except ModelError as exc:
        if config.engine == "openvino":
            raise
        return EngineChoice("torch", "f32", "cpu", f"OpenVINO was not usable: {exc}")
    how = (
        "set in the workflow" if config.engine == "openvino" else "the conversion reproduces torch"
    )
    if config.precision != "auto":
        check_precision(config.precision)
        return EngineChoice("openvino", config.precision, "cpu", f"{how}; precision set")
    if "BF16" not in cpu_capabilities():
        return EngineChoice("openvino", "f32", "cpu", f"{how}; no bf16 on this CPU")
    agreement = bf16_agreement(folder)
    if agreement >= BF16_AGREEMENT:
        return EngineChoice(
            "openvino",
            "bf16",
            "cpu",
            f"{how}; bf16 classes agree with f32 on {agreement:.3%} of the check pixels",
        )
    return EngineChoice(
        "openvino",
        "f32",
        "cpu",
        f"{how}; bf16 classes agree with f32 on only {agreement:.3%} of the check pixels "
        f"(needs {BF16_AGREEMENT:.1%})",
    )


def bf16_agreement(folder: Path) -> float:
    """Share of pixels where the converted network's bf16 classes equal its f32 classes.

    Measured once per conversion on smooth random reflectance (blurred noise, 0-0.45, the look
    of land cover rather than of pixel noise) and kept beside the model files.
    """
    kept = folder / "bf16.json"
    if kept.is_file():
        return float(json.loads(kept.read_text(encoding="utf-8"))["agreement"])
    from scipy import ndimage

    info = NetworkInfo.load(folder)
    gen = np.random.default_rng(0)
    shape = (_AGREEMENT_TILES, info.in_channels, _AGREEMENT_TILE, _AGREEMENT_TILE)
    noise = ndimage.gaussian_filter(gen.normal(size=shape), sigma=(0, 0, 6, 6))
    x = (0.2 + 0.25 * noise / np.abs(noise).max()).astype(np.float32)
    f32 = OpenVINOModel(folder, "f32")(x).argmax(1)
    bf16 = OpenVINOModel(folder, "bf16")(x).argmax(1)
    agreement = float((f32 == bf16).mean())
    tmp = folder / f".bf16.{uuid.uuid4().hex[:8]}.json"
    tmp.write_text(json.dumps({"agreement": agreement}), encoding="utf-8")
    os.replace(tmp, kept)
    return agreement


def export_key(config: TorchGeoModelConfig, classes: tuple[ClassDef, ...]) -> str:
    """A key (16 hex) that changes with anything that changes the converted network."""
    # Batch size and precision are chosen when the model files are loaded, not converted.
    data = model_content(config, frozenset({"batch_size", "precision", "engine"}))
    data["classes"] = [c.model_dump(mode="json") for c in classes]
    data["versions"] = [__version__, openvino_version()]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def converted_folder(
    config: TorchGeoModelConfig, classes: tuple[ClassDef, ...], cache: Path
) -> Path:
    """Where the network's conversion lies (or will) under ``cache``."""
    return cache / "openvino" / export_key(config, classes)


def prepare_openvino(
    config: TorchGeoModelConfig, classes: tuple[ClassDef, ...], cache: Path
) -> tuple[Path, bool]:
    """The folder of the converted network under ``cache``, converting it if it is not there.

    First checks that OpenVINO is installed and that the CPU runs the configured precision.
    The conversion needs torch: it runs in a child process, so that the calling process (the
    run's client) never holds torch. Returns the folder and whether it was converted now.
    """
    openvino_version()
    check_precision(config.precision)
    folder = converted_folder(config, classes, cache)
    if (folder / "network.json").is_file():
        return folder, False
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            pool.submit(_export_from_config, config, classes, str(folder)).result()
    except BrokenProcessPool:
        raise ModelError(
            "the process converting the network for OpenVINO died (out of memory, or a "
            "script without an `if __name__ == '__main__':` guard); set `engine: torch`"
        ) from None
    return folder, True


def _export_from_config(
    config: TorchGeoModelConfig, classes: tuple[ClassDef, ...], folder: str
) -> None:
    from pipeline.models.networks import build_torchgeo_model

    export_openvino(build_torchgeo_model(config, classes), Path(folder))


def export_openvino(model: TorchGeoSegmentation, folder: Path) -> Path:
    """Convert ``model`` to OpenVINO's files in ``folder`` (written whole or not at all)."""
    import openvino as ov
    import torch
    from torch import nn

    class _Normalized(nn.Module):
        # Padding stays outside, in numpy: its size depends on the tile's.
        def __init__(self, inner: TorchGeoSegmentation) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner.net((x - self.inner.mean_) / self.inner.std_)

    c = model.in_channels
    wrapped = _Normalized(model).eval()
    try:
        with warnings.catch_warnings():
            # The converter traces with torch.jit, which torch now calls deprecated.
            warnings.simplefilter("ignore", FutureWarning)
            converted = ov.convert_model(
                wrapped,
                example_input=torch.zeros(1, c, 2 * STRIDE, 2 * STRIDE),
                input=[ov.PartialShape([-1, c, -1, -1])],
            )
    except Exception as exc:  # the converter raises many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"OpenVINO cannot convert {model.model_id!r}: {reason}; set `engine: torch`"
        ) from None
    tmp = folder.parent / f".{folder.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        ov.save_model(converted, tmp / "model.xml", compress_to_fp16=False)
        card = getattr(model, "card", None)
        meta = {
            "bands": list(model.bands),
            "needs_before": model.needs_before,
            "num_classes": model.num_classes,
            "model_id": model.model_id,
            "card": card.model_dump(mode="json") if isinstance(card, ModelCard) else None,
            "geoseg": __version__,
            "openvino": openvino_version(),
        }
        (tmp / "network.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        _check_conversion(model, tmp)
        try:
            os.replace(tmp, folder)
        except OSError:
            if not (folder / "network.json").is_file():
                raise
            # Another run converted the same network meanwhile: its files are as good.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _check_conversion(model: TorchGeoSegmentation, folder: Path) -> None:
    """Raise :class:`ModelError` unless the converted network scores a tile as torch does."""
    import torch

    gen = np.random.default_rng(0)
    x = gen.random((1, model.in_channels, *_CHECK_SHAPE), dtype=np.float32) * 0.3
    with torch.inference_mode():
        want = model(torch.from_numpy(x)).numpy()
    got = OpenVINOModel(folder, "f32")(x)
    if got.shape != want.shape or not np.allclose(got, want, atol=_CHECK_TOLERANCE, rtol=0):
        worst = float(np.abs(got - want).max()) if got.shape == want.shape else float("nan")
        raise ModelError(
            f"OpenVINO's conversion of {model.model_id!r} does not reproduce torch's scores "
            f"(largest difference {worst:.3g}, shape {list(got.shape)}); set `engine: torch`"
        )


class OpenVINOModel:
    """A converted network, compiled for the CPU: numpy reflectance in, class scores out."""

    def __init__(self, folder: Path, precision: str = "f32", threads: int = 1) -> None:
        import openvino as ov

        info = NetworkInfo.load(folder)
        self.info = info
        self.bands = info.bands
        self.needs_before = info.needs_before
        self.num_classes = info.num_classes
        self.model_id = info.model_id
        self.card = info.card
        core = ov.Core()
        settings: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_PRECISION_HINT": precision,
            # OpenVINO pins its threads to cores, counting from the first: two workers of one
            # thread each would share core 0, each pass taking twice as long.
            "ENABLE_CPU_PINNING": False,
        }
        compiled = core.compile_model(core.read_model(folder / "model.xml"), "CPU", settings)
        self._compiled = compiled
        self._request = compiled.create_infer_request()

    @property
    def in_channels(self) -> int:
        """Channels the network expects."""
        return self.info.in_channels

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Return float32 ``[N, K, H, W]`` logits for reflectance ``[N, C, H, W]`` of any size."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"model {self.model_id!r} expects [N, {self.in_channels}, H, W], "
                f"got {list(x.shape)}"
            )
        h, w = x.shape[-2:]
        ph, pw, reflect = stride_padding(h, w)
        if ph or pw:
            widths = ((0, 0), (0, 0), (0, ph), (0, pw))
            x = np.pad(x, widths, mode="reflect" if reflect else "edge")
        x = np.ascontiguousarray(x, dtype=np.float32)
        scores = self._request.infer({0: x}, share_inputs=True)[0]
        return np.asarray(scores[..., :h, :w])
