"""Planning a run: everything a user can get wrong, found before any cluster starts.

:func:`plan_run` turns a workflow and its scenes into a :class:`RunPlan`: the model (built, or
converted for OpenVINO), the grid the scenes are stacked onto, how each scene is masked, what
the model fitted to the scenes, the blocks, and the run's id. It checks the scenes against the
model on the way: bands, pixel size, value range, a pair of identical scenes. Nothing here
knows Dask; :mod:`pipeline.orchestrate` runs the plan.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from rasterio.crs import CRS
from rasterio.windows import Window

from pipeline.catalog import Scene
from pipeline.errors import ConfigError, ModelError, UnusableSceneError
from pipeline.grid import BBox, Block, Grid, bbox_block, blocks, pixel_size_m, sub_grid
from pipeline.masking import plan_mask
from pipeline.models.card import ModelCard, check_resolution, check_values
from pipeline.models.engines import EngineChoice, NetworkInfo
from pipeline.reading import check_compatible, sample_pixels, sample_windows, scene_grid
from pipeline.stitch import NODATA
from pipeline.summary import masked_fractions
from pipeline.workflow import (
    ModelConfig,
    TorchGeoModelConfig,
    Workflow,
    model_content,
    uses_openvino,
)

if TYPE_CHECKING:
    from pipeline.inference import Masks
    from pipeline.models import SegmentationModel
    from pipeline.models.indices import IndexModel

    #: A model a run can use as built: an index model (numpy) or a network (torch).
    Runnable = IndexModel | SegmentationModel
    #: What :func:`plan` learns of a model: the model, or a converted network's info.
    ModelInfo = Runnable | NetworkInfo

#: Edge of the central sample whose values :func:`check_scene_against_card` checks.
_SAMPLE_PX = 512
#: Where a run writes when no output folder is given.
DEFAULT_OUT = Path("outputs")


def default_cache(out: str | Path = DEFAULT_OUT) -> Path:
    """Where converted networks are kept: ``.cache`` in the output folder."""
    return Path(out).expanduser() / ".cache"


@dataclass(frozen=True)
class RunPlan:
    """What a run needs, decided before it starts: small enough to log, never the data."""

    #: The workflow, its halo raised to what the model needs around a block.
    workflow: Workflow
    model: ModelInfo
    scene: Scene
    before: Scene | None
    grid: Grid
    #: Each scene with the plan that masks it.
    masks: Masks
    tiles: tuple[Block, ...]
    run_id: str
    #: The catalog file the scenes came from (None for scenes given as files).
    catalog: str | None = None
    #: What runs the model's forward pass, and why (``engine`` in ``run.json``).
    engine: EngineChoice | None = None
    #: The rectangle the run was asked for (``--bbox``), and where ``grid`` lies in the
    #: scene's grid; None for the whole scene.
    bbox: BBox | None = None
    window: Block | None = None

    @property
    def calibration(self) -> dict[str, Any]:
        """What the model fitted to the scenes ({} for none)."""
        return dict(getattr(self.model, "calibration", {}))

    @property
    def converted(self) -> Path | None:
        """Where an OpenVINO network's converted files lie (None for a torch model)."""
        return self.model.folder if isinstance(self.model, NetworkInfo) else None

    @functools.cached_property
    def model_version(self) -> str:
        """The model's short digest (see :func:`model_version`)."""
        return model_version(self.workflow.model)


def plan_run(
    workflow: Workflow,
    scene: Scene,
    before: Scene | None = None,
    cache: Path | None = None,
    catalog: str | None = None,
    built: ModelInfo | None = None,
    bbox: BBox | None = None,
) -> RunPlan:
    """Plan ``workflow`` on ``scene`` (after ``before``): see :func:`plan` and the module.

    With ``bbox``, on the part of the scene it covers only (see :func:`plan`).
    """
    workflow, engine = resolve_engine(workflow, cache)
    model, scene, before, grid, window = plan_window(workflow, scene, before, cache, built, bbox)
    masks = scene_masks(workflow, scene, before, grid)
    context = getattr(model, "context_px", 0)
    if context > workflow.halo:  # a model that looks further than the workflow's halo
        workflow = workflow.with_overrides(halo=context)
    return RunPlan(
        workflow=workflow,
        model=model,
        scene=scene,
        before=before,
        grid=grid,
        masks=masks,
        tiles=tuple(blocks(grid, workflow.tile_size)),
        run_id=dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8],
        catalog=catalog,
        engine=engine,
        bbox=bbox,
        window=window,
    )


