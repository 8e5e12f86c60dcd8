"""Containers' output into the history: one thread per followed stream, drained on the event loop.

- stdout: the peers' JSON lines become observations at their own ``ts`` (``observe_at``);
- stderr: WARNING records become ``log`` ops; ERROR/CRITICAL records and tracebacks become
  ``error_log`` ops and are logged again at ERROR on ``harness.container``, which fails the test
  (``tests/plugins/no_errors.py``). Containers that are not followed (portal, relays) are read once
  more at :meth:`LogPump.scan_stderr` time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import re
import threading

from docker.models.containers import Container

from .history import History, observe_at

log = logging.getLogger("harness.container_logs")
container_log = logging.getLogger("harness.container")

LOG_LINE = re.compile(r"^\S+ \S+ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<message>.*)$")
ERROR_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (ERROR|CRITICAL) |^Traceback \(most recent call last\)")
JOIN_TIMEOUT = 5.0


class LogPump:
    """The output of one stack's containers, as history ops and ERROR records."""

    def __init__(self, history: History, stack: str) -> None:
        self.history = history
        self.stack = stack
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop :meth:`drain` is scheduled on when lines arrive (none: the caller drains)."""
        self.errors: list[str] = []
        self._reported = 0
        self._lines: queue.SimpleQueue[tuple[str, str, str]] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._stderr_seen: dict[str, int] = {}

    def follow(self, name: str, container: Container, since: float | None = None) -> None:
        """Stream a started container's stdout and stderr into the history: from its first line, or
        (``since``, unix seconds) from what it wrote since then, e.g. after a restart of it."""
        if self.loop is None:
            try:
                self.loop = asyncio.get_running_loop()
            except RuntimeError:
                pass
        for stream in ("stdout", "stderr"):
            thread = threading.Thread(
                target=self._pump, args=(name, container, stream, since), name=f"logs-{name}-{stream}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def _pump(self, name: str, container: Container, stream: str, since: float | None) -> None:
        buffer = b""
        kwargs = {} if since is None else {"since": since}
        try:
            for chunk in container.logs(
                stream=True, follow=True, stdout=stream == "stdout", stderr=stream == "stderr", **kwargs
            ):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    self._lines.put((name, stream, line.decode(errors="replace")))
                loop = self.loop
                if lines and loop is not None and not loop.is_closed():
                    loop.call_soon_threadsafe(self.drain)
        except Exception as exc:  # the container went away or the engine hung up: the stream is over
            log.debug("Log stream ended container=%s error=%s", name, exc)
        if buffer:
            self._lines.put((name, stream, buffer.decode(errors="replace")))

    def join(self, timeout: float = JOIN_TIMEOUT) -> None:
        """Wait (bounded) for the streams of containers that are gone to end."""
        for thread in self._threads:
            thread.join(timeout=timeout)

    def drain(self) -> None:
        """Move the lines the threads read into the history (call from one thread at a time)."""
        while True:
            try:
                name, stream, text = self._lines.get_nowait()
            except queue.Empty:
                return
            if stream == "stderr":
                self._stderr_line(name, text)
                continue
            if not text.startswith("{"):
                continue
            try:
                line = json.loads(text)
            except json.JSONDecodeError:
                continue
            if isinstance(line, dict):
                observe_at(self.history, line)

    def _stderr_line(self, name: str, text: str) -> None:
        if ERROR_LINE.search(text):
            self.error(name, text)
        elif (match := LOG_LINE.match(text)) and match["level"] == "WARNING":
            self.history.observe("log", name, level=match["level"], logger=match["logger"], message=match["message"])

    def scan_stderr(self, name: str, container: Container) -> None:
        """The ERROR lines an unfollowed container wrote since the last scan."""
        lines = container.logs(stdout=False, stderr=True).decode(errors="replace").splitlines()
        for line in lines[self._stderr_seen.get(name, 0) :]:
            if ERROR_LINE.search(line):
                self.error(name, line)
        self._stderr_seen[name] = len(lines)

    def error(self, name: str, text: str) -> None:
        """An ERROR from the stack: into the history, and at ERROR here (which fails the test)."""
        self.errors.append(f"{name}: {text}")
        self.history.observe("error_log", name, line=text[:500])
        container_log.error("%s %s: %s", self.stack, name, text)

    def fresh_errors(self) -> list[str]:
        """The errors since the last call."""
        fresh = self.errors[self._reported :]
        self._reported = len(self.errors)
        return fresh
