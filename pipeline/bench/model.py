"""``geoseg bench`` for the model: the whole pipeline against the model alone and TorchGeo's way.

On one generated scene (:func:`~pipeline.bench.scenes.write_scene`) and one network (a seeded
random U-Net/ResNet18, or ``--model CKPT``), each step in its own fresh process so that its
peak memory is its own:

- **model only**: the forward passes alone, on the very input tiles the pipeline classifies
  (each block with its halo), in a plain loop over in-memory tensors, split over as many
  processes of one torch thread as the pipeline has workers, started together;
- **pipeline**: ``geoseg run`` on the scene, read to GeoPackage, on a local cluster started
  before the clock starts (start-up is reported apart as ``startup_s``: a batch job pays it
  once, not per scene);
- **peer**: TorchGeo's own way: ``RasterDataset`` + ``GridGeoSampler`` + ``DataLoader``, each
  chip's prediction written into a numpy array of the scene, then a GeoTIFF; all cores as
  torch threads in one process;
- **parity**: the class raster of the scene's central 1024² block computed with tile 256 and
  with tile 1024 (halo 64 both); with random weights this says little, hence ``--model``;
- **mask only**: the cloud and shadow mask of the scene (:mod:`pipeline.masking`, the
  six-band Level-1C network at 30 m) alone, block by block as the pipeline's workers make it,
  split over as many one-thread processes. The pipeline itself runs unmasked, so that its
  overhead over the model stays comparable; a masked run costs about both.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import yaml

from pipeline.bench.common import (
    MemorySampler,
    bench_grid,
    in_subprocess,
    memory_figures,
    peak_rss_mb,
)
from pipeline.bench.scenes import SCENE_BANDS, write_scene
from pipeline.errors import ConfigError
from pipeline.grid import Block, blocks
from pipeline.workflow import (
    ClassDef,
    CleanupConfig,
    MaskConfig,
    TorchGeoModelConfig,
    Workflow,
    uses_openvino,
)

Task = TypeVar("Task")

#: The pipeline's tiling in the benchmark with torch: 768 blocks with a 32 px halo (832² inputs,
#: a multiple of 32). With 1088² inputs (1024 blocks) the U-Net's forward pass alone takes
#: 525 MB more on top of the ~830 MB a worker holds with torch and the network, and the worker
#: passes 1.5 GiB; 832² needs 366 MB and wastes 17 % of the compute on halos, 1088² 13 %.
TILE = 768
#: The tiling with OpenVINO, whose workers hold less: 1024 blocks (1088² inputs). At 4096² in
#: f32 a worker peaked at 1219 MB (898 MB at 832²), and with 6 % fewer input pixels the forward
#: passes alone took 15.7–16.1 s instead of 16.4 s.
OPENVINO_TILE = 1024
HALO = 32
#: The peer's tiling, as TorchGeo's examples do it: 512 chips overlapping by 64, batches of 4.
PEER_CHIP = 512
PEER_STRIDE = 448
PEER_BATCH = 4
#: Edge of the central window the tile-size parity is measured on, and its halo.
PARITY_WINDOW = 1024
PARITY_HALO = 64

_CLASSES = (
    ClassDef(value=0, name="other", colour="#d9c58b", vectorize=False),
    ClassDef(value=1, name="forest", colour="#1b7837"),
)


def write_random_unet(path: Path, bands: tuple[str, ...] = SCENE_BANDS, seed: int = 0) -> Path:
    """Save a seeded, untrained U-Net/ResNet18 for ``bands`` (2 classes) as a geoseg checkpoint."""
    import torch

    from pipeline.models.card import CardClass, ModelCard, Normalization
    from pipeline.models.checkpoints import save_checkpoint
    from pipeline.models.networks import build_network

    torch.manual_seed(seed)
    net = build_network("unet", "resnet18", len(bands), len(_CLASSES))
    card = ModelCard(
        arch="unet",
        backbone="resnet18",
        bands=bands,
        classes=tuple(CardClass(value=c.value, name=c.name, colour=c.colour) for c in _CLASSES),
        gsd_m=10.0,
        normalization=Normalization(mean=(0.1,) * len(bands), std=(0.1,) * len(bands)),
        training_data={"note": "untrained: random weights for speed and memory benchmarks"},
    )
    hparams = {
        "model": "unet",
        "backbone": "resnet18",
        "in_channels": len(bands),
        "num_classes": len(_CLASSES),
    }
    save_checkpoint(path, dict(net.state_dict()), hparams, card)
    return path


def default_tile(engine: str) -> int:
    """The benchmark's block edge for ``engine``: the largest whose workers stay under 1.5 GiB."""
    return OPENVINO_TILE if engine == "openvino" else TILE


