"""Training a TorchGeo segmentation network on catalog scenes and labels.

Chips are sampled at random (seeded) from the scenes' grids and read window by window, exactly
as inference reads tiles, so training never holds a whole scene either. Labels are a raster
mask or polygons, looked up or burned onto each chip's window. Training itself is TorchGeo's
``SemanticSegmentationTask`` under Lightning, on the CPU by default and on a GPU when one is
present. The checkpoint written carries the model card (bands, normalization, resolution,
value ranges, training data and metrics) and loads in TorchGeo as well.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import __version__
from pipeline.catalog import Scene
from pipeline.errors import ConfigError, ModelError
from pipeline.evaluate import confusion_of, report_from_confusion
from pipeline.grid import Block, Grid, Padding, blocks, pixel_size_m
from pipeline.inference import process_block, read_tile
from pipeline.models.card import CardClass, ModelCard, Normalization
from pipeline.models.checkpoints import save_checkpoint
from pipeline.models.networks import TorchGeoSegmentation, init_backbone
from pipeline.reading import NO_LABEL, check_compatible, read_labels, scene_grid
from pipeline.stitch import pad_tile
from pipeline.workflow import TorchGeoModelConfig, Workflow


@dataclass(frozen=True)
class Sample:
    """A scene (with its pre-event scene if the model needs one) and its labels file."""

    scene: Scene
    before: Scene | None
    labels: str


@dataclass(frozen=True)
class TrainOptions:
    """How to train: schedule, chips and seed."""

    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 8
    chip_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    label_field: str = "class"
    weights: str | None = None
    licence: str = "unspecified"
    progress: bool = False


@dataclass
class TrainResult:
    """The trained model, its card and the loss at every step."""

    model: TorchGeoSegmentation
    card: ModelCard
    losses: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class _Source:
    sample: Sample
    grid: Grid


def _read_chip(
    src: _Source, bands: tuple[str, ...], block: Block, size: int, label_field: str
) -> tuple[np.ndarray, np.ndarray]:
    """Read image [C, size, size] and labels [size, size] of a chip, reflect-padded if small."""
    scene, before = src.sample.scene, src.sample.before
    data, valid, read, _, _ = read_tile(bands, scene, before, src.grid, block, 0)
    labels = read_labels(src.sample.labels, src.grid, read, label_field)
    labels[~valid] = NO_LABEL
    # Chips larger than the scene: pad to the chip size; the padding carries no label.
    extra = (size - data.shape[1], size - data.shape[2])
    if extra != (0, 0):
        data, _ = pad_tile(data, valid, Padding(bottom=extra[0], right=extra[1]))
        labels = np.pad(labels, ((0, extra[0]), (0, extra[1])), constant_values=NO_LABEL)
    return data, labels


class ChipDataset(Dataset[dict[str, torch.Tensor]]):
    """Seeded random chips from several scenes, normalized, with random flips and rotations."""

    def __init__(
        self,
        sources: Sequence[_Source],
        bands: tuple[str, ...],
        chips: Sequence[tuple[int, Block]],
        size: int,
        normalization: Normalization,
        label_field: str,
        augment: bool,
        seed: int,
    ) -> None:
        self.sources, self.bands, self.chips, self.size = list(sources), bands, list(chips), size
        self.mean = np.asarray(normalization.mean, dtype=np.float32)[:, None, None]
        self.std = np.asarray(normalization.std, dtype=np.float32)[:, None, None]
        self.label_field, self.augment, self.seed = label_field, augment, seed

    def __len__(self) -> int:
        return len(self.chips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        i, block = self.chips[index]
        data, labels = _read_chip(self.sources[i], self.bands, block, self.size, self.label_field)
        rng = np.random.default_rng((self.seed, index))
        if self.augment:
            # Brightness differs between scenes, dates and sensors: vary it so the network
            # learns from contrasts between bands and dates, not absolute levels.
            gain = rng.uniform(0.8, 1.25) * rng.uniform(0.9, 1.1, size=(data.shape[0], 1, 1))
            data = data * gain.astype(np.float32)
        data = (data - self.mean) / self.std
        if self.augment:
            k = int(rng.integers(4))
            data, labels = np.rot90(data, k, axes=(1, 2)), np.rot90(labels, k)
            if rng.integers(2):
                data, labels = data[:, :, ::-1], labels[:, ::-1]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64)),
        }


def _random_chips(
    sources: Sequence[_Source], n: int, size: int, rng: np.random.Generator
) -> list[tuple[int, Block]]:
    """``n`` chip windows, scenes drawn in proportion to their area."""
    areas = np.array([s.grid.width * s.grid.height for s in sources], dtype=np.float64)
    picks = rng.choice(len(sources), size=n, p=areas / areas.sum())
    out = []
    for i in picks:
        g = sources[i].grid
        h, w = min(size, g.height), min(size, g.width)
        r = int(rng.integers(0, g.height - h + 1))
        c = int(rng.integers(0, g.width - w + 1))
        out.append((int(i), Block(r, c, h, w)))
    return out


def _statistics(
    sources: Sequence[_Source],
    bands: tuple[str, ...],
    chips: Sequence[tuple[int, Block]],
    size: int,
    label_field: str,
) -> tuple[Normalization, tuple[tuple[float, float], ...], np.ndarray]:
    """Per-channel mean/std and 1st/99th percentiles over valid pixels; label counts."""
    values: list[np.ndarray] = []
    counts = np.zeros(256, dtype=np.int64)
    for i, block in chips:
        data, labels = _read_chip(sources[i], bands, block, size, label_field)
        ok = labels != NO_LABEL
        values.append(data[:, ok])
        counts += np.bincount(labels.ravel(), minlength=256)
    stacked = np.concatenate(values, axis=1) if values else np.zeros((len(bands), 0))
    if stacked.shape[1] == 0:
        raise ConfigError("the training chips hold no labelled pixels; check --labels")
    mean = stacked.mean(axis=1)
    std = np.maximum(stacked.std(axis=1), 1e-6)
    lo, hi = np.percentile(stacked, 1, axis=1), np.percentile(stacked, 99, axis=1)
    return (
        Normalization(mean=tuple(map(float, mean)), std=tuple(map(float, std))),
        tuple((float(a), float(b)) for a, b in zip(lo, hi, strict=True)),
        counts,
    )


def _sources(samples: Sequence[Sample], config: TorchGeoModelConfig) -> list[_Source]:
    bands = tuple(config.bands or ())
    out = []
    for s in samples:
        if config.needs_before and s.before is None:
            raise ConfigError(
                f"the model compares two dates: give a --before scene for {s.scene.id!r}"
            )
        if not config.needs_before and s.before is not None:
            raise ConfigError("the model uses one date only; drop --before")
        grid = scene_grid(s.scene, bands)
        if s.before is not None:
            check_compatible(s.before, bands, grid)
        out.append(_Source(s, grid))
    return out


def predict_scene(model: TorchGeoSegmentation, source: _Source, tile: int, halo: int) -> np.ndarray:
    """Classes of a (small) validation scene, block by block, in this process."""
    g = source.grid
    out = np.full((g.height, g.width), NO_LABEL, dtype=np.uint8)
    for b in blocks(g, tile):
        classes, _ = process_block(model, source.sample.scene, source.sample.before, g, b, halo)
        out[b.row_off : b.row_off + b.height, b.col_off : b.col_off + b.width] = classes
    return out


def train(
    workflow: Workflow,
    samples: Sequence[Sample],
    out: Path,
    validation: Sample | None = None,
    options: TrainOptions | None = None,
) -> TrainResult:
    """Train the workflow's network on ``samples``; write a checkpoint with its card to ``out``."""
    import lightning.pytorch as pl
    from torchgeo.trainers import SemanticSegmentationTask

    options = options or TrainOptions()
    config = workflow.model
    if not isinstance(config, TorchGeoModelConfig):
        raise ConfigError(
            f"workflow {workflow.name!r} uses a `kind: {config.kind}` model, which has nothing "
            "to train; use a workflow with `kind: torchgeo`"
        )
    if not config.bands:
        raise ConfigError(f"workflow {workflow.name!r}: list the model's `bands` to train it")
    if not samples:
        raise ConfigError("give at least one --scene to train on")
    bands = tuple(config.bands)
    k = len(workflow.classes)
    sources = _sources(samples, config)
    val_sources = _sources([validation], config) if validation else []
    rng = np.random.default_rng(options.seed)
    size = options.chip_size
    n_train = options.steps_per_epoch * options.batch_size
    train_chips = _random_chips(sources, n_train, size, rng)
    # Without a validation scene, validation chips come from other places of the same scenes.
    val_pool = val_sources or sources
    val_chips = _random_chips(val_pool, max(options.batch_size, 8), size, rng)
    sizes = {min(size, s.grid.height) for s in [*sources, *val_pool]} | {
        min(size, s.grid.width) for s in [*sources, *val_pool]
    }
    if min(sizes) < 32:
        raise ConfigError("scenes smaller than 32 pixels cannot be trained on")

    norm, value_range, label_counts = _statistics(
        sources, bands, train_chips[: min(len(train_chips), 64)], size, options.label_field
    )
    too_high = np.nonzero(label_counts[k:NO_LABEL])[0]
    if too_high.size:
        raise ConfigError(
            f"labels hold class value {int(too_high[0]) + k} but workflow {workflow.name!r} "
            f"has {k} classes (0..{k - 1}); fix the labels or the workflow's classes"
        )
    in_channels = len(bands) * (2 if config.needs_before else 1)
    pl.seed_everything(options.seed, workers=True, verbose=False)
    task = SemanticSegmentationTask(
        model=config.arch,
        backbone=config.backbone,
        weights=None,
        in_channels=in_channels,
        num_classes=k,
        loss="ce",
        ignore_index=NO_LABEL,
        lr=options.lr,
    )
    weights = options.weights or config.weights
    if weights:
        init_backbone(task.model, weights)

    def loader(chips: list[tuple[int, Block]], srcs: list[_Source], augment: bool) -> DataLoader:
        ds = ChipDataset(srcs, bands, chips, size, norm, options.label_field, augment, options.seed)
        return DataLoader(ds, batch_size=options.batch_size, shuffle=augment, num_workers=0)

    losses: list[float] = []

    class _Losses(pl.Callback):
        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))

    trainer = pl.Trainer(
        max_epochs=options.epochs,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=options.progress,
        callbacks=[_Losses()],
        num_sanity_val_steps=0,
        deterministic=False,
    )
    trainer.fit(
        task,
        train_dataloaders=loader(train_chips, sources, True),
        val_dataloaders=loader(val_chips, list(val_pool), False),
    )
    net = task.model.cpu().eval()
    first = sources[0].grid
    card = ModelCard(
        arch=config.arch,
        backbone=config.backbone,
        bands=bands,
        needs_before=config.needs_before,
        classes=tuple(
            CardClass(value=c.value, name=c.name, colour=c.colour) for c in workflow.classes
        ),
        gsd_m=pixel_size_m(first)[0],
        normalization=norm,
        value_range=value_range,
        tile_size=workflow.tile_size,
        halo=workflow.halo,
        training_data={
            "scenes": [s.scene.id for s in samples],
            "before": [s.before.id if s.before else None for s in samples],
            "labels": sorted({s.labels for s in samples}),
            "validation": validation.scene.id if validation else None,
            "chips": n_train,
            "chip_size": size,
            "epochs": options.epochs,
            "batch_size": options.batch_size,
            "seed": options.seed,
            "pretrained": weights,
            "label_pixels": {c.name: int(label_counts[c.value]) for c in workflow.classes},
        },
        licence=options.licence,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        geoseg_version=__version__,
    )
    model = TorchGeoSegmentation(net, card, f"{config.arch}-{config.backbone}:{out.stem}")
    metrics: dict[str, float] = {}
    if losses:
        metrics["loss_first"] = losses[0]
        metrics["loss_last"] = float(np.mean(losses[-max(1, len(losses) // 10) :]))
    if val_sources:
        v = val_sources[0]
        pred = predict_scene(model, v, workflow.tile_size, workflow.halo)
        truth = read_labels(
            v.sample.labels,
            v.grid,
            Block(0, 0, v.grid.height, v.grid.width).window,
            options.label_field,
        )
        report = report_from_confusion(confusion_of(pred, truth))
        names = {c.value: c.name for c in workflow.classes}
        for m in report.classes:
            if not math.isnan(m.iou):
                metrics[f"val_iou_{names.get(m.value, m.value)}"] = m.iou
        metrics["val_overall_accuracy"] = report.overall_accuracy
    card = card.model_copy(update={"metrics": metrics})
    model.card = card
    hparams = {
        "model": config.arch,
        "backbone": config.backbone,
        "weights": None,
        "in_channels": in_channels,
        "num_classes": k,
        "loss": "ce",
        "ignore_index": NO_LABEL,
        "lr": options.lr,
        "task": "multiclass",
    }
    save_checkpoint(out, net.state_dict(), hparams, card)
    if not losses:
        raise ModelError("training ran no step; check --epochs and --steps-per-epoch")
    return TrainResult(model=model, card=card, losses=losses)
