"""A local stand-in for the OpenAI API (Chat Completions with inline moderation, moderations, models).

Development, the embedded demo, tests and benchmarks run against it the way LocalStack stands in for AWS:
the wire format is :mod:`schemas`, the moderation scores come from a deterministic lexicon classifier,
the generated text from a hash of the prompt and ``seed``, and faults, latency and rate limits are set per
server (:class:`SimulatorConfig`) and per request (directives: the ``x-sim-fault`` header,
``metadata["sim_fault"]`` or ``[[sim:…]]`` in a message); a provider-wide outage that ends is started over
``/sim/outage`` (:mod:`.outage`).

- :class:`Simulator` / :func:`run_simulator` — in-process, on the caller's event loop.
- :class:`SimulatorProcess` — in a child process (its own core), for benchmarks and multi-process tests.
- ``pipeline simulate`` / ``python -m pipeline.simulator`` — the command line (:mod:`.cli`).
"""

from pipeline.simulator.config import SimulatorConfig, config_from_env
from pipeline.simulator.directives import DirectiveError, Directives, FaultRule, parse_directives
from pipeline.simulator.latency import FixedLatency, Latency, LognormalLatency, UniformLatency
from pipeline.simulator.process import SimulatorError, SimulatorProcess
from pipeline.simulator.server import Simulator, run_simulator
from pipeline.simulator.stats import SimulatorStats

__all__ = [
    "DirectiveError",
    "Directives",
    "FaultRule",
    "FixedLatency",
    "Latency",
    "LognormalLatency",
    "Simulator",
    "SimulatorConfig",
    "SimulatorError",
    "SimulatorProcess",
    "SimulatorStats",
    "UniformLatency",
    "config_from_env",
    "parse_directives",
    "run_simulator",
]
