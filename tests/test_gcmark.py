from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable

from hypothesis import given
from hypothesis import strategies as st

from cargohold.store.gcmark import Node, is_gc_root, mark, references_from_labels

C = Node.content


def graph_refs(
    edges: dict[Node, list[Node]], calls: Counter[Node] | None = None
) -> Callable[[Node], Iterable[Node]]:
    def refs(n: Node) -> Iterable[Node]:
        if calls is not None:
            calls[n] += 1
        return edges.get(n, [])

    return refs


def test_mark_follows_edges_and_skips_unreachable() -> None:
    img, idx, man, cfg, layer, orphan = (
        Node.image("i"), C("idx"), C("man"), C("cfg"), C("layer"), C("orphan"),
    )
    edges = {img: [idx], idx: [man], man: [cfg, layer], orphan: [layer]}
    assert mark([img], graph_refs(edges)) == {img, idx, man, cfg, layer}


def test_mark_is_cycle_safe_and_asks_each_node_once() -> None:
    a, b, c = C("a"), C("b"), C("c")
    edges = {a: [b, c], b: [c, a], c: [a, b, c]}
    calls: Counter[Node] = Counter()
    assert mark([a, a, b], graph_refs(edges, calls)) == {a, b, c}
    assert set(calls.values()) == {1}


def test_mark_is_iterative_on_deep_chains() -> None:
    n = 200_000  # far beyond the recursion limit
    edges = {C(str(i)): [C(str(i + 1))] for i in range(n)}
    assert len(mark([C("0")], graph_refs(edges))) == n + 1


def test_mark_without_roots_marks_nothing() -> None:
    assert mark([], graph_refs({C("a"): [C("b")]})) == set()


@given(st.dictionaries(st.integers(0, 15), st.lists(st.integers(0, 15), max_size=4)),
       st.lists(st.integers(0, 15), max_size=3))
def test_mark_equals_reachability(edges_raw: dict[int, list[int]], roots_raw: list[int]) -> None:
    edges = {C(str(k)): [C(str(v)) for v in vs] for k, vs in edges_raw.items()}
    roots = [C(str(r)) for r in roots_raw]
    # Reference: fixed-point closure.
    want = set(roots)
    while True:
        more = {t for s in want for t in edges.get(s, [])} - want
        if not more:
            break
        want |= more
    assert mark(roots, graph_refs(edges)) == want


def test_content_labels() -> None:
    labels = {
        "containerd.io/gc.ref.content": "sha256:aa",
        "containerd.io/gc.ref.content.config": "sha256:bb",
        "containerd.io/gc.ref.content.l.0": "sha256:cc",
        "containerd.io/gc.ref.content.m/1": "sha256:dd",
        "containerd.io/gc.ref.contentious": "sha256:no",
        "containerd.io/gc.ref.content.empty": "",
        "containerd.io/distribution.source.docker.io": "library/busybox",
        "containerd.io/uncompressed": "sha256:not-a-ref",
    }
    assert references_from_labels(labels) == [
        C("sha256:aa"), C("sha256:bb"), C("sha256:cc"), C("sha256:dd"),
    ]


def test_snapshot_labels() -> None:
    labels = {
        "containerd.io/gc.ref.snapshot.overlayfs": "key-a",
        "containerd.io/gc.ref.snapshot.overlayfs/1": "key-b",
        "containerd.io/gc.ref.snapshot.native/x/y": "key/with/slashes",
        "containerd.io/gc.ref.snapshot.": "no-snapshotter",
        "containerd.io/gc.ref.snapshot./x": "no-snapshotter",
        "containerd.io/gc.ref.snapshotter": "not-a-ref",
    }
    got = references_from_labels(labels)
    assert got == [
        Node.snapshot("native", "key/with/slashes"),
        Node.snapshot("overlayfs", "key-a"),
        Node.snapshot("overlayfs", "key-b"),
    ]
    assert all(n.kind == "snapshot" for n in got)


def test_no_labels_no_refs() -> None:
    assert references_from_labels({}) == []


def test_gc_root_label_and_node_text() -> None:
    assert is_gc_root({"containerd.io/gc.root": "2030-01-01T00:00:00Z"})
    assert not is_gc_root({"containerd.io/gc.rooted": "x"})
    assert str(Node.snapshot("overlayfs", "k")) == "snapshot overlayfs/k"
    assert str(C("sha256:aa")) == "content sha256:aa"
    assert Node.snapshot("a", "k") != Node.snapshot("b", "k")
