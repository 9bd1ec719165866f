"""The files of an image archive, read in place: never extracted, never loaded whole.

Three views with one interface (:class:`ArchiveFiles`):

* :class:`DirFiles`: an OCI layout directory (symlinks must stay inside it);
* :class:`TarFiles`: a plain tar file, its members indexed by offset once (headers only) and
  read with seeks;
* :class:`StreamFiles`: a gzip / zstd tar (or any tar) read once, front to back, as a stream
  (``tarfile`` mode ``r|``): small members are kept in memory (metadata, manifests, configs;
  bounded), the others go to a *sink* as they pass (into the content store, or just hashed).

Every member name is checked first: an absolute name, a ``..`` component, or a link whose
target leaves the archive makes the whole archive hostile (UnsafeContentError, exit 10).
"""

from __future__ import annotations

import io
import os
import tarfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

from cargohold.errors import (
    CargoholdError,
    InvalidInputError,
    NotFoundError,
    UnsafeContentError,
)
from cargohold.oci.digest import Digest

#: Members up to this size may be held in memory (index.json, manifests, configs).
SMALL = 4 << 20
#: What one streamed archive may hold in memory in all.
MEMORY_CAP = 64 << 20
#: Read size when copying a member.
CHUNK = 1 << 20
#: Link chains longer than this are refused (a loop).
MAX_LINK_HOPS = 16

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class ArchiveFiles(Protocol):
    """Named files of an archive (names are ``/``-separated, relative, normalised)."""

    where: str

    def exists(self, name: str) -> bool: ...

    def size(self, name: str) -> int:
        """NotFoundError if missing."""
        ...

    def open(self, name: str) -> AbstractContextManager[BinaryIO]:
        """A stream over the file's bytes; NotFoundError if missing."""
        ...


def read_small(files: ArchiveFiles, name: str, limit: int = SMALL) -> bytes:
    """A whole (small) file; InvalidInputError when it is bigger than ``limit``."""
    n = files.size(name)
    if n > limit:
        raise InvalidInputError(f"{files.where}: {name} is {n} bytes, more than {limit}")
    with files.open(name) as f:
        data = f.read(n + 1)
    if len(data) != n:
        raise InvalidInputError(f"{files.where}: {name} is truncated ({len(data)} of {n} bytes)")
    return data


# --------------------------------------------------------------------------- names