#: Each process's engine choices, by model and cache: a batch chooses once for all its scenes.
_CHOSEN: dict[str, tuple[Workflow, EngineChoice]] = {}


def resolve_engine(workflow: Workflow, cache: Path | None) -> tuple[Workflow, EngineChoice]:
    """``workflow`` with its model's ``engine`` and ``precision`` made concrete, and why.

    ``auto`` becomes what :func:`~pipeline.models.engines.choose_engine` finds fastest here
    without changing the answers; an index model runs numpy kernels, whatever it says.
    """
    config = workflow.model
    if not isinstance(config, TorchGeoModelConfig):
        return workflow, EngineChoice("index", "f32", "cpu", "an index model: numpy kernels")
    cache = cache or default_cache()
    key = json.dumps([model_content(config), str(cache)], sort_keys=True)
    if key not in _CHOSEN:
        from pipeline.models.engines import choose_engine

        choice = choose_engine(config, workflow.classes, cache)
        model = config.model_copy(update={"engine": choice.engine, "precision": choice.precision})
        _CHOSEN[key] = (workflow.model_copy(update={"model": model}), choice)
    return _CHOSEN[key]


def plan(
    workflow: Workflow,
    scene: Scene,
    before: Scene | None = None,
    cache: Path | None = None,
    built: ModelInfo | None = None,
    bbox: BBox | None = None,
) -> tuple[ModelInfo, Scene, Scene | None, Grid]:
    """Check that the workflow's model fits the scenes; return the model, scenes and grid.

    As :func:`plan_window`, without the window.
    """
    return plan_window(workflow, scene, before, cache, built, bbox)[:4]


def plan_window(
    workflow: Workflow,
    scene: Scene,
    before: Scene | None = None,
    cache: Path | None = None,
    built: ModelInfo | None = None,
    bbox: BBox | None = None,
) -> tuple[ModelInfo, Scene, Scene | None, Grid, Block | None]:
    """Check that the workflow's model fits the scenes; the model, scenes, grid and window.

    A workflow with ``engine: openvino`` gets its network converted into ``cache`` (once per
    model; in a child process, so that this one never imports torch) and a
    :class:`~pipeline.models.engines.NetworkInfo` in place of the model. An index model is
    checked against a sample of the scenes and calibrated on it (:func:`fit_to_scenes`).
    ``built`` is the model :func:`build_planned_model` made for an earlier plan of the same
    workflow (a batch's), used instead of building it again. With ``bbox`` the grid is the
    part of the scene's grid it covers (its place there is the last value returned, else
    None), and all that follows, the sample the model is checked and calibrated on
    included, sees that part only.
    """
    model = built if built is not None else build_planned_model(workflow, cache)
    check_dates(workflow, model, scene, before)
    grid = scene_grid(scene, model.bands)
    window = None
    if bbox is not None:
        window = bbox_window(grid, bbox, scene)
        grid = sub_grid(grid, window)
    if before is not None:
        check_compatible(before, model.bands, grid)
    card = getattr(model, "card", None)
    if isinstance(card, ModelCard):
        check_scene_against_card(card, scene, before, grid)
    if not isinstance(model, NetworkInfo) and model.value_range:
        model = fit_to_scenes(workflow, model, scene, before, grid)
    return model, scene, before, grid, window


