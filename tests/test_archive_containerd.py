"""Image archives between cargohold and a real containerd (the rig's, never the system's).

* ``ctr images export`` -> ``cargohold import``: same digest, complete, runs;
* ``cargohold export`` -> ``ctr images import`` -> ``ctr run`` prints what it should;
* ``cargohold --store containerd import --pin``: CRI's three records, pinned, and
  ``--unpack`` leaves the image unpacked for ``ctr images check``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cargohold.imagebuild import samples
from tests.rig.cli import last_json, run_cli
from tests.rig.containerd import Containerd
from tests.rig.images import Pushed, push
from tests.rig.services import Registry


@pytest.fixture(scope="module")
def busybox(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Pushed:
    return push(registry.host, samples.busybox(), tmp_path_factory.mktemp("bb"),
                repo="ctrarchive/busybox")


def on_containerd(ctrd: Containerd, ns: str) -> list[str]:
    return ["--store", "containerd", "--address", ctrd.address, "--namespace", ns]


def test_ctr_export_is_imported(containerd: Containerd, busybox: Pushed, tmp_path: Path) -> None:
    ns = containerd.unique_namespace("ctrexp")
    containerd.ctr("images", "pull", "--plain-http", busybox.text, namespace=ns, timeout=120)
    out = tmp_path / "ctr-export.tar"
    containerd.ctr("images", "export", str(out), busybox.text, namespace=ns, timeout=120)
    root = tmp_path / "store"
    got = last_json(run_cli(root, "--json", "import", str(out)))["images"]
    assert [(i["name"], i["digest"]) for i in got] == [(busybox.text, str(busybox.built.digest))]
    p = run_cli(root, "run", "--rm", busybox.text, "--", "echo", "from ctr export")
    assert p.stdout.strip() == "from ctr export"


def test_cargohold_export_is_imported_and_run_by_ctr(containerd: Containerd, busybox: Pushed,
                                                     tmp_path: Path) -> None:
    root = tmp_path / "store"
    run_cli(root, "fetch", "--plain-http", busybox.text)
    out = tmp_path / "export.tar"
    run_cli(root, "export", busybox.text, "-o", str(out))
    ns = containerd.unique_namespace("chexp")
    containerd.ctr("images", "import", str(out), namespace=ns, timeout=120)
    listed = containerd.ctr("images", "ls", "-q", namespace=ns).stdout.split()
    assert busybox.text in listed, listed
    run = containerd.run(busybox.text, "chexp-run", "/bin/sh", "-c", "echo imported by ctr",
                         namespace=ns)
    assert run.stdout.strip() == "imported by ctr", run.stdout + run.stderr


def test_import_into_containerd_writes_cri_records(containerd: Containerd, busybox: Pushed,
                                                   tmp_path: Path) -> None:
    root = tmp_path / "store"
    run_cli(root, "fetch", "--plain-http", busybox.text)
    out = tmp_path / "export.tar.zst"
    run_cli(root, "export", busybox.text, "-o", str(out))
    ns = containerd.unique_namespace("chimp")
    p = run_cli(tmp_path / "unused", *on_containerd(containerd, ns), "--json", "import",
                "--pin", "--unpack", str(out))
    img = last_json(p)["images"][0]
    assert img["digest"] == str(busybox.built.digest)
    config = busybox.built.config_descriptor
    assert config is not None
    rows = containerd.ctr("images", "ls", namespace=ns).stdout.splitlines()[1:]
    names = {r.split()[0]: r for r in rows}
    assert set(names) == {busybox.text, f"{busybox.ref.name}@{busybox.built.digest}",
                          str(config.digest)}
    for r in names.values():
        assert "io.cri-containerd.image=managed" in r and "io.cri-containerd.pinned=pinned" in r
    check = containerd.ctr("images", "check", namespace=ns).stdout
    line = next(x.split() for x in check.splitlines() if x.startswith(busybox.text + " "))
    assert "complete" in line and line[-1] == "true", check
    # The staging lease of the compressed archive is gone: only the records hold content.
    leases = containerd.ctr("leases", "ls", namespace=ns).stdout.splitlines()[1:]
    assert leases == [], leases
    assert img["platforms"] == ["linux/amd64"]
