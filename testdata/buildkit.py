"""Synthetic BuildKit cache.db stores: a consistent model written with boltkit's writer, into which
tests plant exactly one defect at a time."""
from __future__ import annotations

import copy

from boltkit.buildkit.cachedb import CacheInfoLink
from boltkit.write import BoltWriter

from .trees import Bucket, write_tree

WORKER = "w0rker0000000000000000000"
D = "sha256:" + "ab" * 32
S = "sha256:" + "cd" * 32


def link_key(target: str, input: int = 0, digest: str = D, selector: str = "") -> bytes:
    return CacheInfoLink(input, 0, digest, selector).encode() + b"@" + target.encode()


def result_value(rid: str, created: str = "2026-11-24T10:00:00.123456789Z") -> bytes:
    return ('{"CreatedAt":"%s","ID":"%s"}' % (created, rid)).encode()


def clean_model() -> dict:
    """root1 (sha256) and root2 (random) -> child (derived id) -> grandchild (derived) with a result;
    child and root1 have results too."""
    root1, root2 = "sha256:" + "11" * 32, "random:" + "22" * 32
    child, grand = "child0000000000000000000aa", "grand0000000000000000000bb"
    links = {root1: [link_key(child)], root2: [link_key(child, input=1)], child: [link_key(grand, selector=S)],
             grand: []}
    results = {root1: [f"{WORKER}::ref1"], child: [f"{WORKER}::ref2"], grand: [f"{WORKER}::ref3"]}
    return {"links": links, "results": results}


def tree_of(model: dict) -> dict:
    """The bucket tree BuildKit would have written for ``model`` (links, results and their indexes)."""
    t = {b"_links": Bucket(), b"_backlinks": Bucket(), b"_result": Bucket(), b"_byresult": Bucket()}
    for src, keys in model["links"].items():
        b = t[b"_links"].children.setdefault(src.encode(), Bucket())
        for k in keys:
            b.children[k] = b""
            target = k.decode().rsplit("@", 1)[1]
            t[b"_backlinks"].children.setdefault(target.encode(), Bucket()).children[src.encode()] = b""
    for kid, rids in model["results"].items():
        b = t[b"_result"].children.setdefault(kid.encode(), Bucket())
        t[b"_links"].children.setdefault(kid.encode(), Bucket())
        for rid in rids:
            b.children[rid.encode()] = result_value(rid)
            t[b"_byresult"].children.setdefault(rid.encode(), Bucket()).children[kid.encode()] = b""
    return t


def write_store(path, tree: dict):
    with BoltWriter(path) as w:
        write_tree(w, tree)
    return path


def clean_tree() -> dict:
    return copy.deepcopy(tree_of(clean_model()))


def env(value, index: str | None = None) -> bytes:
    """A metadata_v2.db value as Go writes it: {"value":<json>[,"index":"..."]}."""
    import json
    out = {"value": value}
    if index:
        out["index"] = index
    return json.dumps(out, separators=(",", ":")).encode()


BASE, LAYER, MERGE, OTHER = "base00000000000000000000aa", "layer0000000000000000000bb", \
    "merge0000000000000000000cc", "other0000000000000000000dd"
CHAIN = "sha256:" + "ee" * 32


def clean_metadata_tree() -> dict:
    """Four records: a base layer with a blob and a chain index, a layer on it, an unrelated record and a merge
    of the two; one external."""
    def record(**kv):
        return Bucket({k.encode(): v for k, v in kv.items()})
    main = Bucket({
        BASE.encode(): record(**{"cache.createdAt": env(1733217427444138637), "cache.blob": env(CHAIN),
                                 "cache.diffID": env(CHAIN), "cache.mediatype": env("application/vnd.oci.image.layer.v1.tar"),
                                 "cache.blobsize": env(10), "snapshot.size": env(-1), "snapshot.committed": env(True),
                                 "cache.chainID": env(CHAIN, "chainid:" + CHAIN), "cache.recordType": env("regular"),
                                 "cache.equalMutable": b""}),
        LAYER.encode(): record(**{"cache.createdAt": env(1733217427444138638), "cache.parent": env(BASE),
                                  "snapshot.committed": env(True), "cache.description": env("RUN make")}),
        OTHER.encode(): record(**{"cache.createdAt": env(1733217427444138639), "snapshot.committed": env(True)}),
        MERGE.encode(): record(**{"cache.createdAt": env(1733217427444138640),
                                  "cache.mergeParents": env([LAYER, OTHER]), "snapshot.committed": env(True)}),
    })
    return {b"_main": main, b"_index": Bucket({f"chainid:{CHAIN}::{BASE}".encode(): b""}),
            b"_external": Bucket({BASE.encode(): Bucket({b"filelist": b'["a","b"]'})})}
