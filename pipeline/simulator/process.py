"""The simulator in a child process, so it gets a core of its own (benchmarks, multi-process tests)."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import IO, Final

import msgspec

from pipeline.simulator.config import ENV_CONFIG, SimulatorConfig, config_to_json
from pipeline.simulator.stats import SimulatorStats

LISTENING: Final = re.compile(r"listening on (http://\S+)")
_STATS = msgspec.json.Decoder(SimulatorStats)


class SimulatorError(RuntimeError):
    """The child did not come up (its last output lines are in the message)."""


class SimulatorProcess:
    """``python -m pipeline.simulator`` on a free port, from CLI ``args`` or a :class:`SimulatorConfig`.

    The child binds port 0 and prints the URL it got, so there is no race for a port. A config travels in
    the ``PIPELINE_SIM_CONFIG`` environment variable, never in argv (which ``ps`` shows to everyone).
    ``cpu`` pins the child to one core. Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(
        self,
        args: Sequence[str] | SimulatorConfig | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        cpu: int | None = None,
        env: Mapping[str, str] | None = None,
        startup_timeout_s: float = 30.0,
    ) -> None:
        self._argv = [sys.executable, "-m", "pipeline.simulator", "--host", host, "--port", str(port)]
        self._env = dict(os.environ if env is None else env)
        if isinstance(args, SimulatorConfig):
            self._env[ENV_CONFIG] = config_to_json(args)
        elif args is not None:
            self._argv.extend(args)
        if cpu is not None:
            self._argv.extend(["--cpu", str(cpu)])
        self._startup_timeout_s = startup_timeout_s
        self._process: subprocess.Popen[str] | None = None
        self._url: str | None = None
        self._ready = threading.Event()
        self._output: collections.deque[str] = collections.deque(maxlen=40)

    def start(self) -> SimulatorProcess:
        process = subprocess.Popen(
            self._argv, env=self._env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._process = process
        assert process.stdout is not None
        threading.Thread(target=self._drain, args=(process.stdout,), daemon=True).start()
        deadline = time.monotonic() + self._startup_timeout_s
        while not self._ready.wait(0.05):
            if process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SimulatorError("the simulator did not start:\n" + "\n".join(self._output))
        self._wait_until_answering(deadline)
        return self

    def _drain(self, stream: IO[str]) -> None:
        """Read the child's output for as long as it runs (a full pipe would block it)."""
        for line in stream:
            self._output.append(line.rstrip())
            match = LISTENING.search(line)
            if match and self._url is None:
                self._url = match[1]
                self._ready.set()

    def _wait_until_answering(self, deadline: float) -> None:
        while True:
            try:
                with urllib.request.urlopen(self.url + "/sim/health", timeout=1) as reply:
                    if reply.status == 200:
                        return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the simulator process is not started")
        return self._url

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def stats(self) -> SimulatorStats:
        with urllib.request.urlopen(self.url + "/sim/stats", timeout=10) as reply:
            return _STATS.decode(reply.read())

    def reset_stats(self) -> None:
        request = urllib.request.Request(self.url + "/sim/stats/reset", method="POST", data=b"")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code (``None`` if never started)."""
        process, self._process = self._process, None
        if process is None:
            return None
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        return process.returncode

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
