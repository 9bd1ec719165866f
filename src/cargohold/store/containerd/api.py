"""containerd's gRPC API for Python, generated from the .proto files Debian ships.

**Shipped in the wheel.** Building the package (``setup.py``'s ``build_py`` step) runs
:func:`generate` and puts the modules inside the wheel as the private top-level package
``cargohold_containerd_gen`` (with ``MANIFEST.json``: the generator, grpcio-tools and
protobuf versions and the proto files used). :func:`load` imports those when they are
installed: a node needs neither protoc nor the Go source packages. Nothing generated is
committed.

**Generated on first use** when the shipped modules are absent (an editable install, a
source checkout on ``PYTHONPATH``) or cannot be imported (a protobuf runtime older than the
one they were generated for) and ``grpcio-tools`` is installed (a build dependency; the
``test`` and ``protoc`` extras install it): :func:`load` runs ``grpc_tools.protoc`` over
the service definitions cargohold needs --
content, images, leases, snapshots, diff, namespaces, version, introspection -- plus their
imports (``types/{descriptor,mount,platform}.proto``, gogoproto's ``gogo.proto``, gogo's
``google/rpc/status.proto``; the google/protobuf well-known types come with grpcio-tools),
and imports the result. Where the protos come from (Debian bookworm):

* ``golang-github-containerd-containerd-dev`` -- ``/usr/share/gocode/src/github.com/containerd/containerd/api``
* ``golang-github-gogo-protobuf-dev`` -- ``.../github.com/gogo/protobuf/gogoproto/gogo.proto``
  (every containerd proto ``import weak``-s it for its Go-only field options; protoc must find
  it for the options to resolve, the Python generator then ignores them)
* ``golang-github-gogo-googleapis-dev`` -- ``.../github.com/gogo/googleapis/google/rpc/status.proto``
  (introspection only)

The first one depends on the other two. ``CARGOHOLD_CONTAINERD_PROTO_PATH`` (colon-separated
roots laid out like ``/usr/share/gocode/src``) replaces the default search root.

**Cache.** Output goes to ``<cache>/containerd-api/<key>/`` where ``<cache>`` is
``$CARGOHOLD_CONTAINERD_API_CACHE``, else ``$XDG_CACHE_HOME/cargohold``, else
``/var/cache/cargohold`` as root and ``~/.cache/cargohold`` otherwise, and ``<key>`` hashes
the proto files' names and bytes, the grpcio-tools and protobuf versions and this
generator's version: a Debian update of the protos or a new protoc yields a fresh directory.
Generation happens in a temporary sibling directory that is renamed into place, so a reader
never sees half a tree and concurrent first uses race harmlessly. A directory is only
imported from if it belongs to us (or root) and is not group/other-writable; an unwritable
cache falls back to a private temporary directory.

**Naming.** Before running protoc the protos are staged into a temporary tree under the
private top-level package ``cargohold_containerd_gen`` with their ``import`` lines rewritten
accordingly (``github.com/containerd/containerd/api/X`` -> ``cargohold_containerd_gen/api/X``,
``gogoproto/gogo.proto`` -> ``cargohold_containerd_gen/gogoproto/gogo.proto``, ...). protoc's
Python output for the original names would be top-level ``github``, ``gogoproto`` and
``google.rpc`` packages -- the last one clashing with googleapis-common-protos -- and
``github.com`` is not even an importable name. The proto *packages* (``containerd.services.
content.v1`` ...) are untouched, so gRPC method paths and message names are containerd's. The
top-level package is registered in ``sys.modules`` with the cache directory as its path;
``sys.path`` is not modified.

**Why not the PyPI ``containerd`` package** (siemens/pycontainerd): its modules were generated
by an old protoc (3.x era) and current protobuf runtimes (4.21+, the upb backend) refuse to
load them ("Descriptors cannot be created directly") unless the whole process switches to
the pure-Python protobuf implementation (``PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python``,
process-wide and several times slower -- bad for a tool that streams gigabytes through
``Write``). Its API level is also pinned to its release rather than to the containerd the
node actually runs. Generating from the distribution's own protos with the installed protoc
keeps runtime, generator and API in step. Do not import both in one process: they define
the same message names in protobuf's default descriptor pool.

The generated modules are untyped; they are reached only as ``ModuleType`` attributes
(``Any`` to mypy) through :class:`Api`, and the typed wrappers in ``client``, ``content``,
``images`` and ``leases`` are all that the rest of cargohold sees.
"""

