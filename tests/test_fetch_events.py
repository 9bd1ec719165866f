"""Fetch event wrappers (bake's CommittedBlobs, pull's FetchBoard) pass every event of
FetchEvents on to the display they wrap: none is dropped (e.g. ``blob_waiting``, the
"waiting for another writer" line)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from cargohold.errors import NotFoundError
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from cargohold.oci.digest import Digest
from cargohold.oci.reference import parse_reference
from cargohold.pull.blobwait import FetchBoard
from cargohold.pull.fetch import CommittedBlobs, FetchEvents, FetchResult

DESC = Descriptor(mediatypes.OCI_LAYER_GZIP, Digest.from_bytes(b"layer"), 10)
REF = parse_reference("registry.example/app:1")
ARGS: dict[str, Any] = {
    "ref": REF, "desc": DESC, "offset": 0, "nbytes": 5, "state": "done", "transferred": 10,
    "result": FetchResult(REF, str(REF), DESC), "error": NotFoundError("gone"),
}
EVENTS = sorted(n for n, f in inspect.getmembers(FetchEvents, inspect.isfunction)
                if not n.startswith("_"))


class Recorder(FetchEvents):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        if name in EVENTS:
            return lambda *a, **k: object.__getattribute__(self, "calls").append(name)
        return object.__getattribute__(self, name)


def test_every_event_is_an_event() -> None:
    assert "blob_waiting" in EVENTS and "blob_done" in EVENTS and len(EVENTS) >= 7


@pytest.mark.parametrize("wrapper", [CommittedBlobs, FetchBoard])
@pytest.mark.parametrize("event", EVENTS)
def test_wrappers_forward_every_event(wrapper: type[FetchEvents], event: str) -> None:
    inner = Recorder()
    wrapped = wrapper(inner)  # type: ignore[call-arg]
    method = getattr(wrapped, event)
    params = [p for p in inspect.signature(method).parameters]
    method(*(ARGS[p] for p in params))
    assert inner.calls == [event]


def test_committed_blobs_notes_what_it_committed() -> None:
    c = CommittedBlobs(FetchEvents())
    c.blob_done(DESC, "exists", 0)
    assert c.digests == set()
    c.blob_done(DESC, "done", 10)
    assert c.digests == {str(DESC.digest)}
