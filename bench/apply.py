"""Bench: throughput of the layer applier (the differ) on a layer of this machine's files.

Run from the repository root::

    .venv/bin/python -m bench.apply                 # ~300 MB of /usr/share, overlay as root
    .venv/bin/python -m bench.apply --mb 100 --src /usr/lib --mode flat --json

Setup (not timed): a PAX tar of the first ``--mb`` MB of regular files under ``--src``
(sorted walk; unreadable files left out), compressed as gzip (one member, level 1) and as
zstd (level 3). Timed: :func:`cargohold.unpack.apply.apply_layer` of the plain tar, the gzip
and the zstd blob, each into a fresh directory under ``--tmp`` with the diff_id checked
(``overlay`` mode as root, else ``flat``). Printed per format: tar MB, entries, seconds,
MB/s and the applier's phases (read + inflate, sha256, file system). Nothing is asserted
beyond the diff_id; this used to be ``tests/test_apply.py::test_throughput_usr_share``
(12 s of the test suite), moved here because tests assert no timings.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import zstandard
from isal import igzip

from cargohold.oci import mediatypes as mt
from cargohold.oci.digest import Digest
from cargohold.unpack.apply import apply_layer
from cargohold.unpack.decompress import open_decompressed
from cargohold.unpack.layerwriter import ApplyStats


def build_tar(src: Path, limit: int, out: Path) -> int:
    """A PAX tar of regular files under ``src`` (sorted walk) until ``limit`` bytes of
    content; returns the content bytes."""
    total = 0
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames.sort()
            for name in sorted(filenames):
                p = os.path.join(dirpath, name)
                try:
                    tf.add(p, arcname=os.path.relpath(p, "/"), recursive=False)
                    total += os.lstat(p).st_size
                except OSError:
                    continue
            if total > limit:
                return total
    return total


def apply_blob(blob: bytes, media_type: str, target: Path, mode: str,
               diff_id: Digest) -> ApplyStats:
    target.mkdir(parents=True)
    with open_decompressed(io.BytesIO(blob), media_type) as stream:
        return apply_layer(stream, target, mode=mode, diff_id=diff_id)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.apply", description=__doc__.split("\n")[0])
    ap.add_argument("--src", type=Path, default=Path("/usr/share"), help="files to pack")
    ap.add_argument("--mb", type=int, default=300, help="MB of file content in the layer")
    ap.add_argument("--mode", choices=["overlay", "flat"],
                    default="overlay" if os.geteuid() == 0 else "flat")
    ap.add_argument("--tmp", type=Path, default=None, help="parent of the scratch directory")
    ap.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = ap.parse_args(argv)
    if args.mode == "overlay" and os.geteuid() != 0:
        ap.error("overlay mode needs root (use --mode flat)")
    work = Path(tempfile.mkdtemp(prefix="bench-apply-", dir=args.tmp))
    try:
        print(f"packing {args.mb} MB of {args.src} ...", file=sys.stderr)
        tar_path = work / "layer.tar"
        content = build_tar(args.src, args.mb * 1_000_000, tar_path)
        raw = tar_path.read_bytes()
        diff_id = Digest("sha256", hashlib.sha256(raw).hexdigest())
        blobs = {
            "tar": (raw, mt.OCI_LAYER),
            "gzip": (igzip.compress(raw, compresslevel=1), mt.OCI_LAYER_GZIP),
            "zstd": (zstandard.ZstdCompressor(level=3).compress(raw), mt.OCI_LAYER_ZSTD),
        }
        rows: list[dict[str, Any]] = []
        for label, (blob, media_type) in blobs.items():
            print(f"applying {label} ...", file=sys.stderr)
            s = apply_blob(blob, media_type, work / f"out-{label}", args.mode, diff_id)
            rows.append({
                "format": label, "blob_bytes": len(blob), "tar_bytes": s.tar_bytes,
                "entries": s.entries, "seconds": round(s.seconds, 3),
                "mb_per_s": round(s.mb_per_s, 1),
                "seconds_read": round(s.seconds_read, 3),
                "seconds_hash": round(s.seconds_hash, 3),
                "seconds_write": round(s.seconds_write, 3),
            })
            shutil.rmtree(work / f"out-{label}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"src": str(args.src), "content_bytes": content, "mode": args.mode,
                          "results": rows}, indent=2))
        return 0
    print(f"layer: {content / 1e6:.0f} MB of files from {args.src}, mode {args.mode}\n")
    print("| format | tar MB | entries | seconds | MB/s | read+inflate s | sha256 s | fs s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['format']} | {r['tar_bytes'] / 1e6:.0f} | {r['entries']} | {r['seconds']:.2f}"
              f" | {r['mb_per_s']:.0f} | {r['seconds_read']:.2f} | {r['seconds_hash']:.2f}"
              f" | {r['seconds_write']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
