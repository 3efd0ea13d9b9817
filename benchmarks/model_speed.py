"""Forward-pass throughput (tiles/s) of the networks geoseg ships, as the pipeline runs them.

Each worker process runs one torch thread, fp32, channels-last, under ``torch.inference_mode``,
exactly as :func:`pipeline.inference.predict_batch` does; ``--processes`` runs that many such
workers at once (the default local cluster has one per core) and reports their total.

    .venv/bin/python benchmarks/model_speed.py --tile 512 --halo 32 --batch 1 4 --processes 1 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import time

import numpy as np
import torch

from pipeline.inference import predict_batch
from pipeline.models.card import CardClass, ModelCard
from pipeline.models.networks import TorchGeoSegmentation, build_network

#: The shipped network: fire-unet (U-Net, ResNet18, 5 bands × 2 dates, 2 classes).
ARCH, BACKBONE, BANDS, CLASSES = "unet", "resnet18", 5, 2


def _model() -> TorchGeoSegmentation:
    card = ModelCard(
        arch=ARCH,
        backbone=BACKBONE,
        bands=("blue", "green", "red", "nir", "swir22"),
        needs_before=True,
        classes=tuple(CardClass(value=i, name=f"c{i}", colour="#000000") for i in range(CLASSES)),
    )
    net = build_network(ARCH, BACKBONE, card.in_channels, CLASSES)
    model = TorchGeoSegmentation(net, card, "bench")
    model.net.to(memory_format=torch.channels_last)
    return model.eval()


def _worker(args: tuple[int, int, float]) -> int:
    """Run forward passes for ``seconds``; return the number of tiles done."""
    edge, batch, seconds = args
    torch.set_num_threads(1)
    model = _model()
    rng = np.random.default_rng(0)
    data = rng.uniform(0, 0.4, (batch, model.in_channels, edge, edge)).astype(np.float32)
    valid = np.ones((batch, edge, edge), dtype=bool)
    predict_batch(model, data, valid)  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        predict_batch(model, data, valid)
        done += batch
    return done


def main() -> None:
    """Measure and print one JSON line per configuration."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tile", type=int, default=512, help="block edge (default 512)")
    p.add_argument("--halo", type=int, default=32, help="halo on each side (default 32)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--seconds", type=float, default=20.0, help="measuring time per run")
    a = p.parse_args()
    edge = a.tile + 2 * a.halo
    ctx = mp.get_context("spawn")
    for procs in a.processes:
        for batch in a.batch:
            with ctx.Pool(procs) as pool:
                tiles = pool.map(_worker, [(edge, batch, a.seconds)] * procs)
            rate = sum(tiles) / a.seconds
            print(
                json.dumps(
                    {
                        "network": f"{ARCH}-{BACKBONE}",
                        "input": [BANDS * 2, edge, edge],
                        "tile": a.tile,
                        "halo": a.halo,
                        "batch": batch,
                        "processes": procs,
                        "threads_per_process": 1,
                        "tiles_per_s": round(rate, 3),
                        "mpx_per_s_of_output": round(rate * a.tile * a.tile / 1e6, 3),
                    }
                )
            )


if __name__ == "__main__":
    main()
