"""A torch model on its device: inputs sent without waiting, batches sized to its memory.

On a GPU, a batch of tiles crosses from host memory before each forward pass. Copied from
page-locked (pinned) memory the transfer is a DMA the host does not wait for, so the next
batch's preparation overlaps it; torch keeps freed pinned buffers for reuse, so a run of
equal batches pins memory once. How many tiles one pass takes is found by measuring one
tile's pass on the device, against the memory it has free. On the CPU both are plain: the
array is used where it lies, and the batch is what the workflow asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

#: Most tiles of one forward pass on a GPU: a few 1024² tiles already fill a GPU's cores,
#: and each tile more only adds to the wait for the batch to be read.
MOST_GPU_TILES = 16
#: Share of the device's free memory one forward pass may take (the rest: what other
#: processes and torch's own allocator need meanwhile).
MEMORY_SHARE = 0.6


def device_of(model: Any) -> torch.device:
    """The device a torch module's parameters lie on (the CPU for one without any)."""
    import torch

    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` as a tensor on ``device``: on a GPU from pinned memory, without a wait."""
    import torch

    tensor = torch.from_numpy(x)
    if device.type != "cuda":
        return tensor.to(device)
    return tensor.pin_memory().to(device, non_blocking=True)


def fitting_batch(model: Any, shape: tuple[int, int, int], cpu_batch: int) -> int:
    """Tiles of ``shape`` (channels, height, width) that one forward pass of ``model`` takes.

    On a GPU, as many as :data:`MEMORY_SHARE` of its free memory holds, measured with one
    tile's pass, up to :data:`MOST_GPU_TILES`; elsewhere (the CPU, an OpenVINO network)
    ``cpu_batch``.
    """
    if not hasattr(model, "parameters") or device_of(model).type != "cuda":
        return max(1, cpu_batch)
    import torch

    device = device_of(model)
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    with torch.inference_mode():
        model(torch.zeros((1, *shape), device=device))
    torch.cuda.synchronize(device)
    per_tile = max(1, torch.cuda.max_memory_allocated(device) - before)
    free, _ = torch.cuda.mem_get_info(device)
    return int(min(MOST_GPU_TILES, max(1, MEMORY_SHARE * free // per_tile)))
