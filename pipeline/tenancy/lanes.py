"""Priority lanes: the input topics a worker reads, each with its weight in the call slots.

``PIPELINE_INPUT_TOPICS=prompts.interactive=8,prompts.bulk=1`` makes two lanes; under load the scheduler
gives them the slots 8 to 1 (:mod:`pipeline.tenancy.fair`), and a lane with nothing waiting lends its share
to the others. ``PIPELINE_INPUT_TOPIC`` stays a lane (weight 1 unless listed): it is where ``pipeline
produce`` and ``replay`` write, so a worker never stops reading it.
"""

from __future__ import annotations

from pipeline.config import WorkerSettings


def input_lanes(settings: WorkerSettings) -> dict[str, int]:
    """Every input topic the worker reads, with its weight (``PIPELINE_INPUT_TOPIC`` first)."""
    return {settings.input_topic: 1, **settings.input_topics}