from __future__ import annotations

import errno
import hashlib
import importlib
import importlib.machinery
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from cargohold.errors import UnavailableError

#: Bump when the staging/generation recipe changes (invalidates every cache entry).
GENERATOR_VERSION = "1"

#: The private top-level package the generated modules live in.
TOP = "cargohold_containerd_gen"
#: Inside the shipped package: how it was generated (marks it as shipped, not a cache entry).
SHIPPED_MANIFEST = "MANIFEST.json"

DEFAULT_PROTO_ROOTS = ("/usr/share/gocode/src",)

_CTRD = "github.com/containerd/containerd/api/"
PKG_CONTAINERD = "golang-github-containerd-containerd-dev"
PKG_GOGO = "golang-github-gogo-protobuf-dev"
PKG_GOGO_GOOGLEAPIS = "golang-github-gogo-googleapis-dev"

#: Short name -> proto import path of the services (and types) cargohold uses.
SERVICES: dict[str, str] = {
    "content": _CTRD + "services/content/v1/content.proto",
    "images": _CTRD + "services/images/v1/images.proto",
    "leases": _CTRD + "services/leases/v1/leases.proto",
    "snapshots": _CTRD + "services/snapshots/v1/snapshots.proto",
    "diff": _CTRD + "services/diff/v1/diff.proto",
    "namespaces": _CTRD + "services/namespaces/v1/namespace.proto",
    "version": _CTRD + "services/version/v1/version.proto",
    "introspection": _CTRD + "services/introspection/v1/introspection.proto",
}
TYPES: dict[str, str] = {
    "descriptor": _CTRD + "types/descriptor.proto",
    "mount": _CTRD + "types/mount.proto",
    "platform": _CTRD + "types/platform.proto",
}

_IMPORT_RE = re.compile(r'^(\s*import\s+(?:weak\s+|public\s+)?)"([^"]+)"(\s*;)', re.MULTILINE)


@dataclass(frozen=True)
class Api:
    """The generated modules: ``<name>`` is the messages module, ``<name>_grpc`` the stubs."""

    root: Path
    content: ModuleType
    content_grpc: ModuleType
    images: ModuleType
    images_grpc: ModuleType
    leases: ModuleType
    leases_grpc: ModuleType
    snapshots: ModuleType
    snapshots_grpc: ModuleType
    diff: ModuleType
    diff_grpc: ModuleType
    namespaces: ModuleType
    namespaces_grpc: ModuleType
    version: ModuleType
    version_grpc: ModuleType
    introspection: ModuleType
    introspection_grpc: ModuleType
    types_descriptor: ModuleType
    types_mount: ModuleType
    types_platform: ModuleType
    empty_pb2: ModuleType
    field_mask_pb2: ModuleType
    timestamp_pb2: ModuleType
    any_pb2: ModuleType


# ---------------------------------------------------------------- locating protos


def _package_for(name: str) -> str:
    if name.startswith("gogoproto/"):
        return PKG_GOGO
    if name.startswith("google/rpc/"):
        return PKG_GOGO_GOOGLEAPIS
    return PKG_CONTAINERD


def _candidates(name: str) -> list[str]:
    if name.startswith("gogoproto/"):
        return ["github.com/gogo/protobuf/" + name, name]
    if name.startswith("google/rpc/"):
        return ["github.com/gogo/googleapis/" + name, name]
    return [name]


def _is_bundled(name: str) -> bool:
    """google/protobuf/*.proto ship with grpcio-tools (protoc finds them by itself)."""
    return name.startswith("google/protobuf/")


def proto_roots() -> list[Path]:
    env = os.environ.get("CARGOHOLD_CONTAINERD_PROTO_PATH", "")
    roots = [p for p in env.split(":") if p] if env else list(DEFAULT_PROTO_ROOTS)
    return [Path(r) for r in roots]


