"""contrib/systemd/cargohold-warm.service: valid for systemd (`systemd-analyze verify`), and
it says what the README promises (after and wanting containerd, gentle, `warm --wait`)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.rig.services import require_binary

UNIT = Path(__file__).resolve().parent.parent / "contrib" / "systemd" / "cargohold-warm.service"
INSTALLED_AT = "/usr/local/bin/cargohold"


def test_unit_says_what_the_readme_promises() -> None:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(UNIT.read_text())
    unit, service = cp["Unit"], cp["Service"]
    assert "containerd.service" in unit["After"].split()
    assert "containerd.service" in unit["Wants"].split()
    assert service["IOSchedulingClass"] == "idle"
    assert int(service["CPUWeight"]) <= 10
    exec_start = service["ExecStart"].split()
    assert exec_start[0] == INSTALLED_AT
    assert "--store" in exec_start and "containerd" in exec_start
    i = exec_start.index("warm")
    assert "--wait" in exec_start[i:]
    assert "130" in service["SuccessExitStatus"].split()


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """The unit as installed, with ExecStart pointing at this environment's cargohold (verify
    checks that the program exists). Warnings count as failures."""
    analyze = require_binary("systemd-analyze", "systemd")
    script = Path(sys.executable).parent / "cargohold"
    assert script.exists(), f"{script}: install cargohold into the venv (pip install -e .)"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace(INSTALLED_AT, str(script)))
    p = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True,
                       text=True, timeout=120, check=False)
    ours = [x for x in (p.stdout + p.stderr).splitlines() if UNIT.name in x]
    assert p.returncode == 0 and not ours, p.stdout + p.stderr