def bbox_window(grid: Grid, bbox: BBox, scene: Scene) -> Block:
    """The block of ``scene``'s ``grid`` that ``bbox`` covers; :class:`ConfigError` if none."""
    block = bbox_block(grid, bbox)
    if block is None:
        left, bottom, right, top = grid.bounds
        crs = CRS.from_wkt(grid.crs_wkt)
        raise ConfigError(
            f"--bbox {bbox} does not overlap scene {scene.id!r}, which covers "
            f"{left:.10g},{bottom:.10g},{right:.10g},{top:.10g} in {crs.to_string()}; give "
            "west,south,east,north inside it, in the scene's CRS or that of --bbox-crs"
        )
    return block


def build_planned_model(workflow: Workflow, cache: Path | None) -> ModelInfo:
    """The workflow's model (or converted network's description), its classes checked.

    An index model is built in numpy: planning an index workflow never imports torch.
    """
    model: ModelInfo
    config = workflow.model
    if uses_openvino(config):
        from pipeline.models.engines import prepare_openvino

        folder, _ = prepare_openvino(
            cast(TorchGeoModelConfig, config), workflow.classes, cache or default_cache()
        )
        model = NetworkInfo.load(folder)
    else:
        from pipeline.models import build_runnable

        model = build_runnable(config, workflow.classes)
    if model.num_classes != len(workflow.classes):
        raise ModelError(
            f"workflow {workflow.name!r} lists {len(workflow.classes)} classes but model "
            f"{model.model_id!r} predicts {model.num_classes}; list one class per model output"
        )
    return model


def check_dates(workflow: Workflow, model: ModelInfo, scene: Scene, before: Scene | None) -> None:
    """Raise :class:`ConfigError` unless the model gets the dates it takes."""
    if model.needs_before and before is None:
        raise ConfigError(
            f"workflow {workflow.name!r} compares two dates: give the pre-event scene with "
            "--before ID"
        )
    takes_before = model.needs_before or getattr(model, "accepts_before", False)
    if not takes_before and before is not None:
        raise ConfigError(
            f"workflow {workflow.name!r} uses one date only; drop --before {before.id}"
        )
    if before is not None and before.id == scene.id:
        raise ConfigError("--before names the same scene as --scene; pick the pre-event scene")


def fit_to_scenes(
    workflow: Workflow,
    model: Runnable,
    scene: Scene,
    before: Scene | None,
    grid: Grid,
) -> Runnable:
    """Check a sample of the scenes against the model's value ranges, then calibrate on it.

    Returns the model built with what its :meth:`~pipeline.models.spec.ModelSpec.calibrate`
    fitted to the sample (:func:`~pipeline.reading.sample_pixels`), or the model itself if
    nothing was.
    """
    from pipeline.models import build_runnable

    scenes = [before, scene] if before is not None else [scene]
    samples = sample_pixels(scenes, model.bands, grid)
    if samples[0].shape[1] == 0 and sample_windows(grid) == [Window(0, 0, grid.width, grid.height)]:
        raise UnusableSceneError(no_data_message(scene, before))  # the sample was every pixel
    for s, sample in zip(scenes, samples, strict=True):
        check_value_range(model, s, sample)
    if before is not None and all(np.array_equal(a, b) for a, b in zip(*samples, strict=True)):
        raise UnusableSceneError(
            f"scenes {scene.id!r} and {before.id!r} hold the same values: a pair of identical "
            "scenes cannot show change; give --before an earlier scene of the same area"
        )
    calibration = model.calibrate(samples, pixel_size_m(grid))
    if not calibration:
        return model
    return build_runnable(workflow.model, workflow.classes, calibration)


def check_value_range(model: Runnable, scene: Scene, sample: np.ndarray) -> None:
    """Raise :class:`ModelError` when a band's sample mostly lies outside the model's range.

    The model expects reflectance, say; a file of digital numbers or display values without
    the right ``scale``/``offset`` in the catalog stops here, with the fix, before any tile.
    """
    for name, values in zip(model.bands, sample, strict=True):
        if name not in model.value_range or values.size == 0:
            continue
        low, high = model.value_range[name]
        outside = float(((values < low) | (values > high)).mean())
        if outside <= 0.5:
            continue
        median = float(np.median(values))
        hint = ""
        if median > 100 * high:
            hint = (
                " (they look like digital numbers: Sentinel-2 and Landsat Collection 2 "
                "reflectance is often stored ×10000, `scale: 0.0001`)"
            )
        raise ModelError(
            f"scene {scene.id!r} band {name!r}: {outside:.0%} of its values after the "
            f"catalog's scale and offset lie outside {low:g}..{high:g}, which model "
            f"{model.model_id!r} expects (median {median:.4g}){hint}; describe the file in the "
            "catalog with `scale` and `offset` so that stored × scale + offset is reflectance, "
            "as lists with one value per band where bands differ"
        )