def _locate(name: str, roots: list[Path]) -> Path:
    for root in roots:
        for cand in _candidates(name):
            path = root / cand
            if path.is_file():
                return path
    pkg = _package_for(name)
    where = ", ".join(str(r) for r in roots)
    raise UnavailableError(
        f"containerd API definition {name} not found under {where}",
        hint=f"install Debian's {pkg} (apt-get install {pkg}) or point "
        "CARGOHOLD_CONTAINERD_PROTO_PATH at a directory laid out like /usr/share/gocode/src",
    )


def stage_name(name: str) -> str:
    """Where an imported proto is staged (and so which Python module it becomes)."""
    if name.startswith(_CTRD):
        return f"{TOP}/api/{name.removeprefix(_CTRD)}"
    parts = name.split("/")
    dirs = [re.sub(r"[^A-Za-z0-9_]", "_", p) for p in parts[:-1]]
    return "/".join([TOP, *dirs, parts[-1]])


def _rewrite_imports(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        target = m.group(2)
        if _is_bundled(target):
            return m.group(0)
        return f'{m.group(1)}"{stage_name(target)}"{m.group(3)}'

    return _IMPORT_RE.sub(repl, text)


def collect(roots: list[Path] | None = None) -> dict[str, Path]:
    """The import closure of SERVICES and TYPES: proto import name -> file on disk."""
    roots = proto_roots() if roots is None else roots
    found: dict[str, Path] = {}
    todo = deque([*SERVICES.values(), *TYPES.values()])
    while todo:
        name = todo.popleft()
        if name in found or _is_bundled(name):
            continue
        path = _locate(name, roots)
        found[name] = path
        for m in _IMPORT_RE.finditer(path.read_text(encoding="utf-8")):
            todo.append(m.group(2))
    return found


# ---------------------------------------------------------------- cache


def cache_base() -> Path:
    env = os.environ.get("CARGOHOLD_CONTAINERD_API_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "cargohold" / "containerd-api"
    if os.geteuid() == 0:
        return Path("/var/cache/cargohold/containerd-api")
    return Path.home() / ".cache" / "cargohold" / "containerd-api"


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def cache_key(files: dict[str, Path]) -> str:
    h = hashlib.sha256()
    h.update(f"gen={GENERATOR_VERSION}\0".encode())
    h.update(f"grpcio-tools={_dist_version('grpcio-tools')}\0".encode())
    h.update(f"protobuf={_dist_version('protobuf')}\0".encode())
    for name in sorted(files):
        h.update(name.encode() + b"\0")
        h.update(hashlib.sha256(files[name].read_bytes()).digest())
    return h.hexdigest()[:24]


def _trusted(path: Path) -> bool:
    """Ours (or root's) and not writable by group/others: safe to import code from."""
    try:
        st = path.stat()
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    return st.st_uid in (os.geteuid(), 0) and not st.st_mode & 0o022


def _require_protoc() -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        raise UnavailableError(
            "grpc_tools (grpcio-tools) is not installed: cannot generate the containerd API",
            hint="install cargohold's dependencies (pip install grpcio-tools, or Debian's "
            "python3-grpc-tools)",
        )


def generate(files: dict[str, Path], dest: Path) -> None:
    """Stage ``files``, run protoc into a temp dir next to ``dest`` and rename it into place."""
    _require_protoc()
    dest.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        src = work / "src"
        out = work / "out"
        out.mkdir()
        staged: list[str] = []
        for name, path in sorted(files.items()):
            sname = stage_name(name)
            target = src / sname
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_rewrite_imports(path.read_text(encoding="utf-8")), encoding="utf-8")
            staged.append(sname)
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{src}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            *staged,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise UnavailableError(
                f"generating the containerd API with protoc failed: {proc.stderr.strip()}",
                hint="the .proto files or grpcio-tools may be broken; reinstall them",
            )
        for d in [out / TOP, *(p for p in (out / TOP).rglob("*") if p.is_dir())]:
            (d / "__init__.py").touch()
        for p in (out / TOP).rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        (out / TOP).chmod(0o755)
        manifest = {
            "generator": GENERATOR_VERSION,
            "grpcio-tools": _dist_version("grpcio-tools"),
            "protobuf": _dist_version("protobuf"),
            "sources": {n: str(p) for n, p in sorted(files.items())},
        }
        (out / "MANIFEST.json").write_text(json.dumps(manifest, indent=1) + "\n")
        out.chmod(0o755)
        try:
            out.rename(dest)
        except OSError:
            # Someone else generated it meanwhile (rename onto a non-empty dir fails).
            if not (dest / TOP).is_dir():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ensure_generated(files: dict[str, Path]) -> Path:
    key = cache_key(files)
    dest = cache_base() / key
    if (dest / TOP).is_dir() and _trusted(dest):
        return dest
    if not dest.exists():
        try:
            generate(files, dest)
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
        if (dest / TOP).is_dir() and _trusted(dest):
            return dest
    # Unwritable or untrusted cache: a private directory for this process.
    private = Path(tempfile.mkdtemp(prefix="cargohold-containerd-api-")) / key
    generate(files, private)
    return private


# ---------------------------------------------------------------- import

_lock = threading.Lock()
_loaded: Api | None = None


def _register_top(root: Path) -> None:
    existing = sys.modules.get(TOP)
    if existing is not None:
        return
    pkg_dir = root / TOP
    spec = importlib.machinery.ModuleSpec(TOP, None, is_package=True)
    spec.submodule_search_locations = [str(pkg_dir)]
    module = importlib.util.module_from_spec(spec)
    module.__path__ = [str(pkg_dir)]
    sys.modules[TOP] = module


def _module_name(proto: str, suffix: str) -> str:
    return stage_name(proto).removesuffix(".proto").replace("/", ".") + suffix


def shipped_root() -> Path | None:
    """The directory holding the wheel's pre-generated ``cargohold_containerd_gen`` (None when
    the package was not installed with them)."""
    existing = sys.modules.get(TOP)
    if existing is not None:
        paths = list(getattr(existing, "__path__", []))
    else:
        try:
            spec = importlib.util.find_spec(TOP)
        except (ImportError, ValueError):
            return None
        paths = list(spec.submodule_search_locations or []) if spec else []
    for p in paths:
        if (Path(p) / SHIPPED_MANIFEST).is_file():
            return Path(p).parent
    return None


def _import_modules() -> dict[str, ModuleType]:
    mods: dict[str, ModuleType] = {}
    for short, proto in SERVICES.items():
        mods[short] = importlib.import_module(_module_name(proto, "_pb2"))
        mods[short + "_grpc"] = importlib.import_module(_module_name(proto, "_pb2_grpc"))
    for short, proto in TYPES.items():
        mods["types_" + short] = importlib.import_module(_module_name(proto, "_pb2"))
    for wk in ("empty_pb2", "field_mask_pb2", "timestamp_pb2", "any_pb2"):
        mods[wk] = importlib.import_module(f"google.protobuf.{wk}")
    return mods


def _load_shipped(root: Path) -> Api | None:
    """The shipped modules; None (after forgetting them) when they do not import and
    grpcio-tools can generate a fresh set instead."""
    try:
        return Api(root=root, **_import_modules())
    except Exception as e:
        for name in [m for m in sys.modules if m == TOP or m.startswith(TOP + ".")]:
            del sys.modules[name]
        if importlib.util.find_spec("grpc_tools") is not None:
            return None
        try:
            made = json.loads((root / TOP / SHIPPED_MANIFEST).read_text()).get("protobuf", "?")
        except (OSError, ValueError):
            made = "?"
        raise UnavailableError(
            f"importing the containerd API shipped with cargohold ({root / TOP}) failed: {e}",
            hint=f"it was generated for protobuf {made} (installed: {_dist_version('protobuf')}):"
            f" install protobuf>={made}, or grpcio-tools to generate the API here",
        ) from e


def load() -> Api:
    """Import containerd's API: the modules shipped in the wheel, else generated (once per
    proto set, cached); cached per process.

    Raises UnavailableError naming the Debian package when protos or protoc are missing.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        shipped = shipped_root()
        if shipped is not None:
            _loaded = _load_shipped(shipped)
            if _loaded is not None:
                return _loaded
        root = _ensure_generated(collect())
        _register_top(root)
        try:
            mods = _import_modules()
        except Exception as e:
            raise UnavailableError(
                f"importing the generated containerd API from {root} failed: {e}",
                hint=f"remove {root} to regenerate it; check that grpcio and protobuf match "
                "grpcio-tools",
            ) from e
        _loaded = Api(root=root, **mods)
        return _loaded
