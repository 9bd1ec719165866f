"""The CLI's contract: commands listed, version, errors mapped to documented exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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


GLOBAL_FLAGS = ("--root", "--store", "--json", "--address", "--namespace", "--config",
                "--verbose", "--quiet", "--no-progress")


def _leaf_commands() -> list[list[str]]:
    import click

    from cargohold.cli import main

    main._register_commands()
    out: list[list[str]] = []
    for name, cmd in sorted(main.cli.commands.items()):
        if isinstance(cmd, click.Group):
            out += [[name, sub] for sub in sorted(cmd.commands)]
        else:
            out.append([name])
    return out


def test_every_subcommand_help_lists_the_global_options() -> None:
    from click.testing import CliRunner

    from cargohold.cli import main

    for words in _leaf_commands():
        r = CliRunner().invoke(main.cli, [*words, "--help"], prog_name="cargohold")
        assert r.exit_code == 0, (words, r.output)
        assert "Global options" in r.output, words
        for flag in GLOBAL_FLAGS:
            assert flag in r.output, (words, flag)


def test_global_options_after_the_subcommand(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    spec = tmp_path / "spec.txt"
    with socket.socket() as s:  # bound, not listening: connections are refused
        s.bind(("127.0.0.1", 0))
        spec.write_text(f"127.0.0.1:{s.getsockname()[1]}/x:1\n")
        # After the subcommand (bake opens the store under --root before fetching).
        p = run("bake", str(spec), "--plain-http", "--root", str(a), "--no-progress", "-q")
    assert p.returncode == errors.UnavailableError.exit_code, p.stderr
    assert (a / "metadata.db").exists()
    # Both places: the one after the subcommand wins.
    p = run("--root", str(a), "images", "ls", "--root", str(b))
    assert p.returncode == errors.NotFoundError.exit_code and str(b) in p.stderr, p.stderr
    p = run("--root", str(b), "images", "ls", "--root", str(a), "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout) == {"images": []}
    # Inside a group: `images --root X ls` too.
    assert run("images", "--root", str(a), "ls", "--json").returncode == 0
    # -v / -q after the command: quiet drops the hint line.
    p = run("images", "ls", "--root", str(b), "-q")
    assert p.returncode == errors.NotFoundError.exit_code and "hint:" not in p.stderr


def test_input_errors_carry_a_hint_for_their_cause(tmp_path: Path) -> None:
    """Each kind of bad input gets its own hint, not one generic line for all."""
    (tmp_path / "file").write_text("x")
    spec = tmp_path / "spec.toml"
    spec.write_text('[[image]]\nref = "busybox"\nmode = "sometimes"\n')
    cases = {
        "reference": run("fetch", "Docker.io/Library/NGINX", root=tmp_path / "s"),
        "digest": run("content", "rm", "sha256:xyz", root=tmp_path / "s"),
        "platform": run("fetch", "--platform", "linux/amd64/v8/x", "127.0.0.1:1/x:y",
                        root=tmp_path / "s"),
        "spec": run("plan", str(spec), root=tmp_path / "s"),
        "root": run("images", "ls", root=tmp_path / "file"),
        "setting": subprocess.run([*CLI, "--root", str(tmp_path / "s"), "images", "ls"],
                                  capture_output=True, text=True, timeout=60,
                                  env={**os.environ, "CARGOHOLD_JOBS": "many"}),
    }
    hints = {}
    for what, p in cases.items():
        assert p.returncode == errors.InvalidInputError.exit_code, (what, p.stderr)
        lines = [x for x in p.stderr.splitlines() if x.startswith("hint: ")]
        assert len(lines) == 1, (what, p.stderr)
        hints[what] = lines[0]
    assert len(set(hints.values())) == len(hints), hints
    assert f"hint: {errors.InvalidInputError.hint}" not in hints.values(), hints


def test_a_bug_is_one_line_and_exit_1_the_traceback_only_with_v(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from cargohold.cli import main

    def boom() -> dict[str, str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(main, "versions", boom)
    for argv, traceback in ((["version"], False), (["version", "-v"], True)):
        with pytest.raises(SystemExit) as ei:
            main.main(argv)
        assert ei.value.code == errors.InternalError.exit_code == 1
        err = capsys.readouterr().err
        assert "error: internal error: RuntimeError: boom" in err
        assert ("Traceback" in err) is traceback, err
        assert "hint: this is a bug" in err
