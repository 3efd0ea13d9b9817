"""Leave-one-fire-out choice of the fire workflow's burned/unburned parameters, with its code.

For each of the nine fires of ``../shared/data/fire``, the parameters (``burn_threshold``,
``red_veto``, ``closing_m``, filling holes, minimum scar area) are chosen on the eight
other fires: the combination of the grid below with the best mean burned IoU there. The
held-out fire is then scored with them. Scores are the workflow's own: the model
(``fire-burned-dnbr``, calibrated on each scene as a run does) and its polygons (all burned
classes as one, holes filled, small scars dropped) rasterized on the scene's grid, against the
CAL FIRE perimeter, over pixels with data in both dates. ``smoothing_m`` stays at the
workflow's 20 m. The scenes hold no cloud (their masks are empty), so they are not masked
here, which saves running the cloud network 1400 times.

Run: ``.venv/bin/python benchmarks/fire_loo.py`` (about five minutes on two cores). Prints the
held-out IoU per fire, the mean and the lowest, each fold's choice, and the scores of the
shipped values on all nine fires.
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import numpy as np
from rasterio import features

from pipeline.catalog import load_catalog
from pipeline.grid import Block
from pipeline.inference import process_block
from pipeline.models import build_model
from pipeline.planning import plan
from pipeline.reading import read_labels
from pipeline.stitch import NODATA
from pipeline.vectorize import vectorize
from pipeline.workflow import IndexModelConfig, load_workflow

ROOT = Path(__file__).resolve().parents[1]
FIRES = {
    "fire-1-12": "1-12_20200824",
    "fire-1-7": "1-7_20200817",
    "puma": "4-3_PUMA_20210624",
    "potters": "5-4_POTTERS__20200817",
    "incident-5": "5_INCIDENT_20240715",
    "fire-66": "66_20230515",
    "fire-68": "68_20210818",
    "dove": "DOVE_20241019",
    "hurst": "HURST_20250107",
}
GRID = {
    "burn_threshold": [0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.10],
    "red_veto": [0.5, 0.75, 1.0, 1e9],
    "closing_m": [0, 20, 30, 40, 50],
    "fill": [False, True],
    "min_ha": [0, 5, 10, 20, 40],
}


def scores_of(name: str, shared: Path) -> np.ndarray:
    """The fire's burned IoU for every combination of :data:`GRID`, in product order."""
    workflow = load_workflow("fire")
    catalog = load_catalog(ROOT / "data_catalog.yaml")
    scene, before = catalog.scene(f"{name}-post"), catalog.scene(f"{name}-pre")
    model, scene, before, grid = plan(workflow, scene, before)
    whole = Block(0, 0, grid.height, grid.width)
    truth = read_labels(str(shared / FIRES[name] / "perimeter_mask.tif"), grid, whole.window) == 1
    lookup = np.asarray(workflow.polygon_lookup(), dtype=np.uint8)
    out = []
    for t, veto, closing in itertools.product(*list(GRID.values())[:3]):
        params = {
            **workflow.model.params,
            "burn_threshold": t,
            "red_veto": veto,
            "closing_m": closing,
        }
        config = IndexModelConfig(kind="index", name="fire-burned-dnbr", params=params)
        tuned = build_model(config, workflow.classes, model.calibration)
        classes, confidence = process_block(tuned, scene, before, grid, whole, tuned.context_px)
        valid = classes != NODATA
        for fill, min_ha in itertools.product(GRID["fill"], GRID["min_ha"]):
            polys = vectorize(
                lookup[classes],
                confidence,
                grid,
                [3],
                NODATA,
                min_area_m2=min_ha * 1e4,
                fill_holes_m2=1e8 if fill else 0.0,
            )
            burned = np.zeros(classes.shape, dtype=bool)
            if len(polys):
                burned = features.rasterize(
                    ((g, 1) for g in polys.geometry), out_shape=classes.shape, transform=grid.affine
                ).astype(bool)
            b, m = burned & valid, truth & valid
            out.append((b & m).sum() / max((b | m).sum(), 1))
    return np.array(out)


def main() -> None:
    """Print the nested leave-one-fire-out scores and the shipped values' scores."""
    shared = ROOT.parent / "shared" / "data" / "fire"
    t0 = time.perf_counter()
    names = list(FIRES)
    table = np.stack([scores_of(n, shared) for n in names])
    combos = list(itertools.product(*GRID.values()))
    held = []
    for i, name in enumerate(names):
        others = np.delete(table, i, axis=0).mean(axis=0)
        j = int(np.argmax(others))  # ties: the first in grid order
        held.append(table[i, j])
        print(f"fold {name:11s} chose {dict(zip(GRID, combos[j], strict=True))}")
    print("held-out IoU  " + " ".join(f"{n}={v:.3f}" for n, v in zip(names, held, strict=True)))
    print(f"leave-one-fire-out: mean {np.mean(held):.3f}, lowest {np.min(held):.3f}")
    shipped = combos.index((0.05, 0.75, 30, True, 20))
    ship = table[:, shipped]
    print("shipped values " + " ".join(f"{n}={v:.3f}" for n, v in zip(names, ship, strict=True)))
    print(f"shipped values: mean {ship.mean():.3f}, lowest {ship.min():.3f}")
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
