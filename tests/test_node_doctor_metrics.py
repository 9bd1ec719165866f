"""`cargohold doctor` against sample kubelet / containerd configs (good, risky, malformed,
missing), and `cargohold metrics` scraped through Debian's prometheus-node-exporter. (The
systemd units are checked in tests/test_systemd_unit.py.)"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from cargohold.devtools.registry import stop_process
from cargohold.imagebuild.entries import Dir, File
from cargohold.imagebuild.image import ImageSpec, LayerSpec
from cargohold.labels import LABEL_CRITICAL
from cargohold.node import doctor as d
from cargohold.store.embedded.store import EmbeddedStore
from tests.rig.images import push
from tests.rig.services import Registry, free_port, require_binary
from tests.test_fetch import cli

REPO = Path(__file__).resolve().parents[1]

GOOD_CONTAINERD = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  discard_unpacked_layers = false
[plugins."io.containerd.grpc.v1.cri".registry]
  config_path = "/etc/containerd/certs.d"
"""
RISKY_CONTAINERD = """\
version = 3
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "native"
  discard_unpacked_layers = true
"""
GOOD_KUBELET = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
imageGCHighThresholdPercent: 85
imageGCLowThresholdPercent: 80
"""
RISKY_KUBELET = """\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
imageGCHighThresholdPercent: 70
imageMaximumGCAge: 168h
"""


def _one(seed: int) -> ImageSpec:
    return ImageSpec([LayerSpec([Dir("x"), File("x/f", size=20_000, seed=seed)])],
                     cmd=["/bin/true"])


def doctor(root: Path, tmp: Path, containerd_cfg: str | None, kubelet_cfg: str | None,
           *extra: str) -> tuple[int, dict[str, dict[str, str]]]:
    c, k = tmp / "config.toml", tmp / "kubelet.yaml"
    for path, text in ((c, containerd_cfg), (k, kubelet_cfg)):
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)
    p = cli(root, "--json", "doctor", "--containerd-config", str(c), "--kubelet-config", str(k),
            *extra)
    assert "Traceback" not in p.stderr
    doc = json.loads(p.stdout.splitlines()[0])
    return p.returncode, {x["name"]: x for x in doc["checks"]}


def test_doctor_judges_sample_configs(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    img = push(registry.host, _one(9001), tmp_path / "i")
    cli(root, "pull", "--plain-http", img.text, check=True)
    with EmbeddedStore(root, create=False) as s:
        rec = s.images.get(img.text)
        s.images.update(replace(rec, labels={**rec.labels, LABEL_CRITICAL: "true"}))

    code, checks = doctor(root, tmp_path, GOOD_CONTAINERD, GOOD_KUBELET)
    assert code == 0, checks
    assert {c["status"] for c in checks.values()} == {"ok"}
    assert {"cri-snapshotter", "discard-unpacked-layers", "registry-config-path", "evict-floor",
            "image-max-gc-age", "critical-images", "store-verify"} <= set(checks)

    code, checks = doctor(root, tmp_path, RISKY_CONTAINERD, RISKY_KUBELET)
    assert code == 14
    assert checks["cri-snapshotter"]["status"] == "fail"
    assert checks["discard-unpacked-layers"]["status"] == "fail"
    assert checks["registry-config-path"]["status"] == "warn"
    assert checks["evict-floor"]["status"] == "fail"  # 20 % free is not above 30 %
    assert "above 30" in checks["evict-floor"]["advice"]
    assert checks["image-max-gc-age"]["status"] == "warn"
    code, checks = doctor(root, tmp_path, GOOD_CONTAINERD, RISKY_KUBELET, "--keep-free", "35%")
    assert checks["evict-floor"]["status"] == "ok"

    # Malformed files: a failed check naming the file and the line, no traceback.
    code, checks = doctor(root, tmp_path, "version = 2\n[plugins\nx = 1\n",
                          "a: [1, 2\nb: c\n")
    assert code == 14
    assert "config.toml" in checks["containerd-config"]["message"]
    assert "line 2" in checks["containerd-config"]["message"]
    assert "kubelet.yaml" in checks["kubelet-config"]["message"]
    assert "line" in checks["kubelet-config"]["message"]
    code, checks = doctor(root, tmp_path, GOOD_CONTAINERD,
                          "imageGCHighThresholdPercent: lots\n")
    assert checks["kubelet-config"]["status"] == "fail"

    # Missing files are "not found" checks, not crashes.
    code, checks = doctor(root, tmp_path, None, None)
    assert code == 0
    assert checks["containerd-config"]["status"] == "warn"
    assert "not found" in checks["containerd-config"]["message"]
    assert "not found" in checks["kubelet-config"]["message"]

    # A critical image that is not unpacked, and a damaged blob, fail.
    blob = root / "content" / "blobs" / "sha256" / img.built.layer_descriptors[0].digest.hex
    blob.chmod(0o644)
    blob.write_bytes(b"garbage")
    code, checks = doctor(root, tmp_path, GOOD_CONTAINERD, GOOD_KUBELET)
    assert code == 14 and checks["store-verify"]["status"] == "fail"
    code, checks = doctor(root, tmp_path, GOOD_CONTAINERD, GOOD_KUBELET, "--no-verify")
    assert code == 0 and "store-verify" not in checks


def test_doctor_pure_judgements() -> None:
    assert d.check_pin_support("1.6.20").status == "warn"
    assert d.check_pin_support("v1.7.3").status == "ok"
    assert d.check_pin_support("2.0.0").status == "ok"
    facts = d.KubeletFacts("k", high=85, low=80, max_age="0s")
    assert d.check_kubelet_config(facts, Path("k"), 15.0)[0].status == "fail"
    assert d.check_kubelet_config(facts, Path("k"), 15.1)[0].status == "ok"
    assert d.check_kubelet_config(facts, Path("k"), None)[0].status == "warn"


# ---------------------------------------------------------------- metrics


def _scrape(port: int, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text: str = r.read().decode()
                return text
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _series(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("cargohold_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_metrics_through_node_exporter(registry: Registry, tmp_path: Path) -> None:
    exporter = require_binary("prometheus-node-exporter", "prometheus-node-exporter")
    root = tmp_path / "store"
    imgs = [push(registry.host, _one(9100 + i), tmp_path / f"i{i}") for i in range(3)]
    cli(root, "pull", "--plain-http", imgs[0].text, imgs[1].text, check=True)
    cli(root, "fetch", "--plain-http", imgs[2].text, check=True)
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    cli(root, "evict", "--free", "1", "--metrics-textfile", str(textdir), check=True)
    prom = textdir / "cargohold.prom"
    assert prom.is_file() and not [p for p in textdir.iterdir() if p != prom]

    port = free_port()
    proc = subprocess.Popen(
        [exporter, f"--web.listen-address=127.0.0.1:{port}", "--collector.disable-defaults",
         "--collector.textfile", f"--collector.textfile.directory={textdir}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        series = _series(_scrape(port))
    finally:
        stop_process(proc)
    assert series['cargohold_images{tier="unpacked"}'] == 1
    assert series['cargohold_images{tier="fetched"}'] == 2
    assert series["cargohold_images_pending_warm"] == 2
    assert series['cargohold_evicted_bytes_total{action="demote"}'] > 0
    assert series['cargohold_last_run_success{command="evict"}'] == 1
    assert series['cargohold_store_bytes{kind="content"}'] > 0
    assert series['cargohold_last_run_timestamp_seconds{command="evict"}'] > 1.7e9
    # Counters survive across runs (kept in the store), and `metrics` refreshes the file.
    demoted = series['cargohold_evicted_bytes_total{action="demote"}']
    cli(root, "evict", "--free", "1", check=True)
    cli(root, "metrics", "--textfile", str(textdir), check=True)
    again = _series(prom.read_text())
    assert again['cargohold_evicted_bytes_total{action="demote"}'] > demoted
    assert again['cargohold_images{tier="unpacked"}'] == 0
    stdout = cli(root, "metrics", check=True).stdout
    assert "# TYPE cargohold_images gauge" in stdout


def test_metrics_textfile_errors(tmp_path: Path, registry: Registry) -> None:
    root = tmp_path / "store"
    img = push(registry.host, _one(9200), tmp_path / "i")
    cli(root, "fetch", "--plain-http", img.text, check=True)
    p = cli(root, "metrics", "--textfile", str(tmp_path / "nope"))
    assert p.returncode == 2 and "does not exist" in p.stderr and "Traceback" not in p.stderr
    p = cli(root, "evict", "--free", "1", "--metrics-textfile", str(tmp_path / "nope"))
    assert p.returncode == 2


def test_bake_refreshes_the_textfile(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    imgs = [push(registry.host, _one(9300 + i), tmp_path / f"i{i}") for i in range(2)]
    spec = tmp_path / "images.txt"
    spec.write_text("".join(f"{p.text}\n" for p in imgs))
    textdir = tmp_path / "textfile"
    textdir.mkdir()
    cli(root, "bake", str(spec), "--plain-http", "--metrics-textfile", str(textdir), check=True)
    series = _series((textdir / "cargohold.prom").read_text())
    assert series['cargohold_last_run_success{command="bake"}'] == 1
    assert series['cargohold_images{tier="unpacked"}'] == 2  # small images: pulled
    # A failed bake is recorded as one, and the textfile still refreshed.
    spec.write_text("example.invalid/none:1\n")
    assert cli(root, "bake", str(spec), "--metrics-textfile", str(textdir)).returncode != 0
    series = _series((textdir / "cargohold.prom").read_text())
    assert series['cargohold_last_run_success{command="bake"}'] == 0


def test_metrics_json_and_unwritable_textfile(registry: Registry, tmp_path: Path) -> None:
    root = tmp_path / "store"
    img = push(registry.host, _one(9400), tmp_path / "i")
    cli(root, "fetch", "--plain-http", img.text, check=True)
    doc = json.loads(cli(root, "--json", "metrics", check=True).stdout)
    assert doc["metrics"]['cargohold_images{tier="fetched"}'] == 1
    assert not [k for k in doc["metrics"] if k.endswith("_created")]
    # /proc passes a permission check as root but takes no file: an input error, not a bug.
    p = cli(root, "metrics", "--textfile", "/proc")
    assert p.returncode == 2 and "cannot write" in p.stderr and "Traceback" not in p.stderr
