"""Helpers shared by the benches: scratch dirs, measured child processes, tables, images.

Nothing here runs on import. Benches that need the test rig (a private containerd) import
it from ``tests.rig`` with the repository root on ``sys.path`` (:func:`repo_root_on_path`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 10**6
MIB = 1 << 20
REPO_ROOT = Path(__file__).resolve().parent.parent


def repo_root_on_path() -> None:
    """Make ``tests.rig`` (and ``bench``) importable when run as ``python bench/x.py``."""
    root = str(REPO_ROOT)
    if root not in sys.path:
        sys.path.insert(0, root)


def log(msg: str) -> None:
    """Progress notes go to stderr so stdout stays the result (table or JSON)."""
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- scratch space


class Scratch:
    """A temp dir for one bench; trees are moved aside into ``trash`` and deleted at the end.

    Deleting a large tree on this kind of ext4 slows file creation for minutes afterwards,
    so nothing is deleted while the bench is still measuring: :meth:`trash` only renames.
    """

    def __init__(self, prefix: str = "cargohold-bench-", parent: str | None = None) -> None:
        self.base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent)).resolve()
        self.trash_dir = self.base / "trash"
        self.trash_dir.mkdir()
        self._n = 0

    def path(self, name: str) -> Path:
        """A new, not yet existing path below the scratch dir (made unique)."""
        self._n += 1
        return self.base / f"{name}-{self._n}"

    def trash(self, path: Path) -> None:
        if path.exists():
            self._n += 1
            os.replace(path, self.trash_dir / f"{self._n}-{path.name}")

    def cleanup(self) -> None:
        """Move the whole scratch dir aside (one rename), then delete it."""
        if not self.base.exists():
            return
        aside = self.base.with_name(self.base.name + ".deleting")
        os.replace(self.base, aside)
        shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------- measured children


@dataclass(frozen=True)
class Measured:
    """One finished child process: wall time, its resource usage as wait4 reported it."""

    wall: float
    user: float
    sys: float
    maxrss: int  # bytes (ru_maxrss is KiB on Linux)
    returncode: int
    stdout: str
    stderr: str

    @property
    def cpu(self) -> float:
        return self.user + self.sys


#: The spawner: a small process of its own that starts, times and reaps the measured
#: commands. Why not the bench itself: a child's ru_maxrss starts at the RSS of the process
#: that forked it (Python forks with vfork; exec records the old mm's high-water mark in the
#: process-wide maxrss, which survives exec), so children of a 60 MB bench would all report
#: >= 60 MB. Children of this ~10 MB spawner report their own peak (if above ~10 MB).
_SPAWNER = r"""
import json, os, sys, time
for line in sys.stdin:
    req = json.loads(line)
    fa = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0)]
    for fd, key in ((1, "stdout"), (2, "stderr")):
        fa.append((os.POSIX_SPAWN_OPEN, fd, req[key], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
    env = req["env"] if req["env"] is not None else os.environ
    start = time.perf_counter()
    try:
        pid = os.posix_spawnp(req["cmd"][0], req["cmd"], env, file_actions=fa)
    except OSError as e:
        print(json.dumps({"error": str(e)}), flush=True)
        continue
    _, status, ru = os.wait4(pid, 0)
    wall = time.perf_counter() - start
    print(json.dumps({"wall": wall, "user": ru.ru_utime, "sys": ru.ru_stime,
                      "maxrss": ru.ru_maxrss * 1024, "rc": os.waitstatus_to_exitcode(status)}),
          flush=True)
"""


class Spawner:
    """Runs commands one at a time in the spawner process and measures them (see _SPAWNER)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _SPAWNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        self._dir = Path(tempfile.mkdtemp(prefix="cargohold-bench-spawner-"))

    def run(
        self, cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 600.0
    ) -> Measured:
        """Run ``cmd`` to completion: wall clock from spawn to reap, user/sys CPU and peak
        RSS from ``os.wait4`` (the child's own usage plus that of children it waited for).
        stdout/stderr go to files (no pipe to drain while it runs)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        out, err = self._dir / "stdout", self._dir / "stderr"
        req = {"cmd": list(cmd), "env": env, "stdout": str(out), "stderr": str(err)}
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        killer = threading.Timer(timeout, self._kill_children)
        killer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            killer.cancel()
        if not line:
            raise RuntimeError("the bench spawner died")
        res = json.loads(line)
        if "error" in res:
            raise RuntimeError(f"cannot start {cmd[0]}: {res['error']}")
        return Measured(
            wall=res["wall"],
            user=res["user"],
            sys=res["sys"],
            maxrss=res["maxrss"],
            returncode=res["rc"],
            stdout=out.read_text(errors="replace"),
            stderr=err.read_text(errors="replace"),
        )

    def _kill_children(self) -> None:
        """On timeout: kill the spawner's running child (found via /proc)."""
        for pid in _children(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Spawner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds a running process has used so far (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def proc_peak_rss(pid: int) -> int:
    """Peak resident set size of a running process so far, in bytes (VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def cargohold_command() -> list[str]:
    """The ``cargohold`` CLI of the interpreter running the bench (its venv's script)."""
    script = Path(sys.executable).parent / "cargohold"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "cargohold"]


def tree_size(path: Path) -> int:
    """Bytes of the regular files below ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


# --------------------------------------------------------------------------- statistics and tables


def median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A markdown table; ``align`` has one letter per column, ``l`` or ``r`` (default r
    except the first column)."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join("---" if a == "l" else "---:" for a in align) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- image content


def capped_entries(
    directory: Path, prefix: str, cap: int, *, mtime: int | None = None
) -> Callable[[], Iterator[Any]]:
    """A LayerSpec ``entries`` callable: :func:`entries_from_directory` of a real tree,
    cut before the first regular file that would take the content past ``cap`` bytes.

    Entries come parents-first in sorted order and hard links point backwards, so any
    prefix of the sequence is a consistent tree.
    """
    from cargohold.imagebuild import File, entries_from_directory

    def entries() -> Iterator[Any]:
        total = 0
        for e in entries_from_directory(directory, prefix, mtime=mtime):
            if isinstance(e, File):
                n = e.content_size()
                if total + n > cap:
                    return
                total += n
            yield e

    return entries


def content_bytes(entries: Iterable[Any]) -> int:
    """Regular-file bytes of a sequence of entries (the uncompressed content size)."""
    from cargohold.imagebuild import File

    return sum(e.content_size() for e in entries if isinstance(e, File))
