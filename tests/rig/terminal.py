"""Run a command under a pseudo-terminal of a given size and read its screen (pyte).

What a user would see: the command's stdout and stderr both go to the terminal; pyte
interprets the escape sequences (rich's cursor moves and erases) into a screen plus the
lines scrolled off its top (the scrollback).
"""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Sequence

import pyte


class Terminal:
    """``argv`` running under a ``rows`` x ``cols`` pseudo-terminal."""

    def __init__(self, argv: Sequence[str], *, rows: int, cols: int,
                 env: dict[str, str] | None = None) -> None:
        self.rows, self.cols = rows, cols
        self.screen = pyte.HistoryScreen(cols, rows, history=100_000)
        self.stream = pyte.ByteStream(self.screen)
        self.raw = bytearray()
        self._lock = threading.Lock()
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {k: v for k, v in (env or os.environ).items() if k not in ("COLUMNS", "LINES")}
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave,
                                     env={**env, "TERM": "xterm-256color"}, close_fds=True)
        os.close(slave)
        self._master = master
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                break
            if not data:
                break
            with self._lock:
                self.raw += data
                self.stream.feed(data)

    def display(self) -> list[str]:
        """The screen's lines now (right-trimmed)."""
        with self._lock:
            return [line.rstrip() for line in self.screen.display]

    def scrollback(self) -> list[str]:
        """Lines scrolled off the top of the screen, oldest first."""
        with self._lock:
            return ["".join(ch.data for ch in (line[x] for x in sorted(line))).rstrip()
                    for line in self.screen.history.top]

    def all_lines(self) -> list[str]:
        """Scrollback and screen, without the empty lines at the bottom."""
        lines = self.scrollback() + self.display()
        while lines and not lines[-1]:
            lines.pop()
        return lines

    def wait_screen(self, pred: Callable[[list[str]], bool], timeout: float = 120.0) -> list[str]:
        """Wait until ``pred(screen)`` holds (polling what has been read so far)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.display()
            if pred(screen):
                return screen
            if time.monotonic() > deadline or (self.proc.poll() is not None
                                               and not self._reader.is_alive()):
                raise AssertionError("the screen never showed what was expected:\n"
                                     + "\n".join(screen))
            time.sleep(0.05)

    def wait(self, timeout: float = 300.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        os.close(self._master)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