def check_scene_against_card(
    card: ModelCard, scene: Scene, before: Scene | None, grid: Grid
) -> None:
    """Stop before any tile runs when the scene does not look like what the model was trained on.

    Bands are checked when the grid is built; here the pixel size and, on a central sample of
    at most 512×512 pixels, the value range after the catalog's scale and offset.
    """
    from pipeline.inference import read_tile

    check_resolution(card, scene.id, pixel_size_m(grid)[0])
    size = min(_SAMPLE_PX, grid.height), min(_SAMPLE_PX, grid.width)
    # On a multiple of 512 pixels, the sample is one block of a tiled COG to decompress.
    row = (grid.height - size[0]) // 2 // _SAMPLE_PX * _SAMPLE_PX
    col = (grid.width - size[1]) // 2 // _SAMPLE_PX * _SAMPLE_PX
    sample = Block(row, col, *size)
    data, valid, _, _, _ = read_tile(card.bands, scene, before, grid, sample, 0)
    names = card.bands
    if before is not None:
        names = tuple(f"{b} (before)" for b in card.bands) + card.bands
    check_values(card, scene.id, names, data, valid)


def scene_masks(workflow: Workflow, scene: Scene, before: Scene | None, grid: Grid) -> Masks:
    """Each scene of the run with the plan that masks its clouds and shadows.

    Raises :class:`ConfigError` when the workflow names a method a scene cannot use, and
    :class:`~pipeline.errors.SceneError` when the bands it reads do not fit the grid.
    """
    out = []
    for s in (scene, before):
        if s is None:
            continue
        mask = plan_mask(workflow.mask, s, grid)
        if mask.bands:
            check_compatible(s, mask.bands, grid)
        out.append((mask, s))
    return tuple(out)


def check_masked(plan: RunPlan, counts: np.ndarray) -> None:
    """Raise :class:`UnusableSceneError` when more is masked than the workflow accepts."""
    if counts.sum() == counts[NODATA]:
        raise UnusableSceneError(no_data_message(plan.scene, plan.before))
    share = masked_fractions(counts)
    limit = plan.workflow.mask.max_masked_fraction
    if share["total"] <= limit:
        return
    scene, before = plan.scene, plan.before
    which = f"scenes {scene.id!r} and {before.id!r} together" if before else f"scene {scene.id!r}"
    raise UnusableSceneError(
        f"{which}: {share['total']:.1%} of the pixels with data are masked (cloud "
        f"{share['cloud']:.1%}, cloud shadow {share['cloud_shadow']:.1%}), more than the "
        f"workflow's mask.max_masked_fraction of {limit:.0%}; no output was written. Pick a "
        "clearer scene, or raise max_masked_fraction to map what is clear",
        masked=share,
    )


def no_data_message(scene: Scene, before: Scene | None) -> str:
    """Why a scene (or pair) without a single pixel of data gives no output."""
    which = f"scenes {scene.id!r} and {before.id!r} together" if before else f"scene {scene.id!r}"
    return (
        f"{which}: no pixel holds data in every band the workflow reads (all nodata, NaN or "
        "infinite); no output was written. Check the files, and the catalog's `nodata`"
    )


def model_version(config: ModelConfig) -> str:
    """A short stable digest (12 hex) of a model: its configuration, and a checkpoint's bytes.

    The checkpoint enters by content (:func:`~pipeline.workflow.model_content`).
    """
    data = model_content(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]