def bench_workflow(
    checkpoint: str,
    tile: int = TILE,
    halo: int = HALO,
    batch: int = 1,
    engine: str = "torch",
    precision: str = "f32",
) -> Workflow:
    """The workflow the benchmark runs: the checkpoint's network and classes, an 8 px sieve.

    Every class but the first (the background) becomes polygons; a one-class model's class does.
    """
    from pipeline.models.checkpoints import load_checkpoint

    card = load_checkpoint(checkpoint).card
    if card is None:
        raise ConfigError(
            f"{checkpoint}: no model card (bands, classes); bench needs a checkpoint written by "
            "geoseg train"
        )
    if card.needs_before:
        raise ConfigError(
            f"{checkpoint}: the model compares two dates; bench generates one-date scenes only"
        )
    classes = tuple(
        ClassDef(value=c.value, name=c.name, colour=c.colour, vectorize=c.value > 0)
        for c in card.classes
    )
    if len(classes) == 1:
        classes = (classes[0].model_copy(update={"vectorize": True}),)
    return Workflow(
        name="bench",
        model=TorchGeoModelConfig(
            kind="torchgeo",
            arch=card.arch,  # type: ignore[arg-type]
            backbone=card.backbone,
            checkpoint=checkpoint,
            batch_size=batch,
            engine=engine,  # type: ignore[arg-type]
            precision=precision,  # type: ignore[arg-type]
        ),
        classes=classes,
        tile_size=tile,
        halo=halo,
        cleanup=CleanupConfig(sieve_pixels=8),
        mask=MaskConfig(method="none"),  # the mask is measured on its own (run_mask_only)
    )


def _write_catalog(folder: Path, scene: Path, bands: tuple[str, ...]) -> Path:
    path = folder / "catalog.yaml"
    entry = {"path": str(scene), "bands": list(bands), "scale": 0.0001, "nodata": 0}
    entry |= {"sensor": "generated", "acquired": "2026-01-01"}
    path.write_text(yaml.safe_dump({"scenes": {"bench": entry}}), encoding="utf-8")
    return path


def _load(workflow_json: str) -> Workflow:
    return Workflow.model_validate_json(Path(workflow_json).read_text(encoding="utf-8"))


def _model_only_worker(
    workflow_json: str,
    shapes: list[tuple[int, int, int, int]],
    rebatch: bool,
    start: Any,
    out: Any,
) -> None:
    """The forward passes of ``shapes``; with ``rebatch``, in the batches one model's host makes.

    The model runs where a pipeline worker's would: on a CUDA GPU when torch has one.
    """
    from pipeline.models.build import build_on_worker

    workflow = _load(workflow_json)
    converted = _converted(workflow_json) if uses_openvino(workflow.model) else None
    model = build_on_worker(workflow.model, workflow.classes, converted)
    if rebatch:
        from pipeline.models.device import fitting_batch

        batch = fitting_batch(model, shapes[0][1:], getattr(workflow.model, "batch_size", 1))
        shapes = _rebatched(shapes, batch)
    if hasattr(model, "parameters"):
        _model_only_torch(model, shapes, start, out)
        return
    gen = np.random.default_rng(0)
    arrays = {s: gen.random(s, dtype=np.float32) * 0.3 for s in set(shapes)}
    _timed_passes(model, arrays, shapes, start, out)


def _model_only_torch(
    model: Any, shapes: list[tuple[int, int, int, int]], start: Any, out: Any
) -> None:
    import torch

    from pipeline.models.device import device_of

    gen = torch.Generator().manual_seed(0)
    inputs = {
        s: (torch.rand(s, generator=gen) * 0.3)
        .to(device_of(model))
        .contiguous(memory_format=torch.channels_last)
        for s in set(shapes)
    }
    with torch.inference_mode():
        _timed_passes(model, inputs, shapes, start, out)


