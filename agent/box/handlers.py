"""What the box does for each command from the centre (docs/commands.md, "Commands").

Each handler is given only what it acts on (the indicator, the video, the walk test, a status
summary), not the daemon, and gets a Command whose ``params`` are its own argument type: the
pairing in :meth:`BoxCommands.specs` is where each command is declared, and mypy checks it.
Handlers run on the uplink thread: each does a short piece of work and hands the rest on (a
live feed streams from its camera's thread, a fetch writes on a thread of its own).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from agent.commands.args import (
    ACK,
    FETCH,
    LIVE,
    PING,
    TEST_MODE,
    AckArgs,
    FetchArgs,
    LiveArgs,
    NoArgs,
    TestModeArgs,
)
from agent.commands.router import CommandSpec, Data
from agent.commands.verify import Command
from agent.commands.wire import CommandRejected
from agent.delivery.protocol import Topics
from agent.hardware.indicators import Indicators
from agent.video.pipeline import Video

log = logging.getLogger("agent.daemon")


class BoxCommands:
    """The box's handlers. ``set_test_mode`` starts a walk test for that many minutes (None:
    ends it), tells the centre, and returns when it ends (RFC 3339), or None."""

    def __init__(
        self,
        *,
        indicators: Indicators,
        video: Video,
        topics: Topics,
        summary: Callable[[], str],
        set_test_mode: Callable[[int | None], str | None],
    ) -> None:
        self._indicators = indicators
        self._video = video
        self._topics = topics
        self._summary = summary
        self._set_test_mode = set_test_mode

    def specs(self) -> tuple[CommandSpec[Any], ...]:
        return (
            CommandSpec(PING, self.ping),
            CommandSpec(ACK, self.ack),
            CommandSpec(LIVE, self.live),
            CommandSpec(FETCH, self.fetch),
            CommandSpec(TEST_MODE, self.test_mode),
        )

    def ping(self, _cmd: Command[NoArgs]) -> Data:
        return {"pong": True, "summary": self._summary()}

    def ack(self, cmd: Command[AckArgs]) -> Data:
        event_id = cmd.params.event_id
        shown = self._indicators.acknowledged(event_id)
        log.warning(
            "the centre acknowledged alarm %s%s",
            event_id,
            "" if shown else " (not the one on the indicator)",
        )
        return {"indicator": str(self._indicators.pattern), "shown": shown}

    def live(self, cmd: Command[LiveArgs]) -> Data:
        feed = self._video.live.get(cmd.params.camera_id)
        if feed is None:
            raise CommandRejected("unknown_camera: no such camera on this box", cmd.id)
        session = f"live-{cmd.id}"
        feed.watch(session, cmd.params.seconds)
        return {"session": session, "topic": self._topics.live(cmd.params.camera_id)}

    def fetch(self, cmd: Command[FetchArgs]) -> Data:
        args = cmd.params
        if args.camera_id not in self._video.rings:
            raise CommandRejected("unknown_camera: no such camera on this box", cmd.id)
        clip_id = f"fetch-{cmd.id}"
        count = self._video.fetch(args.camera_id, args.start, args.end, clip_id)
        if not count:
            raise CommandRejected("no_video: the box no longer holds that window", cmd.id)
        return {"clip_id": clip_id, "segments": count}

    def test_mode(self, cmd: Command[TestModeArgs]) -> Data:
        until = self._set_test_mode(cmd.params.minutes if cmd.params.on else None)
        return {"test_mode_until": until}
