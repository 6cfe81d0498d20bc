"""``pipeline run``'s signals: the first SIGTERM/SIGINT drains, a second exits at once with 130."""

from __future__ import annotations

import asyncio
import os
import signal

from pipeline.commands.run import EXIT_AT_ONCE, STOP_SIGNALS, StopSignals


class Exits:
    def __init__(self) -> None:
        self.codes: list[int] = []

    def __call__(self, code: int) -> None:
        self.codes.append(code)


def test_the_first_signal_stops_gracefully_and_the_second_exits_with_130() -> None:
    stop, exits = asyncio.Event(), Exits()
    handler = StopSignals(stop, exit_now=exits)
    handler()
    assert stop.is_set() and exits.codes == []
    handler()
    assert exits.codes == [EXIT_AT_ONCE] == [130]


async def test_real_signals_reach_the_handler_in_order() -> None:
    stop, exits = asyncio.Event(), Exits()
    handler = StopSignals(stop, exit_now=exits)
    loop = asyncio.get_running_loop()
    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, handler)
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(stop.wait(), timeout=5)
        assert exits.codes == []
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            if exits.codes:
                break
            await asyncio.sleep(0.001)
        assert exits.codes == [130] and handler.received == 2
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)
