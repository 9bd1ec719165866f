"""What a bake says about its outcome (issue 14, 2 and 9): an over-budget bake names the images
whose bytes put it over, the table shows snapshots that exist whatever the plan decided, a
failed image is counted once (as failed, with no decision), the report names the spec's
absolute path."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from cargohold import errors
from cargohold.units import format_size
from tests.rig.images import push
from tests.rig.services import Registry
from tests.test_bake import LAYER_OVERHEAD, report_of, spec_of, write_spec
from tests.test_fetch import CLI, cli


def _row(stdout: str, name: str) -> list[str]:
    """The bake table's row of an image, split into its columns."""
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith(name + " ")]
    return line.split()


def test_lazy_unpack_over_budget_names_the_image(registry: Registry, tmp_path: Path) -> None:
    crit = push(registry.host, spec_of(401, 200_000), tmp_path / "c")
    small = push(registry.host, spec_of(402, 150_000), tmp_path / "s")
    big = push(registry.host, spec_of(403, 3_000_000), tmp_path / "b")
    # Everything compressed and the two small images unpacked fit; the big one unpacked not.
    budget = (crit.built.total_size() + small.built.total_size() + big.built.total_size()
              + 200_000 + 150_000 + 2 * LAYER_OVERHEAD + 200_000)
    spec = write_spec(tmp_path / "cache.toml", budget, [crit], [small, big])
    root = tmp_path / "store"
    first = report_of_bake(root, spec, tmp_path / "first.json")
    assert first[big.text]["mode"] == "fetch" and first[small.text]["mode"] == "pull"
    # The plan's summary counts what its rows say (images pulled already included).
    done = json.loads(cli(root, "plan", str(spec), "--plain-http", "--json",
                          check=True).stdout.splitlines()[0])
    counts = [sum(r["decision"] == d for r in done["images"]) for d in ("pull", "fetch", "skip")]
    assert counts == [2, 1, 0], done["images"]
    assert done["reason"].startswith("2 pulled, 1 fetched, 0 skipped; "), done["reason"]

    # The first container of the fetched-only image unpacks its layers (the lazy path).
    cli(root, "create", big.text, "c1", check=True)

    rep = tmp_path / "again.json"
    p = cli(root, "bake", str(spec), "--plain-http", "--report", str(rep))
    assert p.returncode == errors.BudgetError.exit_code, p.stderr
    doc = report_of(rep)
    snaps = {i["name"]: i["bytes"]["snapshots"] for i in doc["images"]}
    assert snaps[big.text] > 3_000_000
    over = doc["totals"]["over_plan"]
    assert over[0]["name"] == big.text and over[0]["bytes"] >= snaps[big.text]
    assert "snapshots the plan did not pull" in over[0]["reason"]
    # The table shows the big image's snapshots although the plan fetched it.
    assert _row(p.stdout, big.text)[1] == "fetch"
    assert format_size(snaps[big.text]) in " ".join(_row(p.stdout, big.text))
    assert "nothing to do" not in p.stdout
    # The error names the image whose bytes put it over, and why; not the estimates.
    error = next(ln for ln in p.stderr.splitlines() if ln.startswith("error:"))
    assert big.text in error and "snapshots the plan did not pull" in error, error
    assert small.text not in error and crit.text not in error, error
    assert "containers rm" in p.stderr  # the hint says how to free it

    # --replan and plan say the store holds those bytes, naming the image.
    re = cli(root, "bake", str(spec), "--plain-http", "--replan")
    assert re.returncode == errors.BudgetError.exit_code, re.stderr
    assert f"already in the store: {big.text} " in re.stderr, re.stderr
    assert "requested pull" not in re.stderr and "(already in the store)" not in re.stderr
    plan = cli(root, "plan", str(spec), "--plain-http", "--json")
    assert plan.returncode == errors.BudgetError.exit_code, plan.stderr
    pdoc = json.loads(plan.stdout.splitlines()[0])
    assert f"already in the store: {big.text} " in pdoc["reason"]
    rows = {r["name"]: r for r in pdoc["images"]}
    assert len(pdoc["images"]) == 3  # no pseudo-image rows
    assert rows[big.text]["decision"] == "pull"  # its layers are unpacked: no image skipped
    assert rows[big.text]["reason"] == "pulled already: its layers are unpacked in the store"
    assert rows[small.text]["decision"] == "pull" and rows[crit.text]["reason"] == "critical"


def report_of_bake(root: Path, spec: Path, rep: Path) -> dict[str, dict[str, object]]:
    cli(root, "bake", str(spec), "--plain-http", "--report", str(rep), check=True)
    return {i["name"]: i for i in report_of(rep)["images"]}


def test_failed_image_counts_once_and_the_report_names_the_spec_absolute(
        registry: Registry, tmp_path: Path) -> None:
    good = push(registry.host, spec_of(411, 100_000), tmp_path / "g")
    missing = f"{registry.host}/bake-missing/nothing:v1"
    write_spec(tmp_path / "cache.toml", None, [], [good], extra=[missing])
    root = tmp_path / "store"
    # The spec and report named relative to the working directory.
    p = subprocess.run([*CLI, "--root", str(root), "bake", "cache.toml", "--plain-http",
                        "--report", "r.json"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "CARGOHOLD_RETRIES": "2",
                                                      "CARGOHOLD_BACKOFF": "0.01"})
    assert p.returncode == errors.PartialFailureError.exit_code, p.stderr
    doc = report_of(tmp_path / "r.json")
    assert doc["spec"] == os.path.join(str(tmp_path), "cache.toml")
    by_name = {i["name"]: i for i in doc["images"]}
    assert by_name[missing]["status"] == "failed" and by_name[missing]["mode"] is None
    assert by_name[good.text]["status"] == "ok", by_name[good.text]["error"]
    t = doc["totals"]
    assert (t["pulled"], t["fetched"], t["skipped"], t["failed"]) == (1, 0, 0, 1)
    assert t["pulled"] + t["fetched"] + t["skipped"] + t["failed"] == t["images"]
    assert _row(p.stdout, missing)[1] == "-"
    assert "(1 pulled, 0 fetched, 0 skipped, 1 failed)" in p.stdout