def _rebatched(
    shapes: list[tuple[int, int, int, int]], batch: int
) -> list[tuple[int, int, int, int]]:
    """Consecutive passes of one tile shape joined into passes of up to ``batch`` tiles."""
    joined: list[tuple[int, int, int, int]] = []
    for n, c, h, w in shapes:
        if joined and joined[-1][1:] == (c, h, w) and joined[-1][0] + n <= batch:
            joined[-1] = (joined[-1][0] + n, c, h, w)
        else:
            joined.append((n, c, h, w))
    return joined


def _timed_passes(
    model: Any, inputs: dict[Any, Any], shapes: list[Any], start: Any, out: Any
) -> None:
    """Run every pass once the other processes are ready; report the time and peak memory.

    On a GPU the clock stops when the device has finished, not when the last pass was queued.
    """
    model(inputs[shapes[0]][:1, :, :64, :64])  # first-call set-up off the clock
    start.wait()
    t0 = time.perf_counter()
    for s in shapes:
        model(inputs[s])
    _synchronize(model)
    out.put((time.perf_counter() - t0, peak_rss_mb()))


def _synchronize(model: Any) -> None:
    """Wait for a torch model's GPU to finish what was queued (nothing elsewhere)."""
    if hasattr(model, "parameters"):
        from pipeline.models.device import device_of

        device = device_of(model)
        if device.type == "cuda":
            import torch

            torch.cuda.synchronize(device)


def _converted(workflow_json: str) -> Path:
    """Where the benchmark's network lies converted for OpenVINO (by :func:`run_choose`)."""
    from pipeline.models.engines import converted_folder

    workflow = _load(workflow_json)
    config = cast(TorchGeoModelConfig, workflow.model)
    return converted_folder(config, workflow.classes, _cache_of(workflow_json))


def _cache_of(workflow_json: str) -> Path:
    """The pipeline run's cache of converted networks: in its output folder, beside the workflow."""
    from pipeline.planning import default_cache

    return default_cache(Path(workflow_json).parent / "out")


def run_choose(workflow_json: str) -> dict[str, Any]:
    """Resolve the workflow's engine as a run does, converting for OpenVINO into the run's cache.

    A batch job does this once; ``convert_s`` is its time when OpenVINO was chosen.
    """
    from pipeline.planning import resolve_engine

    t0 = time.perf_counter()
    _, choice = resolve_engine(_load(workflow_json), _cache_of(workflow_json))
    took = time.perf_counter() - t0
    return choice.to_dict() | {"convert_s": took if choice.engine == "openvino" else None}


def balanced_shares(
    tasks: list[Task], parts: int, cost: Callable[[Task], float]
) -> list[list[Task]]:
    """``tasks`` split into ``parts`` lists of near-equal ``cost`` (largest first to the lightest).

    The model-only limit is the slowest process's time, so its shares must be as even as the
    pipeline's: dealt out in turn, at 4096² the heavier of two held 2.9 % more than half the
    pixels (0.3 % this way) and the limit came out about 2.5 % slower than it is.
    """
    shares: list[list[Task]] = [[] for _ in range(parts)]
    load = [0.0] * parts
    for task in sorted(tasks, key=cost, reverse=True):
        lightest = load.index(min(load))
        shares[lightest].append(task)
        load[lightest] += cost(task)
    return shares


def run_model_only(
    workflow_json: str, size: str, workers: str, one_model: str = "0"
) -> dict[str, Any]:
    """Forward passes alone over the pipeline's input tiles, in ``workers`` processes at once.

    With ``one_model`` ("1"), in one process, in the batches the pipeline's model host makes
    (see :mod:`pipeline.orchestrate.feeding`).
    """
    from pipeline.inference import classification_tasks, tile_pixels

    workflow = _load(workflow_json)
    grid = bench_grid(int(size))
    channels = len(SCENE_BANDS)
    from pipeline.models.checkpoints import load_checkpoint

    card = load_checkpoint(workflow.model.checkpoint or "").card  # type: ignore[union-attr]
    if card is not None:
        channels = card.in_channels
    halo = workflow.halo
    groups = classification_tasks(
        blocks(grid, workflow.tile_size),
        workflow.tile_size,
        getattr(workflow.model, "batch_size", 1),
    )
    rebatch = one_model == "1"
    processes = 1 if rebatch else int(workers)
    shares = [
        [(len(g), channels, g[0].height + 2 * halo, g[0].width + 2 * halo) for g in share]
        for share in balanced_shares(groups, processes, lambda g: tile_pixels(g, halo))
        if share
    ]
    args = [(workflow_json, share, rebatch) for share in shares]
    results = _together(_model_only_worker, args)
    return {
        "model_only_s": max(r[0] for r in results),
        "model_only_peak_rss_mb": max(r[1] for r in results),
        "tiles": len(groups),
        "input_mpx": sum(tile_pixels(g, halo) for g in groups) / 1e6,
    }


