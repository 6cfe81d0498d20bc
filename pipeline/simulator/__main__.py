"""``python -m pipeline.simulator``: the same as ``pipeline simulate``."""

from pipeline.simulator.cli import main

raise SystemExit(main())
