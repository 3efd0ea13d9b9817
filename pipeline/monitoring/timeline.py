"""A series' timeline: each scene's row of the ``timeline`` table, and ``timeline.png``.

The plot shows the area of each watched class (the workflow's ``monitor:`` classes, else its
polygon classes) per scene, and the area under high-confidence alerts; below, the share of each
scene masked by cloud and shadow, with the scenes too cloudy to use marked, so that a dip in
forest under cloud is never read as a loss.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline.workflow import Workflow


def timeline_row(
    scene: str,
    acquired: dt.date | None,
    status: str,
    workflow: Workflow,
    masked: Mapping[str, float],
    class_km2: Mapping[str, float] | None = None,
    alerts_km2: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A scene's timeline row; areas stay empty (NULL) for a scene that was not observed."""
    row: dict[str, Any] = {
        "scene": scene,
        "acquired": acquired.isoformat() if acquired else None,
        "status": status,
        "masked_fraction": masked.get("total"),
        "cloud_fraction": masked.get("cloud"),
        "shadow_fraction": masked.get("cloud_shadow"),
    }
    for c in workflow.classes:
        row[f"{c.name}_km2"] = class_km2.get(c.name) if class_km2 is not None else None
    for key in ("new_alerts", "confirmed", "withdrawn", "low_alerts", "high_alerts"):
        row[f"{key}_km2"] = alerts_km2.get(key) if alerts_km2 is not None else None
    return row


def plotted_classes(workflow: Workflow) -> list[tuple[str, str]]:
    """(name, colour) of the classes the plot draws."""
    colours = {c.name: c.colour for c in workflow.classes}
    watched = [*workflow.monitor.lost, *workflow.monitor.appeared]
    names = watched or [c.name for c in workflow.polygon_classes() if c.name in colours]
    return [(n, colours[n]) for n in names]


def timeline_png(rows: Sequence[Mapping[str, Any]], workflow: Workflow, series: str) -> bytes:
    """``timeline.png`` of the timeline ``rows`` (oldest first)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    dated = [r for r in rows if r.get("acquired")]
    when = [dt.date.fromisoformat(r["acquired"]) for r in dated]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(9, 5.5), sharex=True, height_ratios=(3, 1), layout="constrained"
    )
    for name, colour in plotted_classes(workflow):
        values = [_nan(r.get(f"{name}_km2")) for r in dated]
        top.plot(when, values, marker="o", color=colour, label=f"{name} (km²)")
    top.plot(
        when,
        [_nan(r.get("high_alerts_km2")) for r in dated],
        marker="s",
        linestyle="--",
        color="#d7191c",
        label="under high-confidence alerts (km²)",
    )
    top.set_ylabel("area (km²)")
    top.set_title(f"{workflow.name}: series {series}")
    top.legend(loc="best", fontsize="small")
    top.grid(alpha=0.3)
    masked = [_nan(r.get("masked_fraction")) * 100 for r in dated]
    bottom.bar(when, masked, width=_bar_width(when), color="#9e9e9e", label="masked (%)")
    unusable = [d for d, r in zip(when, dated, strict=True) if r.get("status") == "unusable"]
    bottom.plot(unusable, [100] * len(unusable), "x", color="black", label="too cloudy to use")
    bottom.set_ylim(0, 110)
    bottom.set_ylabel("masked %")
    bottom.legend(loc="upper left", fontsize="small")
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=100)
    plt.close(fig)
    return out.getvalue()


def write_timeline_png(path: Path, png: bytes) -> None:
    """Write ``png`` to ``path`` under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(png)
    os.replace(tmp, path)


def _nan(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _bar_width(dates: Sequence[dt.date]) -> float:
    """Bars a third of the shortest gap between scenes wide (in days), at least one day."""
    gaps = [(b - a).days for a, b in zip(dates, dates[1:], strict=False) if b > a]
    return max(1.0, min(gaps, default=3) / 3)