def _mask_only_worker(catalog: str, share: list[Block], start: Any, out: Any) -> None:
    import dataclasses

    from pipeline.catalog import load_catalog
    from pipeline.masking import mask_window, plan_mask
    from pipeline.masking import network as mask_network
    from pipeline.reading import scene_grid
    from pipeline.workflow import MaskConfig

    # As a Sentinel-2 L1C scene, which the bench scene's bands and values are like.
    scene = dataclasses.replace(load_catalog(catalog).scene("bench"), sensor="sentinel-2-l1c")
    grid = scene_grid(scene, SCENE_BANDS)
    plan = plan_mask(MaskConfig(method="network"), scene, grid)
    assert plan.network is not None
    mask_network.configure(threads=1)
    net = mask_network.load(plan.network)
    net.probabilities(np.zeros((len(net.bands), 256, 256), np.float32))  # set-up off the clock
    start.wait()
    t0 = time.perf_counter()
    for block in share:
        mask_window(plan, scene, grid, block.window)
    out.put((time.perf_counter() - t0, peak_rss_mb()))


def _together(target: Callable[..., None], args: list[tuple[Any, ...]]) -> list[Any]:
    """Run ``target(*a, start, out)`` for each ``a`` in its own fresh process, started together.

    Each process waits at the ``start`` barrier once set up and puts its result on ``out``.
    """
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(len(args))
    out = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, start, out)) for a in args]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return results


