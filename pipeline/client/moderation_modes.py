"""The ``separate`` and ``auto`` moderation modes: one job's input and output moderated through ``/moderations``.

(``inline``, the default, needs nothing here: the request carries ``moderation`` and the answer brings it.)

- ``separate``: the input side starts at once, concurrently with the completion; the output side once the
  completion is in. The completion's own ``moderation`` (there should be none) is replaced.
- ``auto``: inline first; only a completion that came back without ``moderation`` has both sides
  moderated separately.

Both sides are bounded by the job's deadline; a side it cuts short becomes a ``ModerationError``
(``moderation_deadline``): the completion is kept, and it goes to review. What a side's call answers is
mapped by :mod:`pipeline.client.moderation`; the call itself (with its retries) is the client's to supply.

Each side runs as a task of its own; :meth:`SeparateModeration.aclose` cancels and awaits every one still
running, so a job that ends any way (a failure, its deadline, its own cancellation) leaves none behind.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine

import msgspec

from pipeline.client.config import ModerationMode
from pipeline.client.moderation import ModerationCall, moderate_input, moderate_output
from pipeline.client.timing import Clock
from schemas.chat import ChatCompletion, Message, Moderation, ModerationError, ModerationOutcome


class SeparateModeration:
    """One job's moderation in ``separate`` or ``auto`` mode; :meth:`start` it before the completion is asked
    for, :meth:`apply` it to the completion, and :meth:`aclose` it when the job ends, whichever way."""

    def __init__(
        self,
        mode: ModerationMode,
        call: ModerationCall,
        messages: list[Message],
        model: str,
        *,
        deadline: float,
        clock: Clock,
    ) -> None:
        self._mode = mode
        self._call = call
        self._messages = messages
        self._model = model
        self._deadline = deadline
        self._clock = clock
        self._input_side: asyncio.Task[ModerationOutcome] | None = None
        self._tasks: set[asyncio.Task[ModerationOutcome]] = set()

    @classmethod
    def start(
        cls,
        mode: ModerationMode,
        call: ModerationCall,
        messages: list[Message],
        model: str,
        *,
        deadline: float,
        clock: Clock,
    ) -> SeparateModeration:
        """In ``separate`` mode the input side is moderated from now on, while the completion is generated."""
        moderation = cls(mode, call, messages, model, deadline=deadline, clock=clock)
        if mode == "separate":
            moderation._input_side = moderation._side(moderate_input(call, messages, model))
        return moderation

    async def apply(self, completion: ChatCompletion) -> ChatCompletion:
        """``completion`` with the moderation this mode calls for."""
        if self._mode == "separate" or (self._mode == "auto" and completion.moderation is None):
            return await self._moderated(completion)
        return completion

    async def aclose(self) -> None:
        """Cancel every side still running and wait until each has ended."""
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    def _side(self, moderation: Coroutine[None, None, ModerationOutcome]) -> asyncio.Task[ModerationOutcome]:
        task = asyncio.create_task(moderation)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _moderated(self, completion: ChatCompletion) -> ChatCompletion:
        """``completion`` with both sides moderated through ``/moderations``. What the job's deadline
        cuts short becomes a ``ModerationError``: the completion is kept, and it goes to review."""
        output_side = self._side(moderate_output(self._call, completion, self._model))
        input_side = self._input_side
        if input_side is None:
            input_side = self._side(moderate_input(self._call, self._messages, self._model))
        done, pending = await asyncio.wait({input_side, output_side}, timeout=max(0.0, self._deadline - self._clock()))
        for task in pending:
            task.cancel()
        late = ModerationError(code="moderation_deadline", message="the job's deadline passed during moderation")
        moderation = Moderation(
            input=input_side.result() if input_side in done else late,
            output=output_side.result() if output_side in done else late,
        )
        return msgspec.structs.replace(completion, moderation=moderation)
