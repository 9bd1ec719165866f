"""`cargohold plan` against a real registry: decisions, budget, reasons, sizes; spec errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cargohold.bake.catalog import RATIO_RANGE, ratio_of
from cargohold.bake.plan import DEFAULT_UNPACK_RATIO, estimate_unpacked
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.units import format_size
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
    big = cli(tmp_path / "store", "plan", str(spec), "--plain-http", "--budget", "1GB",
              check=True)
    assert "IMAGE" in big.stdout and "critical" in big.stdout
    assert "of 1.0 GB budget" in big.stdout

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


def test_ratio_is_weighted_by_bytes_floored_and_clamped() -> None:
    """Issue 14, 1: the measured unpacked / compressed ratio."""
    assert ratio_of([]).value == DEFAULT_UNPACK_RATIO
    # A 199 B layer that takes 16 kB unpacked says nothing about real layers.
    tiny = ratio_of([(199, 16_384)])
    assert (tiny.value, tiny.measured, tiny.small_layers) == (DEFAULT_UNPACK_RATIO, None, 1)
    assert "default; 1 unpacked layer under 1.0 MB left out" in tiny.describe()
    # Weighted by bytes: (2 + 12) / (1 + 3) MB, not the mean of 2x and 4x.
    mixed = ratio_of([(1_000_000, 2_000_000), (3_000_000, 12_000_000), (500, 50_000)])
    assert (mixed.value, mixed.layers, mixed.small_layers) == (3.5, 2, 1)
    assert mixed.compressed_bytes == 4_000_000 and not mixed.clamped
    assert "measured on this store: 2 layers, 4.0 MB compressed" in mixed.describe()
    high = ratio_of([(2_000_000, 100_000_000)])
    assert (high.value, high.measured, high.clamped) == (RATIO_RANGE[1], 50.0, True)
    assert "50.00x clamped to 1-8x" in high.describe()
    low = ratio_of([(2_000_000, 1_000_000)])
    assert (low.value, low.measured) == (RATIO_RANGE[0], 0.5)


def test_a_tiny_unpacked_layer_does_not_change_the_plan(registry: Registry,
                                                        tmp_path: Path) -> None:
    """Issue 14, 1: after pulling an image whose only layer is 199 B (16 kB unpacked: 82x),
    the plan of a spec of bigger images is what it is on an empty root; once a real layer
    is unpacked, the plan says what the ratio was measured on."""
    tiny = push(registry.host, samples.tiny(), tmp_path / "tiny")
    imgs = [push(registry.host, spec_of(131 + i, 4_000_000), tmp_path / f"i{i}")
            for i in range(2)]
    budget = sum(p.built.total_size() + unpacked(p) for p in imgs) + 10_000
    spec = tmp_path / "cache.toml"
    spec.write_text(f'platforms = ["linux/amd64"]\nbudget = {budget}\n'
                    + "".join(f'\n[[image]]\nref = "{p.text}"\n' for p in imgs))

    def plan(root: Path) -> dict[str, Any]:
        p = cli(root, "plan", str(spec), "--plain-http", "--json", check=True)
        doc: dict[str, Any] = json.loads(p.stdout.splitlines()[0])
        return doc

    empty = plan(tmp_path / "empty")
    assert [i["decision"] for i in empty["images"]] == ["pull", "pull"]
    root = tmp_path / "store"
    cli(root, "pull", "--plain-http", tiny.text, check=True)
    after = plan(root)
    assert after["unpack_ratio"] == DEFAULT_UNPACK_RATIO
    assert after["unpack_ratio_measured"] is False
    assert after["unpack_ratio_sample"]["small_layers"] == 1
    strip = ("decision", "unpacked_bytes", "compressed_bytes", "reason")
    assert [{k: i[k] for k in strip} for i in after["images"]] == \
        [{k: i[k] for k in strip} for i in empty["images"]]

    # A layer of about 1.5 MB compressed unpacked: measured on it, and the plan says so.
    cli(root, "pull", "--plain-http", imgs[0].text, check=True)
    layer = imgs[0].built.layer_descriptors[0].size
    measured = plan(root)
    sample = measured["unpack_ratio_sample"]
    assert sample["measured"] is True and sample["layers"] == 1
    assert sample["compressed_bytes"] == layer
    assert RATIO_RANGE[0] <= measured["unpack_ratio"] <= RATIO_RANGE[1]
    assert measured["spec"] == str(spec)  # absolute (issue 14, 9)
    text = cli(root, "plan", str(spec), "--plain-http", check=True)
    assert f"measured on this store: 1 layer, {format_size(layer)} compressed" in text.stderr
