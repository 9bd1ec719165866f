"""`cargohold plan` against a real registry: decisions, budget, reasons, sizes; spec errors."""

from __future__ import annotations

import json
from pathlib import Path

from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.plan import DEFAULT_UNPACK_RATIO, estimate_unpacked
from tests.rig.images import Pushed, push
from tests.rig.services import Registry
from tests.test_fetch import cli


def spec_of(seed: int, size: int) -> ImageSpec:
    # Random file data: gzip cannot shrink it, so compressed ~ size.
    return ImageSpec([LayerSpec([Dir("data"), File("data/blob", size=size, seed=seed)])],
                     cmd=["/bin/true"])


def unpacked(p: Pushed) -> int:
    return sum(estimate_unpacked(d.size, DEFAULT_UNPACK_RATIO) for d in p.built.layer_descriptors)


def test_plan_respects_budget_and_pulls_criticals(registry: Registry, tmp_path: Path) -> None:
    crit = push(registry.host, spec_of(101, 300_000), tmp_path / "c")
    autos = [push(registry.host, spec_of(102 + i, 200_000 + 50_000 * i), tmp_path / f"a{i}")
             for i in range(3)]
    # Room for everything compressed, the critical image unpacked and one auto image
    # unpacked, not all of them.
    budget = (crit.built.total_size() + sum(a.built.total_size() for a in autos)
              + unpacked(crit) + unpacked(autos[2]) + 1000)
    spec = tmp_path / "cache.toml"
    lines = ['platforms = ["linux/amd64"]', f"budget = {budget}", "",
             "[[image]]", f'ref = "{crit.text}"', "critical = true", ""]
    for a in autos:
        lines += ["[[image]]", f'ref = "{a.text}"', ""]
    spec.write_text("\n".join(lines))

    p = cli(tmp_path / "store", "plan", str(spec), "--plain-http", "--json", check=True)
    doc = json.loads(p.stdout.splitlines()[0])
    assert doc["feasible"] is True
    assert doc["budget"] == budget
    assert doc["total_bytes"] <= budget
    assert doc["total_bytes"] == doc["content_bytes"] + doc["snapshot_bytes"]
    by_name = {i["name"]: i for i in doc["images"]}
    assert set(by_name) == {crit.text, *(a.text for a in autos)}
    assert by_name[crit.text]["decision"] == "pull"
    assert by_name[crit.text]["reason"] == "critical"
    for pushed in [crit, *autos]:
        img = by_name[pushed.text]
        assert img["reason"]
        assert img["compressed_bytes"] == pushed.built.total_size()
        assert img["unpacked_bytes"] == unpacked(pushed)
        assert img["digest"] == str(pushed.built.root.digest)
    decisions = [by_name[a.text]["decision"] for a in autos]
    assert decisions.count("pull") == 1  # the budget binds: not everything is pulled
    assert all(d in ("pull", "fetch", "skip") for d in decisions)

    # The same with --budget on the command line overriding the spec, as a table.
    big = cli(tmp_path / "store", "plan", str(spec), "--plain-http", "--budget", "1GiB",
              check=True)
    assert "IMAGE" in big.stdout and "critical" in big.stdout
    assert "of 1.0 GiB budget" in big.stdout

    # A budget below the critical image alone: exit 11 (budget), the plan still printed.
    tiny = cli(tmp_path / "store", "plan", str(spec), "--plain-http", "--budget", "1000", "--json")
    assert tiny.returncode == 11, tiny.stderr
    assert json.loads(tiny.stdout.splitlines()[0])["feasible"] is False


def test_plan_invalid_spec_names_file_line_field(tmp_path: Path) -> None:
    spec = tmp_path / "bad.toml"
    spec.write_text('budget = "1GiB"\n\n[[image]]\nref = "example.com/a:1"\nmode = "eager"\n')
    p = cli(tmp_path / "store", "plan", str(spec))
    assert p.returncode == 2, p.stderr
    assert f"{spec}:5: image[1].mode" in p.stderr
    assert "eager" in p.stderr
