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
import warnings
from collections.abc import Callable, Sequence
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

#: The deprecation torch raises at each training step from inside Lightning (a regex).
LIGHTNING_PYTREE_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"


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
    #: Called after each epoch with its number (from 1), the epochs and its mean loss.
    on_epoch: Callable[[int, int, float], None] | None = field(default=None, compare=False)


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
    options = options or TrainOptions()
    config = _trainable(workflow, samples)
    bands = tuple(config.bands or ())
    sources = _sources(samples, config)
    val_sources = _sources([validation], config) if validation else []
    # Without a validation scene, validation chips come from other places of the same scenes.
    val_pool = val_sources or sources
    chips = _Chips.draw(sources, val_pool, options)
    norm, value_range, label_counts = _statistics(
        sources, bands, chips.train[: min(len(chips.train), 64)], chips.size, options.label_field
    )
    _check_label_values(label_counts, workflow)
    in_channels = len(bands) * (2 if config.needs_before else 1)
    hparams = _task_hparams(config, in_channels, len(workflow.classes), options.lr)
    weights = options.weights or config.weights
    task = _new_task(hparams, options.seed, weights)
    chip_data = (norm, options.label_field)
    datasets = (
        ChipDataset(sources, bands, chips.train, chips.size, *chip_data, True, options.seed),
        ChipDataset(val_pool, bands, chips.val, chips.size, *chip_data, False, options.seed),
    )
    losses = _fit(task, datasets, options)
    if not losses:
        raise ModelError("training ran no step; check --epochs and --steps-per-epoch")
    net = task.model.cpu().eval()
    card = ModelCard(
        arch=config.arch,
        backbone=config.backbone,
        bands=bands,
        needs_before=config.needs_before,
        classes=tuple(
            CardClass(value=c.value, name=c.name, colour=c.colour) for c in workflow.classes
        ),
        gsd_m=pixel_size_m(sources[0].grid)[0],
        normalization=norm,
        value_range=value_range,
        tile_size=workflow.tile_size,
        halo=workflow.halo,
        training_data=_training_data(samples, validation, chips, options, weights)
        | {"label_pixels": {c.name: int(label_counts[c.value]) for c in workflow.classes}},
        licence=options.licence,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        geoseg_version=__version__,
    )
    model = TorchGeoSegmentation(net, card, f"{config.arch}-{config.backbone}:{out.stem}")
    metrics = _loss_metrics(losses) | _validation_metrics(model, val_sources, workflow, options)
    card = card.model_copy(update={"metrics": metrics})
    model.card = card
    save_checkpoint(out, net.state_dict(), hparams, card)
    return TrainResult(model=model, card=card, losses=losses)


def _trainable(workflow: Workflow, samples: Sequence[Sample]) -> TorchGeoModelConfig:
    """The workflow's network configuration, once it is one that can be trained on samples."""
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
    return config


@dataclass(frozen=True)
class _Chips:
    """The chips drawn for training and for validation: (source index, window) each."""

    train: list[tuple[int, Block]]
    val: list[tuple[int, Block]]
    size: int

    @classmethod
    def draw(cls, sources: list[_Source], val_pool: list[_Source], options: TrainOptions) -> _Chips:
        """Draw the chips at random (seeded): a schedule's worth, and a few to validate on."""
        size = options.chip_size
        grids = [s.grid for s in [*sources, *val_pool]]
        if min(min(size, g.height, g.width) for g in grids) < 32:
            raise ConfigError("scenes smaller than 32 pixels cannot be trained on")
        rng = np.random.default_rng(options.seed)
        n_train = options.steps_per_epoch * options.batch_size
        train = _random_chips(sources, n_train, size, rng)
        val = _random_chips(val_pool, max(options.batch_size, 8), size, rng)
        return cls(train, val, size)


def _check_label_values(label_counts: np.ndarray, workflow: Workflow) -> None:
    """Refuse labels holding class values the workflow does not have."""
    k = len(workflow.classes)
    too_high = np.nonzero(label_counts[k:NO_LABEL])[0]
    if too_high.size:
        raise ConfigError(
            f"labels hold class value {int(too_high[0]) + k} but workflow {workflow.name!r} "
            f"has {k} classes (0..{k - 1}); fix the labels or the workflow's classes"
        )


