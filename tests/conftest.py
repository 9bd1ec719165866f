from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.rig.needs import apply_needs_root
from tests.rig.services import Registry, start_registry


def pytest_configure(config: pytest.Config) -> None:
    # A shell starts background jobs with SIGINT ignored, and an ignored signal stays ignored
    # across exec: the CLI processes the tests interrupt with SIGINT would never see it. Give
    # this process a handler, so that its children start with the default disposition.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    config.addinivalue_line(
        "markers", "needs_root: needs root; fails under CI=true, skips elsewhere (tests/rig/needs.py)"
    )


def pytest_runtest_setup(item: pytest.Item) -> None:
    apply_needs_root(item)


@pytest.fixture(scope="session")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    """One real docker-registry for the whole session (tests use distinct repo names)."""
    reg = start_registry(tmp_path_factory.mktemp("registry"))
    yield reg
    reg.stop()


@pytest.fixture
def fresh_registry(tmp_path: Path) -> Iterator[Registry]:
    """A registry of the test's own, for tests that stop or break it."""
    reg = start_registry(tmp_path / "registry")
    yield reg
    reg.stop()


# containerd fixtures (tests/rig/containerd.py)
from tests.rig.containerd import containerd, fresh_containerd  # noqa: E402, F401
