"""`cargohold import`'s cache of archives imported before (`<root>/imports/`): an archive
is remembered only once everything asked of it is done, per set of options, and a rerun
with --unpack unpacks what a skipped archive's images lack. Also export's and import's
answers to a mistyped path. Archives are built here (no registry needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from cargohold.imagebuild import samples
from cargohold.imagebuild.image import BuiltImage
from tests.rig.cli import last_json, run_cli
from tests.test_archive_bad_input import layout_members, write_tar

NAME = "example.com/cache/app:1"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    return samples.tiny("cache/tiny").build(tmp_path_factory.mktemp("tiny"))


def _status(root: Path) -> dict[str, Any]:
    images = last_json(run_cli(root, "--json", "status"))["images"]
    return {i["name"]: i for i in images}


def _bad_diff_ids(built: BuiltImage) -> dict[str, bytes]:
    """A layout whose blobs all verify but whose config names wrong diff IDs: the import
    succeeds, every unpack of it fails."""
    def blob(data: bytes) -> tuple[str, int]:
        return "sha256:" + hashlib.sha256(data).hexdigest(), len(data)

    assert built.config_descriptor is not None
    cfg = json.loads(built.read(built.config_descriptor.digest))
    cfg["rootfs"]["diff_ids"] = ["sha256:" + "0" * 64 for _ in cfg["rootfs"]["diff_ids"]]
    cfg_bytes = json.dumps(cfg).encode()
    man = json.loads(built.read(built.root.digest))
    man["config"]["digest"], man["config"]["size"] = blob(cfg_bytes)
    man_bytes = json.dumps(man).encode()
    members = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}'}
    for data in [cfg_bytes, man_bytes, *(built.read(d.digest) for d in built.layer_descriptors)]:
        members[f"blobs/sha256/{blob(data)[0].removeprefix('sha256:')}"] = data
    digest, size = blob(man_bytes)
    members["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": man["mediaType"], "digest": digest, "size": size,
        "annotations": {"io.containerd.image.name": NAME}}]}).encode()
    return members


def test_failed_unpack_is_not_remembered(built: BuiltImage, tmp_path: Path) -> None:
    """The records are written, the unpack fails (or is interrupted): the rerun must not
    skip the archive as done, it tries the unpack again."""
    archive = write_tar(tmp_path / "bad.tar", _bad_diff_ids(built))
    root = tmp_path / "s"
    first = run_cli(root, "import", "--unpack", str(archive), check=False)
    assert first.returncode == 6, first.stderr
    assert _status(root)[NAME]["tier"] == "fetched"
    again = run_cli(root, "import", "--unpack", str(archive), check=False)
    assert "skipped" not in again.stderr, again.stderr
    assert again.returncode == 6, again.stderr


def test_new_options_are_not_skipped(built: BuiltImage, tmp_path: Path) -> None:
    archive = write_tar(tmp_path / "e.tar", layout_members(built, NAME))
    root = tmp_path / "s"
    run_cli(root, "import", str(archive))
    assert "skipped" in run_cli(root, "import", str(archive)).stderr
    # --pin after a plain import: the archive is read again and the records get pinned.
    run_cli(root, "import", "--pin", str(archive))
    assert _status(root)[NAME]["pinned"] is True
    assert "skipped" in run_cli(root, "import", "--pin", str(archive)).stderr
    # --unpack after an import that recorded the images without unpacking them.
    assert _status(root)[NAME]["tier"] == "fetched"
    run_cli(root, "import", "--pin", "--unpack", str(archive))
    assert _status(root)[NAME]["tier"] == "unpacked"
    assert "skipped" in run_cli(root, "import", "--pin", "--unpack", str(archive)).stderr


def test_unpack_finishes_images_of_skipped_archives(built: BuiltImage, tmp_path: Path) -> None:
    """An archive imported and unpacked before, whose snapshots went since (evict): the
    rerun with --unpack skips reading it and unpacks its images again."""
    archive = write_tar(tmp_path / "e.tar", layout_members(built, NAME))
    root = tmp_path / "s"
    run_cli(root, "import", "--unpack", str(archive))
    assert _status(root)[NAME]["tier"] == "unpacked"
    run_cli(root, "evict", "--free", "1")
    assert _status(root)[NAME]["tier"] == "fetched"
    again = last_json(run_cli(root, "--json", "import", "--unpack", str(archive)))
    assert _status(root)[NAME]["tier"] == "unpacked"
    assert [a["skipped"] for a in again["archives"]] == [True]
    assert [u["name"] for u in again["unpacked_skipped"]] == [NAME]
    # Nothing left to do: still skipped, nothing reported unpacked.
    third = last_json(run_cli(root, "--json", "import", "--unpack", str(archive)))
    assert third["unpacked_skipped"] == [] and third["archives"][0]["skipped"]


def test_import_of_a_missing_path_hints_at_the_path(tmp_path: Path) -> None:
    p = run_cli(tmp_path / "s", "import", str(tmp_path / "missing.tar"), check=False)
    assert p.returncode == 4, p.stderr
    assert "check the path" in p.stderr and "check the reference" not in p.stderr, p.stderr
    (tmp_path / "empty").mkdir()
    p = run_cli(tmp_path / "s", "import", str(tmp_path / "empty"), check=False)
    assert p.returncode == 4 and "check the path" in p.stderr, p.stderr


def test_export_without_fetch_does_not_create_a_store(tmp_path: Path) -> None:
    root = tmp_path / "mistyped"
    p = run_cli(root, "export", NAME, "-o", str(tmp_path / "out.tar"), check=False)
    assert p.returncode == 4 and "no cargohold store" in p.stderr, p.stderr
    assert not root.exists()
    assert not (tmp_path / "out.tar").exists()
