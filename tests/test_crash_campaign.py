"""A short crash campaign (bench/crash_campaign.py has the long one): `pull` and `bake` killed
(SIGKILL, SIGTERM) at random points on both stores; after each trial, without a manual gc, the
rerun completes, `verify` passes, no lease of a dead process is left and the store's size is
within 1 % of a clean run's (issue 14)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench.common import markdown_table
from bench.crash_campaign import HEADERS, Target, campaign, push_images, write_spec

from tests.rig.containerd import Containerd
from tests.rig.services import Registry


@pytest.mark.slow
def test_crash_campaign(registry: Registry, containerd: Containerd, tmp_path: Path) -> None:
    refs = push_images(registry.host, tmp_path / "images", big_mb=12)
    target = Target(refs, write_spec(tmp_path / "spec.toml", refs), containerd.address,
                    tmp_path / "stores")
    trials = campaign(target, trials=4, seed=14)
    table = markdown_table(HEADERS, [t.row() for t in trials])
    assert [t for t in trials if not t.ok] == [], table
