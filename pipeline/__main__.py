"""``python -m pipeline`` runs the ``geoseg`` command line."""

import sys

from pipeline.cli import main

sys.exit(main())
