"""The CLI's contract: commands listed, version, errors mapped to documented exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from cargohold import errors

CLI = [sys.executable, "-m", "cargohold"]


def run(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    extra = ["--root", str(root)] if root else []
    return subprocess.run([*CLI, *extra, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_commands() -> None:
    p = run("--help")
    assert p.returncode == 0
    for cmd in ("fetch", "images", "content", "gc", "version", "bake", "plan", "calibrate",
                "bench", "pull", "run"):
        assert f"  {cmd}" in p.stdout


def test_lazy_command_table_matches_the_modules() -> None:
    """Every command a module defines is in main.COMMANDS under that module, and back."""
    from cargohold.cli import main

    main._register_commands()
    defined = {name: getattr(cmd.callback, "__module__", "") for name, cmd in
               main.cli.commands.items() if name != "version"}
    assert {k: f"cargohold.cli.{v}" for k, v in main.COMMANDS.items()} == defined


def test_version_text_and_json() -> None:
    p = run("version")
    assert p.returncode == 0 and p.stdout.startswith("cargohold 0.")
    assert "zstandard" in p.stdout and "isal" in p.stdout
    j = json.loads(run("--json", "version").stdout)
    assert j["cargohold"] and j["python"] == sys.version.split()[0]


def test_invalid_reference_exit_code_and_message(tmp_path: Path) -> None:
    p = run("fetch", "Docker.io/Library/NGINX", root=tmp_path)
    assert p.returncode == errors.InvalidInputError.exit_code
    assert "lowercase" in p.stderr and p.stdout == ""


def test_json_error_object(tmp_path: Path) -> None:
    p = run("--json", "content", "rm", "sha256:xyz", root=tmp_path)
    assert p.returncode == errors.InvalidInputError.exit_code
    obj = json.loads(p.stdout.splitlines()[-1])
    assert obj["error"] == "invalid_input" and obj["exit_code"] == 2


def test_usage_error_is_2() -> None:
    p = run("no-such-command")
    assert p.returncode == 2


def test_exit_codes_are_distinct_and_documented() -> None:
    # Refinements that share their parent's code (and README row).
    shared = (errors.AlreadyExistsError, errors.StoreDamagedError)
    codes = {e.exit_code for e in errors.ALL_ERRORS if e not in shared}
    assert len(codes) == len(errors.ALL_ERRORS) - len(shared)
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for e in errors.ALL_ERRORS:
        if e in shared:
            continue
        assert f"| {e.exit_code} |" in readme, f"exit code {e.exit_code} of {e.__name__} not in README"