def _task_hparams(
    config: TorchGeoModelConfig, in_channels: int, n_classes: int, lr: float
) -> dict[str, Any]:
    """The settings of TorchGeo's segmentation task for the network.

    The task is built with them and the checkpoint stores them, so TorchGeo loads it too.
    """
    return {
        "model": config.arch,
        "backbone": config.backbone,
        "weights": None,
        "in_channels": in_channels,
        "num_classes": n_classes,
        "loss": "ce",
        "ignore_index": NO_LABEL,
        "lr": lr,
        "task": "multiclass",
    }


def _new_task(hparams: dict[str, Any], seed: int, weights: str | None) -> Any:
    """TorchGeo's segmentation task, seeded, with the backbone's ``weights`` if any."""
    import lightning.pytorch as pl
    from torchgeo.trainers import SemanticSegmentationTask

    pl.seed_everything(seed, workers=True, verbose=False)
    task = SemanticSegmentationTask(**hparams)
    if weights:
        init_backbone(task.model, weights)
    return task


def _fit(task: Any, datasets: tuple[Dataset, Dataset], options: TrainOptions) -> list[float]:
    """Train ``task`` on the (training, validation) chips under Lightning; each step's loss."""
    import lightning.pytorch as pl

    losses: list[float] = []

    class _Losses(pl.Callback):
        first = 0  # this epoch's first step in ``losses``

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.first = len(losses)

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses.append(float(loss))

        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            epoch = losses[self.first :]
            if options.on_epoch is not None and epoch:
                n = trainer.current_epoch + 1
                options.on_epoch(n, options.epochs, sum(epoch) / len(epoch))

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
    train_set, val_set = datasets
    with warnings.catch_warnings():
        # Lightning's own use of a torch class torch now deprecates: nothing a user can act on.
        warnings.filterwarnings("ignore", message=LIGHTNING_PYTREE_WARNING)
        trainer.fit(
            task,
            train_dataloaders=DataLoader(train_set, batch_size=options.batch_size, shuffle=True),
            val_dataloaders=DataLoader(val_set, batch_size=options.batch_size, shuffle=False),
        )
    return losses


def _training_data(
    samples: Sequence[Sample],
    validation: Sample | None,
    chips: _Chips,
    options: TrainOptions,
    weights: str | None,
) -> dict[str, Any]:
    """What the model card says the network was trained on, and how."""
    return {
        "scenes": [s.scene.id for s in samples],
        "before": [s.before.id if s.before else None for s in samples],
        "labels": sorted({s.labels for s in samples}),
        "validation": validation.scene.id if validation else None,
        "chips": len(chips.train),
        "chip_size": chips.size,
        "epochs": options.epochs,
        "batch_size": options.batch_size,
        "seed": options.seed,
        "pretrained": weights,
    }


def _loss_metrics(losses: list[float]) -> dict[str, float]:
    """The first step's loss and the mean of the last tenth of the steps'."""
    if not losses:
        return {}
    return {
        "loss_first": losses[0],
        "loss_last": float(np.mean(losses[-max(1, len(losses) // 10) :])),
    }


def _validation_metrics(
    model: TorchGeoSegmentation,
    val_sources: list[_Source],
    workflow: Workflow,
    options: TrainOptions,
) -> dict[str, float]:
    """IoU per class and overall accuracy on the validation scene, if one was given."""
    if not val_sources:
        return {}
    v = val_sources[0]
    pred = predict_scene(model, v, workflow.tile_size, workflow.halo)
    window = Block(0, 0, v.grid.height, v.grid.width).window
    truth = read_labels(v.sample.labels, v.grid, window, options.label_field)
    report = report_from_confusion(confusion_of(pred, truth))
    names = {c.value: c.name for c in workflow.classes}
    metrics = {
        f"val_iou_{names.get(m.value, m.value)}": m.iou
        for m in report.classes
        if not math.isnan(m.iou)
    }
    return metrics | {"val_overall_accuracy": report.overall_accuracy}
