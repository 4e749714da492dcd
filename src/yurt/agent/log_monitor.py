"""The agent's log lines for `/v1/agent/monitor` (`yurt monitor`, as `nomad monitor`).

A `logging.Handler` on the root logger fans each record out to the monitors following the
agent: every monitor has its own level and format and a bounded queue on the event loop that
serves it. A monitor that reads too slowly loses lines instead of slowing the agent down; the
lines it lost are counted and reported to it in its own stream.

The handler is installed when the first monitor subscribes. A monitor may ask for more detail
than the agent logs (`-log-level debug` on an agent at info): the root logger is then lowered
while it follows, and the agent's own handlers keep the agent's configured level.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

QUEUE_LINES = 1024   # lines a monitor may have unread before new ones are dropped
TEXT_FORMAT = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s: %(message)s")


class Subscriber:
    def __init__(self, level: int, json_lines: bool, loop: asyncio.AbstractEventLoop,
                 include_location: bool = False) -> None:
        self.level = level
        self.json = json_lines
        self.include_location = include_location
        self.loop = loop
        self.queue: asyncio.Queue[str] = asyncio.Queue(QUEUE_LINES)
        self.dropped = 0          # lines lost since the last report (read on the loop)

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + TEXT_FORMAT.formatException(record.exc_info)
        if self.json:
            body = {"@level": record.levelname.lower().replace("warning", "warn"), "@message": message,
                    "@module": record.name,
                    "@timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                    + f".{int(record.msecs):03d}Z"}
            if self.include_location:
                body["@caller"] = f"{record.pathname}:{record.lineno}"
            return json.dumps(body) + "\n"
        line = TEXT_FORMAT.format(logging.makeLogRecord({**record.__dict__, "msg": message, "args": None,
                                                         "exc_info": None, "exc_text": None}))
        if self.include_location:
            line += f" ({record.pathname}:{record.lineno})"
        return line + "\n"

    def offer(self, line: str) -> None:
        """On the subscriber's loop: queue the line, or count it lost."""
        try:
            self.queue.put_nowait(line)
        except asyncio.QueueFull:
            self.dropped += 1


class LogMonitor(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self._subs: list[Subscriber] = []
        self._subs_lock = threading.Lock()
        self._installed = False
        self._agent_level = logging.INFO   # the root logger's level before any monitor lowered it

    def subscribe(self, level: int, json_lines: bool, include_location: bool = False) -> Subscriber:
        sub = Subscriber(level, json_lines, asyncio.get_running_loop(), include_location)
        with self._subs_lock:
            if not self._installed:
                self._install()
            self._subs.append(sub)
            self._fit_root_level()
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        with self._subs_lock:
            if sub in self._subs:
                self._subs.remove(sub)
            self._fit_root_level()

    def close(self) -> None:
        with self._subs_lock:
            self._subs.clear()
            if self._installed:
                root = logging.getLogger()
                root.removeHandler(self)
                root.setLevel(self._agent_level)
                self._installed = False
        super().close()

    def _install(self) -> None:
        root = logging.getLogger()
        self._agent_level = root.level
        for handler in root.handlers:   # the agent's own output keeps the agent's level
            if handler.level == logging.NOTSET:
                handler.setLevel(self._agent_level)
        root.addHandler(self)
        self._installed = True

    def _fit_root_level(self) -> None:
        wanted = min([self._agent_level] + [s.level for s in self._subs])
        logging.getLogger().setLevel(wanted)

    def emit(self, record: logging.LogRecord) -> None:
        for sub in list(self._subs):
            if record.levelno < sub.level:
                continue
            try:
                line = sub.format(record)
                sub.loop.call_soon_threadsafe(sub.offer, line)
            except RuntimeError:   # its loop is closed: the agent is stopping
                continue
            except Exception:   # noqa: BLE001 -- a record that cannot be formatted must not break the agent's logging
                self.handleError(record)
