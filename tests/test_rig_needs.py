"""tests/rig/needs.py: a missing part fails under CI=true and skips elsewhere (issue 14, 22)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.rig import needs


class _Item:
    def __init__(self, mark: Any) -> None:
        self.mark = mark

    def get_closest_marker(self, name: str) -> Any:
        return self.mark if name == "needs_root" else None


@pytest.mark.parametrize("ci", [True, False])
def test_missing_parts_fail_under_ci_and_skip_elsewhere(
    monkeypatch: pytest.MonkeyPatch, ci: bool
) -> None:
    monkeypatch.setattr(needs, "IN_CI", ci)
    monkeypatch.setattr(needs.os, "geteuid", lambda: 1000)
    outcome = pytest.fail.Exception if ci else pytest.skip.Exception
    with pytest.raises(outcome, match="needs root"):
        needs.require_root()
    with pytest.raises(outcome, match="needs root \\(runc\\)"):
        needs.apply_needs_root(_Item(needs.needs_root("runc").mark))  # type: ignore[arg-type]
    with pytest.raises(outcome, match="apt-get install no-such-package"):
        needs.require_binary("no-such-binary-cargohold", "no-such-package")
    with pytest.raises(outcome, match="no_such_module_cargohold"):
        needs.require_module("no_such_module_cargohold")
    needs.apply_needs_root(_Item(None))  # (unmarked: nothing happens)


def test_root_and_present_parts_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(needs, "IN_CI", True)
    monkeypatch.setattr(needs.os, "geteuid", lambda: 0)
    needs.require_root()
    needs.apply_needs_root(_Item(needs.needs_root.mark))  # type: ignore[arg-type]
    assert needs.require_binary("sh", "dash").endswith("sh")
    assert needs.require_module("json").dumps([]) == "[]"
