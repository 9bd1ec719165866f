"""`cargohold bake` on the embedded store against a real registry: budget, report, idempotence,
resume after a kill, failures kept apart from what succeeded, infeasible budgets."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cargohold import __version__, errors
from cargohold.imagebuild import samples
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from tests.rig.images import Pushed, push, push_index
from tests.rig.services import Registry
from tests.test_fetch import CLI, blob_files, cli, records, summary


def spec_of(seed: int, size: int, layers: int = 1) -> ImageSpec:
    # Random data: gzip cannot shrink it, so the unpacked size is about the compressed one
    # and the planner's default estimate (2.5x) is safely above the truth.
    return ImageSpec(
        [LayerSpec([Dir(f"d{i}"), File(f"d{i}/blob", size=size, seed=seed * 10 + i)])
         for i in range(layers)],
        cmd=["/bin/true"],
    )


#: Unpacked bytes of a one-file layer beyond the file: its directory, tar headers and padding,
#: block rounding on disk.
LAYER_OVERHEAD = 16 << 10


def write_spec(path: Path, budget: int | None, critical: list[Pushed], autos: list[Pushed],
               extra: Sequence[str] = (), platforms: str | None = "linux/amd64") -> Path:
    lines = [f'platforms = ["{platforms}"]'] if platforms else []
    if budget is not None:
        lines.append(f"budget = {budget}")
    for c in critical:
        lines += ["", "[[image]]", f'ref = "{c.text}"', "critical = true"]
    for i, a in enumerate(autos):
        lines += ["", "[[image]]", f'ref = "{a.text}"', f"priority = {i + 1}"]
    for ref in extra:
        lines += ["", "[[image]]", f'ref = "{ref}"']
    path.write_text("\n".join(lines) + "\n")
    return path


def du_selected(root: Path, names: list[str]) -> tuple[int, int]:
    """(content, snapshot) bytes of the named images, shared bytes once, from `du --json`."""
    p = cli(root, "du", "--json", *names, check=True)
    doc = json.loads(p.stdout)
    blobs = sum(i["content_bytes"] for i in doc["images"])
    return blobs, sum(i["snapshot_bytes"] for i in doc["images"])


def report_of(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def test_bake_within_budget_then_second_bake_is_a_noop(registry: Registry,
                                                        tmp_path: Path) -> None:
    crit = push(registry.host, spec_of(301, 300_000), tmp_path / "c")
    autos = [push(registry.host, spec_of(302 + i, 200_000 + 50_000 * i), tmp_path / f"a{i}")
             for i in range(3)]
    # Everything compressed, the critical image unpacked and one auto image unpacked fit;
    # not two of them (the planner sizes layers from the fetched blobs' gzip trailers).
    budget = (crit.built.total_size() + sum(a.built.total_size() for a in autos)
              + 2 * (300_000 + LAYER_OVERHEAD) + 30_000)
    spec = write_spec(tmp_path / "cache.toml", budget, [crit], autos)
    root = tmp_path / "store"
    rep = tmp_path / "report.json"

    p = cli(root, "bake", str(spec), "--plain-http", "--report", str(rep))
    assert p.returncode == 0, p.stderr
    assert "images baked" in p.stdout and "IMAGE" in p.stdout
    doc = report_of(rep)
    assert doc["tool"] == {"name": "cargohold", "version": __version__}
    assert doc["plan_reused"] is False and doc["nothing_done"] is False
    by_name = {i["name"]: i for i in doc["images"]}
    assert by_name[crit.text]["mode"] == "pull"
    modes = [by_name[a.text]["mode"] for a in autos]
    assert modes.count("pull") == 1, modes  # the budget binds
    assert all(m in ("pull", "fetch") for m in modes), modes  # enough room to fetch the rest
    for pushed in [crit, *autos]:
        img = by_name[pushed.text]
        assert img["status"] == "ok"
        assert img["digest"] == str(pushed.built.root.digest)
        assert img["platforms"] == ["linux/amd64"]
        assert img["bytes"]["transferred"] == pushed.built.total_size()
        assert img["bytes"]["content"] == pushed.built.total_size()
        assert img["durations"]["fetch_seconds"] > 0
        if img["mode"] == "pull":
            assert img["bytes"]["snapshots"] > 0 and img["durations"]["unpack_seconds"] > 0
            assert img["unpack"][0]["chains_unpacked"] == 1
        else:
            assert img["unpack"] == []

    # The budget holds on disk: what `du` measures for the baked images.
    names = [crit.text, *(a.text for a in autos)]
    content, snaps = du_selected(root, names)
    totals = doc["totals"]
    assert totals["content_bytes"] == content
    assert totals["snapshot_bytes"] == snaps
    assert totals["total_bytes"] == content + snaps <= budget
    assert totals["over_budget_bytes"] == 0
    assert totals["pulled"] == 2 and totals["fetched"] == 2 and totals["failed"] == 0
    assert set(totals["phases"]) == {"plan", "fetch", "replan", "unpack", "verify", "measure"}
    assert doc["plan"]["refined"] is True
    assert records(root) == {n: by_name[n]["digest"] for n in names}

    # Second bake: the same plan, nothing transferred, recorded or unpacked.
    again = cli(root, "--json", "bake", str(spec), "--plain-http")
    assert again.returncode == 0, again.stderr
    s = summary(again)
    assert s["plan_reused"] is True
    assert s["nothing_done"] is True
    assert s["totals"]["bytes_transferred"] == 0
    assert [i["mode"] for i in s["images"]] == [by_name[n]["mode"] for n in names]
    assert all(i["record"] == "unchanged" for i in s["images"])
    text = cli(root, "bake", str(spec), "--plain-http", check=True)
    assert "nothing to do" in text.stdout

    # --replan plans with the sizes measured now; still within the budget.
    re = cli(root, "--json", "bake", str(spec), "--plain-http", "--replan", check=True)
    assert summary(re)["plan_reused"] is False
    assert summary(re)["totals"]["over_budget_bytes"] == 0


def test_bake_infeasible_budget_writes_nothing(registry: Registry, tmp_path: Path) -> None:
    crit = push(registry.host, spec_of(311, 200_000), tmp_path / "c")
    spec = write_spec(tmp_path / "cache.toml", 1000, [crit], [])
    root = tmp_path / "store"
    rep = tmp_path / "r.json"
    rep.write_text('{"stale": true}')
    p = cli(root, "bake", str(spec), "--plain-http", "--report", str(rep))
    assert p.returncode == errors.BudgetError.exit_code, p.stderr
    assert "budget" in p.stderr
    assert records(root) == {}
    assert blob_files(root) == {}  # nothing fetched
    doc = report_of(rep)  # a report of the stopped bake replaces the stale one
    assert doc["error"]["exit_code"] == errors.BudgetError.exit_code
    assert doc["plan"]["feasible"] is False and "stale" not in doc


def test_bake_counts_what_the_store_holds_already(registry: Registry, tmp_path: Path) -> None:
    """An earlier bake pulled everything (no budget); a budget that fits exactly what is on
    disk then must pass: pulled layers are paid already, the plan keeps them."""
    imgs = [push(registry.host, spec_of(341 + i, 150_000 + 50_000 * i), tmp_path / f"i{i}")
            for i in range(3)]
    root = tmp_path / "store"
    free = write_spec(tmp_path / "free.toml", None, [], imgs)
    first = summary(cli(root, "--json", "bake", str(free), "--plain-http", check=True))
    assert [i["mode"] for i in first["images"]] == ["pull"] * 3
    on_disk = first["totals"]["total_bytes"]

    tight = write_spec(tmp_path / "tight.toml", on_disk + 1000, [], imgs)
    p = cli(root, "--json", "bake", str(tight), "--plain-http")
    assert p.returncode == 0, p.stderr
    s = summary(p)
    assert s["plan"]["present_bytes"] > 0
    assert [i["mode"] for i in s["images"]] == ["pull"] * 3
    assert s["totals"]["total_bytes"] == on_disk and s["totals"]["over_budget_bytes"] == 0
    assert s["nothing_done"] is True

    # A budget below what is on disk: exit 11 before doing anything, saying so.
    low = write_spec(tmp_path / "low.toml", on_disk // 2, [], imgs)
    p = cli(root, "bake", str(low), "--plain-http")
    assert p.returncode == errors.BudgetError.exit_code, p.stderr


def test_shared_layers_are_paid_once(registry: Registry, tmp_path: Path) -> None:
    small = samples.small_images()
    pushed = [push(registry.host, small[k], tmp_path / k) for k in ("app-a", "app-b", "app-docker")]
    root = tmp_path / "store"
    spec = write_spec(tmp_path / "cache.toml", None, [], pushed)
    s = summary(cli(root, "--json", "bake", str(spec), "--plain-http", check=True))
    union = {str(d.digest): d.size for p in pushed for d in p.built.blobs_in_push_order()}
    assert s["totals"]["content_bytes"] == sum(union.values())
    per_image = sum(i["bytes"]["content"] for i in s["images"])
    assert s["totals"]["content_bytes"] < per_image  # the base layer counted once
    snaps = sum(i["bytes"]["snapshots"] for i in s["images"])
    assert 0 < s["totals"]["snapshot_bytes"] < snaps
    assert s["totals"]["bytes_transferred"] == sum(union.values())  # downloaded once


def test_saved_plan_is_not_reused_for_another_budget_or_platform(registry: Registry,
                                                                  tmp_path: Path) -> None:
    idx = push_index(registry.host, samples.multiarch_images(), tmp_path / "idx")
    root = tmp_path / "store"
    spec = write_spec(tmp_path / "cache.toml", None, [], [idx], platforms=None)
    amd = summary(cli(root, "--json", "bake", str(spec), "--plain-http", "--platform",
                      "linux/amd64", check=True))
    assert amd["images"][0]["platforms"] == ["linux/amd64"]
    again = summary(cli(root, "--json", "bake", str(spec), "--plain-http", "--platform",
                        "linux/amd64", check=True))
    assert again["plan_reused"] is True
    arm = summary(cli(root, "--json", "bake", str(spec), "--plain-http", "--platform",
                      "linux/arm/v7", check=True))
    assert arm["plan_reused"] is False
    assert arm["images"][0]["platforms"] == ["linux/arm/v7"]
    assert arm["images"][0]["unpack"][0]["platform"] == "linux/arm/v7"
    big = summary(cli(root, "--json", "bake", str(spec), "--plain-http", "--platform",
                      "linux/arm/v7", "--budget", "1GiB", check=True))
    assert big["plan_reused"] is False


def test_bake_keeps_what_succeeded_when_an_image_fails(registry: Registry,
                                                       tmp_path: Path) -> None:
    good = push(registry.host, spec_of(321, 100_000), tmp_path / "g")
    missing = f"{registry.host}/bake-missing/nothing:v1"
    spec = write_spec(tmp_path / "cache.toml", None, [], [good], extra=[missing])
    root = tmp_path / "store"
    rep = tmp_path / "r.json"
    p = cli(root, "bake", str(spec), "--plain-http", "--report", str(rep))
    assert p.returncode == errors.PartialFailureError.exit_code, p.stderr
    assert missing in p.stderr
    doc = report_of(rep)
    by_name = {i["name"]: i for i in doc["images"]}
    assert by_name[good.text]["status"] == "ok"
    assert by_name[missing]["status"] == "failed"
    assert by_name[missing]["error"]["exit_code"] == errors.NotFoundError.exit_code
    assert records(root) == {good.text: str(good.built.root.digest)}


def test_interrupted_bake_resumes(registry: Registry, tmp_path: Path) -> None:
    big = push(registry.host, spec_of(331, 12_000_000, layers=4), tmp_path / "b")
    small = push(registry.host, spec_of(332, 100_000), tmp_path / "s")
    spec = write_spec(tmp_path / "cache.toml", None, [small], [big])
    root = tmp_path / "store"
    proc = subprocess.Popen(
        [*CLI, "--root", str(root), "--json", "bake", str(spec), "-j", "1", "--plain-http"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    assert proc.stdout is not None
    done: set[str] = set()
    for line in proc.stdout:
        ev = json.loads(line)
        if ev.get("event") == "blob_done" and ev.get("kind") == "layer" and ev.get(
                "digest") in {str(d.digest) for d in big.built.layer_descriptors}:
            done.add(ev["digest"])
            proc.send_signal(signal.SIGKILL)
            break
    assert proc.wait(timeout=60) != 0
    assert done
    assert big.text not in records(root)  # never recorded half-fetched

    p = cli(root, "--json", "bake", str(spec), "--plain-http", check=True)
    s = summary(p)
    assert s["plan_reused"] is True  # the interrupted bake's plan, resumed
    by_name = {i["name"]: i for i in s["images"]}
    assert by_name[big.text]["status"] == "ok"
    assert by_name[big.text]["bytes"]["transferred"] < big.built.total_size()
    assert by_name[small.text]["mode"] == "pull"
    assert set(records(root)) == {big.text, small.text}


def test_plain_list_spec_bakes_everything_pulled(registry: Registry, tmp_path: Path) -> None:
    a = push(registry.host, spec_of(351, 50_000), tmp_path / "a")
    b = push(registry.host, spec_of(352, 60_000), tmp_path / "b")
    spec = tmp_path / "images.txt"
    spec.write_text(f"# node image\n{a.text}\n\n{b.text}  # app\n")
    s = summary(cli(tmp_path / "store", "--json", "bake", str(spec), "--plain-http",
                    check=True))
    assert [(i["name"], i["mode"], i["status"]) for i in s["images"]] == [
        (a.text, "pull", "ok"), (b.text, "pull", "ok")]  # no budget: everything pulled


def test_spec_globals_override_env_not_flags(tmp_path: Path) -> None:
    from cargohold import settings
    from cargohold.bake.spec import load_spec
    from cargohold.settings import apply_spec_settings

    spec_file = tmp_path / "s.toml"
    spec_file.write_text('store = "containerd"\nnamespace = "node"\njobs = 7\n'
                         'reserve = "2GiB"\n\n[[image]]\nref = "example.com/a:1"\n')
    (tmp_path / "cfg.toml").write_text('namespace = "from-config"\n')
    s = settings.load({"namespace": "from-flag"}, config_file=tmp_path / "cfg.toml",
                      env={"CARGOHOLD_JOBS": "3", "CARGOHOLD_STORE": "embedded"})
    apply_spec_settings(s, load_spec(spec_file))
    assert (s.store, s.namespace, s.jobs, s.reserve) == ("containerd", "from-flag", 7, str(2 << 30))
    assert s.source_of("jobs") == f"spec {spec_file}" and s.source_of("namespace") == "flag"


def test_bake_verify_rehashes_what_was_in_the_store_before(registry: Registry,
                                                           tmp_path: Path) -> None:
    """Blobs this bake downloads were verified on commit and are not read again; blobs the
    store held before are re-hashed: a damaged one fails its image, the other is baked."""
    from tests.test_verify_du import _flip, blob

    old = push(registry.host, spec_of(341, 100_000), tmp_path / "o")
    new = push(registry.host, spec_of(342, 100_000), tmp_path / "n")
    root = tmp_path / "store"
    cli(root, "fetch", "--plain-http", old.text, check=True)
    damaged = str(old.built.layer_descriptors[0].digest)
    _flip(blob(root, damaged), 500)
    spec = tmp_path / "cache.toml"
    spec.write_text("".join(f'[[image]]\nref = "{p.text}"\nmode = "fetch"\n\n'
                            for p in (old, new)))
    rep = tmp_path / "r.json"
    p = cli(root, "bake", str(spec), "--plain-http", "--report", str(rep))
    assert p.returncode == errors.PartialFailureError.exit_code, p.stderr
    by_name = {i["name"]: i for i in report_of(rep)["images"]}
    assert by_name[new.text]["status"] == "ok"
    assert by_name[old.text]["status"] == "failed"
    assert "verify: corrupt" in by_name[old.text]["error"]["message"]
    assert damaged in by_name[old.text]["error"]["message"]
