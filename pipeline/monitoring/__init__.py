"""Monitoring a series: each new scene run once, compared with what was known, turned into alerts.

- :mod:`.monitor`: :func:`monitor`, the run behind ``geoseg monitor``;
- :mod:`.change`: each pixel's state and the alert rules (arrays only);
- :mod:`.alerts`: the alerts as polygons with their fields;
- :mod:`.timeline`: the timeline rows and ``timeline.png``;
- :mod:`.store`: ``OUT/WORKFLOW/SERIES``: ``monitor.gpkg``, the state rasters and the lock.
"""

from pipeline.monitoring.monitor import MonitorReport, check_watches, monitor

__all__ = ["MonitorReport", "check_watches", "monitor"]