def run_mask_only(catalog: str, tile: str, workers: str) -> dict[str, Any]:
    """The scene's cloud mask alone, its blocks in sweep order split over ``workers`` processes."""
    from pipeline.catalog import load_catalog
    from pipeline.inference import swath_columns, sweep
    from pipeline.reading import scene_grid

    grid = scene_grid(load_catalog(catalog).scene("bench"), SCENE_BANDS)
    order = sweep(blocks(grid, int(tile)), swath_columns(int(tile)))
    n = min(int(workers), len(order))
    shares = [order[i * len(order) // n : (i + 1) * len(order) // n] for i in range(n)]
    results = _together(_mask_only_worker, [(catalog, share) for share in shares])
    seconds = max(r[0] for r in results)
    mpx = grid.width * grid.height / 1e6
    return {
        "mask_only_s": seconds,
        "mask_s_per_mpx": seconds * n / mpx,
        "mask_only_peak_rss_mb": max(r[1] for r in results),
    }


def run_pipeline(
    catalog: str,
    workflow_json: str,
    out: str,
    workers: str,
    one_model: str = "0",
    watch_memory: str = "1",
) -> dict[str, Any]:
    """``geoseg run`` on the generated scene, on a cluster started off the clock.

    With ``one_model`` ("1"), one worker holds the model and the others feed it. With
    ``watch_memory`` ("1"), the processes' PSS is sampled through the run (see
    :class:`~pipeline.bench.common.MemorySampler`), which slows it.
    """
    import pyogrio

    from pipeline.catalog import load_catalog
    from pipeline.orchestrate import RunOptions, dask_client, run

    workflow = _load(workflow_json)
    t0 = time.perf_counter()
    # Library imports are start-up, as torch's own import is: a batch job pays them once.
    # With OpenVINO the client never needs torch, and importing it would only add its memory.
    if uses_openvino(workflow.model):
        import openvino  # noqa: F401
    else:
        import segmentation_models_pytorch  # noqa: F401

    fed = one_model == "1"
    sampler = MemorySampler(enabled=watch_memory == "1")
    with sampler as memory, dask_client(int(workers), None, fed) as client:
        startup = time.perf_counter() - t0
        address = client.scheduler.address
        cpu0 = os.times()
        result = run(
            workflow,
            load_catalog(catalog).scene("bench"),
            options=RunOptions(out=Path(out), scheduler=address, progress=False, one_model=fed),
            catalog=catalog,
        )
        cpu1 = os.times()
        worker_rss = client.run(peak_rss_mb)
        worker_pids = client.run(os.getpid).values()
    times = result.summary["times"]
    setup = times["cluster_start_s"] + times["model_setup_s"]
    gpkg = result.folder / "polygons.gpkg"
    return {
        "pipeline_s": times["total_s"] - setup,
        "pipeline_raster_s": times["plan_s"] + times["tiles_s"] + times["cog_s"],
        "startup_s": startup + setup,
        "times": times,
        "model_layout": result.summary["execution"]["model_layout"],
        # The client's own CPU time in the run: what it takes from cores the workers share.
        "client_cpu_s": (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system),
        "polygons": int(pyogrio.read_info(str(gpkg), layer="bench")["features"]),
        "client_peak_rss_mb": peak_rss_mb(),
        "worker_peak_rss_mb": max(worker_rss.values()),
    } | memory.pss_figures(worker_pids)


def run_peer(scene: str, workflow_json: str, out: str, threads: str) -> dict[str, Any]:
    """TorchGeo's own way: RasterDataset + GridGeoSampler + DataLoader, prediction to GeoTIFF."""
    import rasterio
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import RasterDataset, stack_samples
    from torchgeo.samplers import GridGeoSampler

    from pipeline.models import build_model

    torch.set_num_threads(int(threads))
    workflow = _load(workflow_json)
    model = build_model(workflow.model, workflow.classes)

    class Scene(RasterDataset):
        filename_glob = Path(scene).name
        is_image = True
        separate_files = False

    t0 = time.perf_counter()
    dataset = Scene(paths=str(Path(scene).parent))
    sampler = GridGeoSampler(dataset, size=PEER_CHIP, stride=PEER_STRIDE)
    loader = DataLoader(
        dataset, sampler=sampler, batch_size=PEER_BATCH, collate_fn=stack_samples, num_workers=0
    )
    with rasterio.open(scene) as src:
        profile, transform = src.profile, src.transform
    height, width = profile["height"], profile["width"]
    prediction = np.full((height, width), 255, dtype=np.uint8)  # 255: never predicted
    chips = 0
    with torch.inference_mode():
        for batch in loader:
            x = (batch["image"].float() * 1e-4).contiguous(memory_format=torch.channels_last)
            classes = model(x).argmax(dim=1).to(torch.uint8).numpy()
            for k, (xs, ys, _) in enumerate(batch["bounds"]):
                col = round((xs.start - transform.c) / transform.a)
                row = round((ys.stop - transform.f) / transform.e)
                # The sampler's last chips may reach past the scene (it reads zeros there).
                r0, c0 = max(row, 0), max(col, 0)
                r1, c1 = min(row + PEER_CHIP, height), min(col + PEER_CHIP, width)
                prediction[r0:r1, c0:c1] = classes[k, r0 - row : r1 - row, c0 - col : c1 - col]
                chips += 1
    profile.update(count=1, dtype="uint8", nodata=255, compress="deflate", tiled=True)
    with rasterio.open(out, "w", **profile) as dst:
        dst.write(prediction, 1)
    return {
        "peer_s": time.perf_counter() - t0,
        "peer_peak_rss_mb": peak_rss_mb(),
        "chips": chips,
        "unpredicted": int((prediction == 255).sum()),
    }


def run_parity(catalog: str, workflow_json: str) -> dict[str, Any]:
    """Agreement of the classes of the central block computed at tile 1024 and at tile 256."""
    from pipeline.catalog import load_catalog
    from pipeline.inference import process_block
    from pipeline.models.build import build_on_worker
    from pipeline.reading import scene_grid

    workflow = _load(workflow_json)
    converted = _converted(workflow_json) if uses_openvino(workflow.model) else None
    model = build_on_worker(workflow.model, workflow.classes, converted)
    scene = load_catalog(catalog).scene("bench")
    grid = scene_grid(scene, model.bands)
    edge = min(PARITY_WINDOW, grid.height, grid.width) // 256 * 256
    if edge == 0:
        return {"tile_parity": None}
    r0 = (grid.height - edge) // 2 // 256 * 256
    c0 = (grid.width - edge) // 2 // 256 * 256
    big, _ = process_block(model, scene, None, grid, Block(r0, c0, edge, edge), PARITY_HALO)
    small = np.empty_like(big)
    for r in range(0, edge, 256):
        for c in range(0, edge, 256):
            small[r : r + 256, c : c + 256], _ = process_block(
                model, scene, None, grid, Block(r0 + r, c0 + c, 256, 256), PARITY_HALO
            )
    return {"tile_parity": float((big == small).mean()), "parity_window": edge}


def bench_model(
    size: int,
    workers: int,
    model: str | None = None,
    tile: int | None = None,
    halo: int = HALO,
    batch: int = 1,
    peer: bool = True,
    engine: str = "auto",
    precision: str = "auto",
    mask: bool = True,
    one_model: bool | None = None,
) -> dict[str, Any]:
    """Generate a ``size``² scene and measure model only, pipeline, peer and tile parity on it.

    ``tile`` defaults to :func:`default_tile` of ``engine``; ``mask`` adds the mask alone.
    ``one_model``: one worker holds the model and the others feed it, and the model alone
    runs in one process in the same batches (default: when the model runs on a GPU).
    """
    if engine == "openvino":
        # Before a scene is generated: a large one takes minutes.
        from pipeline.models.engines import check_precision, openvino_version

        openvino_version()
        check_precision(precision)
    with tempfile.TemporaryDirectory(prefix="geoseg-bench-") as tmp:
        folder = Path(tmp)
        checkpoint = Path(model).resolve() if model else write_random_unet(folder / "unet.ckpt")
        if not checkpoint.is_file():
            raise ConfigError(f"{checkpoint}: checkpoint not found")
        workflow = bench_workflow(str(checkpoint), tile or TILE, halo, batch, engine, precision)
        from pipeline.models import build_model

        bands = build_model(workflow.model, workflow.classes).bands
        workflow_json = folder / "workflow.json"
        workflow_json.write_text(workflow.model_dump_json(), encoding="utf-8")
        wf, n = str(workflow_json), str(workers)
        step = "pipeline.bench.model:"
        chosen = in_subprocess(step + "run_choose", wf)
        engine, precision = chosen["engine"], chosen["precision"]
        tile = tile or default_tile(engine)
        workflow = bench_workflow(str(checkpoint), tile, halo, batch, engine, precision)
        workflow_json.write_text(workflow.model_dump_json(), encoding="utf-8")
        t0 = time.perf_counter()
        scene = write_scene(folder / "scene.tif", size, bands)
        generate_s = time.perf_counter() - t0
        catalog = _write_catalog(folder, scene, bands)
        convert_s = chosen["convert_s"]
        fed = chosen["device"] == "cuda" if one_model is None else one_model
        one = "1" if fed else "0"
        alone = in_subprocess(step + "run_model_only", wf, str(size), n, one)
        out = str(folder / "out")
        # Timed with nothing watching its processes; its memory from a second, watched run.
        pipe = in_subprocess(step + "run_pipeline", str(catalog), wf, out, n, one, "0")
        watched = in_subprocess(step + "run_pipeline", str(catalog), wf, out + "-memory", n, one)
        pipe |= memory_figures(watched)
        result: dict[str, Any] = {
            "size": size,
            "workers": workers,
            "model": str(model) if model else "random U-Net/ResNet18 (untrained)",
            "bands": list(bands),
            "tile_size": tile,
            "halo": halo,
            "batch_size": batch,
            "engine": engine,
            "precision": precision,
            "engine_reason": chosen["reason"],
            "convert_s": convert_s,
            "scene_generate_s": generate_s,
        } | _stage_figures(alone, pipe)
        if peer:
            result |= _peer_figures(folder, scene, wf, n, pipe["pipeline_raster_s"])
        result |= in_subprocess(step + "run_parity", str(catalog), wf)
        if mask:
            result |= _mask_figures(folder, catalog, bands, size, tile, n)
        return result


def _stage_figures(alone: dict[str, Any], pipe: dict[str, Any]) -> dict[str, Any]:
    """The model alone against the pipeline: times, throughputs, memory (bench's keys)."""
    return {
        "model_only_s": alone["model_only_s"],
        "model_only_tiles": alone["tiles"],
        "model_only_input_mpx": alone["input_mpx"],
        "pipeline_s": pipe["pipeline_s"],
        "pipeline_raster_s": pipe["pipeline_raster_s"],
        "startup_s": pipe["startup_s"],
        "overhead_ratio": pipe["pipeline_s"] / alone["model_only_s"],
        "model_layout": pipe["model_layout"],
        "client_cpu_s": pipe["client_cpu_s"],
        "model_only_mpx_per_s": alone["input_mpx"] / alone["model_only_s"],
        "pipeline_mpx_per_s": alone["input_mpx"] / pipe["pipeline_s"],
        "tiles_mpx_per_s": alone["input_mpx"] / pipe["times"]["tiles_s"],
        "pipeline_polygons": pipe["polygons"],
        "pipeline_times": pipe["times"],
        "peak_rss_mb": max(pipe["client_peak_rss_mb"], pipe["worker_peak_rss_mb"]),
        "client_peak_rss_mb": pipe["client_peak_rss_mb"],
        "worker_peak_rss_mb": pipe["worker_peak_rss_mb"],
        "model_only_peak_rss_mb": alone["model_only_peak_rss_mb"],
        "client_peak_pss_mb": pipe["client_peak_pss_mb"],
        "worker_peak_pss_mb": pipe["worker_peak_pss_mb"],
        "run_peak_pss_mb": pipe["run_peak_pss_mb"],
    }


def _peer_figures(
    folder: Path, scene: Path, workflow_json: str, workers: str, pipeline_raster_s: float
) -> dict[str, Any]:
    """TorchGeo's own way on the scene, against the pipeline's raster stages and classes."""
    step = "pipeline.bench.model:run_peer"
    theirs = in_subprocess(step, str(scene), workflow_json, str(folder / "peer.tif"), workers)
    return {
        "peer_s": theirs["peer_s"],
        "peer_chips": theirs["chips"],
        "peer_ratio": theirs["peer_s"] / pipeline_raster_s,
        "peer_peak_rss_mb": theirs["peer_peak_rss_mb"],
        "peer_unpredicted_pixels": theirs["unpredicted"],
        "peer_agreement": _agreement(
            folder / "out" / "bench" / "bench" / "classes.tif", folder / "peer.tif"
        ),
    }


def _mask_figures(
    folder: Path, catalog: Path, bands: tuple[str, ...], size: int, tile: int, workers: str
) -> dict[str, Any]:
    """The cloud mask alone, on the scene or, when it lacks the network's six bands, on one."""
    if not set(SCENE_BANDS) <= set(bands):
        (folder / "mask").mkdir()
        six = write_scene(folder / "mask" / "scene.tif", size, SCENE_BANDS)
        catalog = _write_catalog(folder / "mask", six, SCENE_BANDS)
    step = "pipeline.bench.model:run_mask_only"
    return in_subprocess(step, str(catalog), str(tile), workers)


def _agreement(ours: Path, theirs: Path) -> float:
    """Share of pixels where two class rasters on one grid agree, read a band of rows at a time."""
    import rasterio
    from rasterio.windows import Window

    same = 0
    with rasterio.open(ours) as a, rasterio.open(theirs) as b:
        for row in range(0, a.height, 1024):
            window = Window(0, row, a.width, min(1024, a.height - row))
            same += int((a.read(1, window=window) == b.read(1, window=window)).sum())
        return same / (a.width * a.height)


def describe(result: dict[str, Any]) -> str:
    """The result as aligned ``key value`` lines (nested times as JSON)."""
    lines = []
    for key, value in result.items():
        if isinstance(value, float):
            lines.append(f"{key:32} {value:.3f}")
        elif isinstance(value, dict):
            shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in value.items()}
            lines.append(f"{key:32} {json.dumps(shown)}")
        else:
            lines.append(f"{key:32} {value}")
    return "\n".join(lines)