def safe_name(name: str, where: str) -> str:
    """The normalised member name; UnsafeContentError for an absolute or ``..`` name."""
    if name.startswith("/") or "\x00" in name:
        raise UnsafeContentError(f"{where}: member {name!r} has an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeContentError(f"{where}: member {name!r} escapes the archive (..)")
    return "/".join(parts)


def link_target(member: str, linkname: str, *, symbolic: bool, where: str) -> str:
    """Where a link member points, inside the archive; UnsafeContentError if outside."""
    if linkname.startswith("/"):
        raise UnsafeContentError(
            f"{where}: link {member!r} points outside the archive ({linkname!r})"
        )
    base = member.split("/")[:-1] if symbolic else []
    parts: list[str] = list(base)
    for p in linkname.split("/"):
        if p in ("", "."):
            continue
        if p == "..":
            if not parts:
                raise UnsafeContentError(
                    f"{where}: link {member!r} points outside the archive ({linkname!r})"
                )
            parts.pop()
        else:
            parts.append(p)
    return "/".join(parts)


def _follow(links: dict[str, str], name: str, where: str) -> str:
    for _ in range(MAX_LINK_HOPS):
        if name not in links:
            return name
        name = links[name]
    raise UnsafeContentError(f"{where}: link loop at {name!r}")


def corrupt(where: str, e: BaseException) -> InvalidInputError:
    return InvalidInputError(
        f"{where}: truncated or corrupt archive ({e})",
        hint="the file is damaged or not a tar: copy it again",
    )


# --------------------------------------------------------------------------- directory


class DirFiles:
    """An OCI layout directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._real = os.path.realpath(root)
        self.where = str(root)

    def _path(self, name: str) -> str:
        name = safe_name(name, self.where)
        p = os.path.join(self.root, name)
        real = os.path.realpath(p)
        if os.path.commonpath([real, self._real]) != self._real:
            raise UnsafeContentError(f"{self.where}: {name} is a link leaving the layout")
        return real

    def exists(self, name: str) -> bool:
        return os.path.isfile(self._path(name))

    def size(self, name: str) -> int:
        p = self._path(name)
        if not os.path.isfile(p):
            raise NotFoundError(f"{self.where}: no file {name}")
        return os.stat(p).st_size

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        p = self._path(name)
        try:
            f = open(p, "rb")  # noqa: SIM115 - closed below
        except FileNotFoundError:
            raise NotFoundError(f"{self.where}: no file {name}") from None
        except OSError as e:
            raise InvalidInputError(f"{self.where}: cannot read {name}: {e.strerror}") from None
        with f:
            yield f


# --------------------------------------------------------------------------- seekable tar


class TarFiles:
    """A plain tar file: member headers indexed once, data read by seeking."""

    def __init__(self, path: Path) -> None:
        self.where = str(path)
        try:
            self._f = open(path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as e:
            raise InvalidInputError(f"{path}: cannot read: {e.strerror}") from None
        self._members: dict[str, tarfile.TarInfo] = {}
        self._links: dict[str, str] = {}
        try:
            self._tar = tarfile.open(fileobj=self._f, mode="r:")  # noqa: SIM115 - closed with _f
            for m in self._tar:
                self._add(m)
        except (tarfile.TarError, EOFError, OSError) as e:
            self._f.close()
            raise corrupt(self.where, e) from None
        except BaseException:
            self._f.close()
            raise

    def _add(self, m: tarfile.TarInfo) -> None:
        name = safe_name(m.name, self.where)
        if m.issym() or m.islnk():
            self._links[name] = link_target(name, m.linkname, symbolic=m.issym(),
                                            where=self.where)
        elif m.isfile():
            self._members[name] = m
            self._links.pop(name, None)

    def close(self) -> None:
        self._f.close()

    def _member(self, name: str) -> tarfile.TarInfo:
        real = _follow(self._links, safe_name(name, self.where), self.where)
        try:
            return self._members[real]
        except KeyError:
            raise NotFoundError(f"{self.where}: no member {name}") from None

    def exists(self, name: str) -> bool:
        try:
            self._member(name)
        except NotFoundError:
            return False
        return True

    def size(self, name: str) -> int:
        return self._member(name).size

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        m = self._member(name)
        # A private handle per reader: several threads may copy blobs at once.
        with open(self.where, "rb") as f:
            f.seek(m.offset_data)
            yield _Window(f, m.size, self.where, name)  # type: ignore[misc]


class _Window(io.RawIOBase):
    """``size`` bytes of ``f`` from its current position; short data is corruption."""

    def __init__(self, f: BinaryIO, size: int, where: str, name: str) -> None:
        self._f = f
        self._left = size
        self._where = where
        self._name = name

    def readable(self) -> bool:
        return True

    def read(self, n: int | None = -1) -> bytes:
        if n is None or n < 0 or n > self._left:
            n = self._left
        data = self._f.read(n)
        if len(data) < n:
            raise corrupt(self._where, EOFError(f"{self._name} ends early"))
        self._left -= len(data)
        return data

    def readinto(self, b: Any) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


# --------------------------------------------------------------------------- stream


#: A sink takes (member name, stream, size) and returns the digest of what it took.
Sink = Callable[[str, IO[bytes], int], Digest]


@dataclass
class Staged:
    digest: Digest
    size: int


class StreamFiles:
    """A tar read once as a stream: small members in memory, the rest given to a sink.

    A router says which members to hold in memory; the others are passed to ``sink``
    (which stages them in the store, or only hashes them) and remembered by digest, or
    skipped. :meth:`open` of a sunk member goes to ``reopen`` (the store's reader)."""

    def __init__(
        self,
        where: str,
        *,
        reopen: Callable[[Digest], AbstractContextManager[BinaryIO]] | None = None,
    ) -> None:
        self.where = where
        self._mem: dict[str, bytes] = {}
        self.staged: dict[str, Staged] = {}
        self._links: dict[str, str] = {}
        self._reopen = reopen
        self._held = 0

    def scan(self, stream: IO[bytes], route: Callable[[str, int], str], sink: Sink) -> None:
        """Read the tar once. ``route(name, size)``: "keep" (in memory, within
        :data:`MEMORY_CAP`, else sunk), "sink" or "skip"."""
        try:
            tf = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - the stream is the caller's
            for m in tf:
                self._take(tf, m, route, sink)
        except CargoholdError:
            raise
        except (tarfile.TarError, EOFError, OSError, zlib.error, ValueError) as e:
            raise corrupt(self.where, e) from None
        except Exception as e:  # zstandard.ZstdError has no common base we can import lazily
            if type(e).__name__ == "ZstdError":
                raise corrupt(self.where, e) from None
            raise

    def _take(self, tf: tarfile.TarFile, m: tarfile.TarInfo, route: Callable[[str, int], str],
              sink: Sink) -> None:
        name = safe_name(m.name, self.where)
        if m.issym() or m.islnk():
            self._links[name] = link_target(name, m.linkname, symbolic=m.issym(),
                                            where=self.where)
            return
        if not m.isfile():
            return
        self._links.pop(name, None)
        where = route(name, m.size)
        if where == "skip":
            return
        f = tf.extractfile(m)
        assert f is not None
        if where == "keep" and self._held + m.size <= MEMORY_CAP:
            data = f.read(m.size + 1)
            if len(data) != m.size:
                raise corrupt(self.where, EOFError(f"{name} ends early"))
            self._held += m.size
            self._mem[name] = data
            self.staged.pop(name, None)
        else:
            self.staged[name] = Staged(sink(name, f, m.size), m.size)
            self._mem.pop(name, None)

    def _real(self, name: str) -> str:
        return _follow(self._links, safe_name(name, self.where), self.where)

    def exists(self, name: str) -> bool:
        real = self._real(name)
        return real in self._mem or real in self.staged

    def size(self, name: str) -> int:
        real = self._real(name)
        if real in self._mem:
            return len(self._mem[real])
        if real in self.staged:
            return self.staged[real].size
        raise NotFoundError(f"{self.where}: no member {name}")

    def staged_digest(self, name: str) -> Digest | None:
        st = self.staged.get(self._real(name))
        return st.digest if st else None

    @contextmanager
    def open(self, name: str) -> Iterator[BinaryIO]:
        real = self._real(name)
        if real in self._mem:
            yield io.BytesIO(self._mem[real])
            return
        st = self.staged.get(real)
        if st is None or self._reopen is None:
            raise NotFoundError(f"{self.where}: no member {name} (not kept from the stream)")
        with self._reopen(st.digest) as f:
            yield f


# --------------------------------------------------------------------------- opening


#: the hint of a path that names no archive (not the registry's "check the reference")
PATH_HINT = ("check the path: an OCI layout directory, a .tar, .tar.gz or .tar.zst archive, "
             "or a directory of them")


def sniff(path: Path) -> str:
    """'dir', 'tar', 'gzip' or 'zstd'; InvalidInputError for anything else."""
    if path.is_dir():
        return "dir"
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except FileNotFoundError:
        raise NotFoundError(f"{path}: no such file or directory", hint=PATH_HINT) from None
    except OSError as e:
        raise InvalidInputError(f"{path}: cannot read: {e.strerror}") from None
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    if len(head) == 512 and head[257:262] == b"ustar":
        return "tar"
    if len(head) == 512 and _v7_checksum_ok(head):
        return "tar"
    raise InvalidInputError(
        f"{path}: not an image archive (neither an OCI layout directory nor a tar, "
        "tar.gz or tar.zst)",
        hint="pass an OCI layout, a docker-archive or a directory of them",
    )


def _v7_checksum_ok(head: bytes) -> bool:
    try:
        stored = int(head[148:156].replace(b"\x00", b" ").strip() or b"-1", 8)
    except ValueError:
        return False
    return stored == sum(head[:148]) + 256 + sum(head[156:512])


@contextmanager
def decompressed(path: Path, kind: str) -> Iterator[IO[bytes]]:
    """The tar stream of a (compressed) tar file."""
    with open(path, "rb") as raw:
        if kind == "gzip":
            from isal import igzip

            with igzip.IGzipFile(fileobj=raw, mode="rb") as g:  # type: ignore[no-untyped-call]
                yield g  # type: ignore[misc]
        elif kind == "zstd":
            import zstandard

            with zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True) as z:
                yield z
        else:
            yield raw
