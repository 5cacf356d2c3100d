"""Ctrl-C or SIGTERM of a run in the foreground: the kill waits for the event loop, never lands inside a commit."""

import asyncio
import os
import signal

import pytest
from aiida import orm
from aiida.engine import ToContext, WorkChain
from aiida.manage import get_manager

from tace_aiida.abandoned import interrupts_kill, run_in_foreground


class RecordedProcess:
    """What :func:`interrupts_kill` uses of a process: its loop, ``kill`` and its state."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.pid, self.kills = loop, 1, []

    @property
    def is_killing(self) -> bool:
        return bool(self.kills)

    def has_terminated(self) -> bool:
        return False

    def kill(self, msg_text: str) -> None:
        self.kills.append(msg_text)


def test_an_interrupt_kills_from_the_event_loop_and_a_second_one_stops_at_once():
    loop = asyncio.new_event_loop()
    process = RecordedProcess(loop)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        with interrupts_kill(process):
            os.kill(os.getpid(), signal.SIGTERM)
            assert process.kills == [], "the handler itself kills nothing"
            loop.run_until_complete(asyncio.sleep(0))
            assert process.kills == ["Process was killed because the runner received an interrupt"]
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                loop.run_until_complete(asyncio.sleep(0.1))  # the handler raises at the next bytecode, at the latest
    finally:
        loop.close()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


class Pause(WorkChain):
    """A child to wait for: its parent hands the event loop over while it runs."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(cls.pause)

    def pause(self):
        import time

        time.sleep(0.2)


class InterruptedMidCommit(WorkChain):
    """Stores a node and receives SIGINT while SQLAlchemy flushes it, inside the commit, then waits for a child."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.outline(cls.store_while_interrupted, cls.not_reached)

    def store_while_interrupted(self):
        from sqlalchemy import event

        session = get_manager().get_profile_storage().get_session()
        event.listen(session, "after_flush_postexec", lambda *_: os.kill(os.getpid(), signal.SIGINT), once=True)
        self.ctx.stored = orm.Str("stored while interrupted").store().pk
        return ToContext(pause=self.submit(Pause))

    def not_reached(self):
        raise AssertionError("the run went on after it was killed")


@pytest.mark.timeout(120)
def test_a_run_interrupted_inside_a_database_commit_is_killed_and_keeps_what_it_stored(aiida_profile):
    """aiida-core's own handler kills inside the commit: the session is left 'prepared' and the run hangs."""
    process = get_manager().get_runner().instantiate_process(InterruptedMidCommit)
    node = run_in_foreground(process)
    assert node.is_killed
    assert node.process_status == "Process was killed because the runner received an interrupt"
    assert orm.QueryBuilder().append(orm.Str, filters={"attributes.value": "stored while interrupted"}).count() == 1
