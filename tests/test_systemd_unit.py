"""contrib/systemd/cargohold-warm.service: valid for systemd (`systemd-analyze verify`), and
it says what the README promises (after and wanting containerd, gentle, `warm --wait`)."""

from __future__ import annotations

import configparser
import subprocess
import sys
from pathlib import Path

from tests.rig.services import require_binary

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
UNIT = UNITS / "cargohold-warm.service"
EVICT = UNITS / "cargohold-evict.service"
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


def _sections(path: Path) -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read_string(path.read_text())
    return cp


def test_evict_units_say_what_the_readme_promises() -> None:
    service, timer = _sections(EVICT)["Service"], _sections(UNITS / "cargohold-evict.timer")
    exec_start = service["ExecStart"].split()
    assert exec_start[0] == INSTALLED_AT
    i = exec_start.index("evict")
    # Above kubelet's default trigger (85 % used = 15 % free), as README "Disk pressure" says.
    floor = exec_start[exec_start.index("--keep-free", i) + 1]
    assert floor.endswith("%") and float(floor[:-1]) > 15
    assert "13" in service["SuccessExitStatus"].split()  # target not reached: not a failure
    assert service["IOSchedulingClass"] == "idle"
    assert timer["Timer"]["OnUnitActiveSec"] == "1min"


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """Every unit in contrib/systemd as installed, with ExecStart pointing at this
    environment's cargohold (verify checks that the program exists). Warnings count as
    failures."""
    analyze = require_binary("systemd-analyze", "systemd")
    script = Path(sys.executable).parent / "cargohold"
    assert script.exists(), f"{script}: install cargohold into the venv (pip install -e .)"
    units = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".timer"))
    assert {u.name for u in units} >= {"cargohold-warm.service", "cargohold-evict.service",
                                       "cargohold-evict.timer"}
    for u in units:
        (tmp_path / u.name).write_text(u.read_text().replace(INSTALLED_AT, str(script)))
    p = subprocess.run([analyze, "verify", "--man=no", *(str(tmp_path / u.name) for u in units)],
                       capture_output=True, text=True, timeout=120, check=False)
    ours = [x for x in (p.stdout + p.stderr).splitlines() if any(u.name in x for u in units)]
    assert p.returncode == 0 and not ours, p.stdout + p.stderr
