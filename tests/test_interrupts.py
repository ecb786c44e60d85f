"""Interruptions survive asyncio: a signal that arrives while an event loop runs one of its
callbacks or tasks (datatrove's inference step is one asyncio loop) must still end the loop."""

import asyncio
import signal

import pytest

from selflengthen import interrupts


def test_an_interruption_inside_an_asyncio_callback_ends_the_loop() -> None:
    async def step() -> None:
        asyncio.get_running_loop().call_soon(interrupts._raise_interrupted, signal.SIGHUP, None)
        await asyncio.sleep(5)  # asyncio logs and drops any other BaseException raised in a callback

    with pytest.raises(interrupts.Interrupted) as raised:
        asyncio.run(step())
    assert interrupts.exit_status(raised.value) == 128 + signal.SIGHUP


def test_an_interruption_inside_a_task_nobody_awaits_ends_the_loop() -> None:
    async def background() -> None:
        interrupts._raise_interrupted(signal.SIGTERM, None)

    tasks: list[asyncio.Task[None]] = []

    async def step() -> None:
        tasks.append(asyncio.get_running_loop().create_task(background()))
        await asyncio.sleep(5)

    with pytest.raises(interrupts.Interrupted):
        asyncio.run(step())
    assert isinstance(tasks[0].exception(), interrupts.Interrupted)
