"""The typed bake plan round-trips through the saved state file unchanged (issue 10 item 5)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from cargohold.atomicfile import write_json_atomic
from cargohold.bake.catalog import CatalogImage, CatalogPlan, UnpackRatio, plan_catalog
from cargohold.bake.plan import PlanImage
from cargohold.bake.state import PlanKey, SavedBake, load_state
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest


def _image(name: str, blob: str, size: int) -> CatalogImage:
    d = Digest.from_bytes(blob.encode())
    return CatalogImage(
        PlanImage(name, priority=2.0, blobs=[(str(d), size)], chains=[("sha256:c" + blob, size * 2)]),
        Descriptor("application/vnd.oci.image.manifest.v1+json", d, size), ("linux/amd64",), 0,
        present_blobs=((str(d), size),) if name == "b" else ())


def test_saved_bake_round_trips(tmp_path: Path) -> None:
    plan = plan_catalog([_image("a", "x", 1000), _image("b", "y", 3000)], 9000)
    plan = replace(plan, refined=False, unpack_ratio=UnpackRatio())
    assert plan.present_bytes == 3000 and plan.total_bytes == plan.content_bytes + plan.snapshot_bytes
    saved = SavedBake(status="baking", spec="/s.toml", spec_digest="sha256:00", store="embedded",
                      namespace="default", options=PlanKey(9000, "overlay", False),
                      digests={"a": "sha256:1"}, platforms={"a": ("linux/amd64",)}, plan=plan)
    path = tmp_path / "bakes" / "k.json"
    write_json_atomic(path, saved.to_json())
    back = load_state(path)
    assert back == saved
    assert back is not None and back.to_json() == json.loads(path.read_text())
    assert CatalogPlan.from_json(plan.to_json()) == plan
    path.write_text('{"version": 1, "status": "baking"}')
    assert load_state(path) is None  # damaged: a fresh plan
    path.write_text("[]")
    assert load_state(path) is None
