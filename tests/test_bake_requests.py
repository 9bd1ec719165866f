"""A bake resolves once (issue 10 item 2): the plan's manifests and configs are stored and the
fetch goes on from them, so a bake asks the registry for each tag, manifest and config once.
Counted by a proxy in front of the test registry (tests/rig/faultproxy.py records requests)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from cargohold.imagebuild import samples
from cargohold.oci import mediatypes
from cargohold.oci.descriptor import Descriptor
from tests.rig.faultproxy import running_proxy
from tests.rig.images import Pushed, push, push_index
from tests.rig.services import Registry
from tests.test_bake import spec_of
from tests.test_fetch import cli, summary


def _via(p: Pushed, host: str) -> str:
    """The pushed image's reference through the proxy at ``host``."""
    return f"{host}/{p.ref.path}:{p.ref.tag}"


def _kind(d: Descriptor) -> str:
    if mediatypes.is_index(d.media_type) or mediatypes.is_manifest(d.media_type):
        return "manifest"
    return "config" if mediatypes.is_config(d.media_type) else "layer"


def test_bake_requests_each_tag_manifest_and_config_once(registry: Registry,
                                                         tmp_path: Path) -> None:
    plain = push(registry.host, spec_of(501, 120_000), tmp_path / "p")
    shared = [push(registry.host, samples.small_images()[k], tmp_path / k)
              for k in ("app-a", "app-b")]  # a shared base layer
    idx = push_index(registry.host, samples.multiarch_images(), tmp_path / "idx")
    pushed = [plain, *shared, idx]
    with running_proxy(registry.host) as proxy:
        spec = tmp_path / "cache.toml"
        spec.write_text('platforms = ["linux/amd64"]\n\n' + "".join(
            f'[[image]]\nref = "{_via(p, proxy.host)}"\n\n' for p in pushed))
        root = tmp_path / "store"
        s = summary(cli(root, "--json", "bake", str(spec), "--plain-http", check=True))
        assert [i["status"] for i in s["images"]] == ["ok"] * len(pushed)
        assert s["totals"]["phases"].keys() >= {"plan", "fetch", "replan"}
        got = Counter((r.method, r.path.split("?")[0]) for r in proxy.requests
                      if "/manifests/" in r.path or "/blobs/" in r.path)

    # Every tag resolved once (HEAD); every manifest, config and layer asked for once (GET
    # by digest; a blob two images share from either repository): none twice.
    heads = [path for (m, path), n in got.items() for _ in range(n) if m == "HEAD"]
    assert sorted(heads) == sorted(f"/v2/{p.ref.path}/manifests/{p.ref.tag}" for p in pushed)
    gets = Counter(path.rsplit("/", 1)[1] for (m, path), n in got.items()
                   for _ in range(n) if m == "GET")
    assert gets and all(n == 1 for n in gets.values()), gets
    # ... and all of them were needed: every blob of the plain images, the index and the one
    # manifest of the platform baked (with its config and layers).
    for p in (plain, *shared):
        assert {str(d.digest) for d in p.built.blobs_in_push_order()} <= set(gets)
    idx_manifests = [path for (m, path) in got if m == "GET" and path.startswith(
        f"/v2/{idx.ref.path}/manifests/")]
    assert len(idx_manifests) == 2, idx_manifests
    assert str(idx.built.root.digest) in gets
    kinds = Counter(_kind(d) for p in pushed for d in p.built.blobs_in_push_order()
                    if str(d.digest) in gets)
    assert kinds["config"] == len(pushed) and kinds["manifest"] == len(pushed) + 1, kinds
    assert s["totals"]["bytes_transferred"] == sum(
        d.size for d in {str(d.digest): d for p in pushed
                         for d in p.built.blobs_in_push_order()}.values()
        if str(d.digest) in gets)


def test_a_tag_moved_between_two_bakes_is_planned_afresh(registry: Registry,
                                                         tmp_path: Path) -> None:
    """The fetch no longer resolves the tag again, so a move is seen between runs: the saved
    plan's digest differs, the next bake plans the new digest and bakes it."""
    first = push(registry.host, spec_of(511, 80_000), tmp_path / "a", repo="bake-moved")
    spec = tmp_path / "cache.toml"
    spec.write_text(f'platforms = ["linux/amd64"]\n\n[[image]]\nref = "{first.text}"\n')
    root = tmp_path / "store"
    one = summary(cli(root, "--json", "bake", str(spec), "--plain-http", check=True))
    assert one["images"][0]["digest"] == str(first.built.root.digest)
    moved = push(registry.host, spec_of(512, 90_000), tmp_path / "b", repo="bake-moved")
    assert moved.text == first.text and moved.built.root.digest != first.built.root.digest
    two = summary(cli(root, "--json", "bake", str(spec), "--plain-http", check=True))
    assert two["plan_reused"] is False
    assert two["images"][0]["digest"] == str(moved.built.root.digest)
    assert two["plan"]["images"][0]["digest"] == str(moved.built.root.digest)
    assert two["images"][0]["status"] == "ok" and not two["nothing_done"]
