"""BuildKit's problem codes, registered into the one catalogue (check/problems.py) by the package that emits them.

C: cache.db (reference/buildkit-stores.md §1.5, §1.6), D: its dangling links and indexes, M: metadata_v2.db
(§3.8), H: history.db (§5.1), X: across the stores of one root. Codes are stable: users grep and suppress them.
"""
from __future__ import annotations

from ..check.problems import Severity, register

CODES: dict[str, tuple[Severity, str]] = {
    # BuildKit cache.db (reference/buildkit-stores.md §1.5, §1.6)
    "C1": (Severity.INFO, "top-level buckets: one missing, or one BuildKit does not use"),
    "C2": (Severity.ERROR, "a level-2 entry is a plain value where BuildKit expects a bucket"),
    "C3": (Severity.ERROR, "a level-3 entry is a bucket where BuildKit expects a value"),
    "C4": (Severity.ERROR, "a result does not decode as CacheResult, or its ID differs from its key"),
    "C5": (Severity.WARNING, "_result and _byresult disagree"),
    "C6": (Severity.INFO, "empty _byresult bucket"),
    "C7": (Severity.INFO, "non-empty value where BuildKit writes an empty one"),
    "C9": (Severity.ERROR, "poison link key: not exactly one '@', or non-canonical link JSON"),
    "C12": (Severity.WARNING, "link into a dead chain: nothing below the target has a result"),
    "C13": (Severity.WARNING, "empty branch: a key with no results and no links still has buckets"),
    "C14": (Severity.WARNING, "id class misuse: root-form key as a link target, or an unreachable derived key"),
    "C15": (Severity.WARNING, "cycle or self-loop in the link graph"),
    "C16": (Severity.INFO, "result id is not <workerID>::<refID>"),
    "C17": (Severity.ERROR, "link fields out of range (negative Input/Output, Digest/Selector not a digest)"),
    "D1": (Severity.WARNING, "hard-dangling link: the target key does not exist at all"),
    "D2": (Severity.WARNING, "ghost target: no results and no outgoing links, still linked from parents"),
    "D3": (Severity.WARNING, "missing backlink for a link (C10)"),
    "D4": (Severity.INFO, "stale backlink without a link (C11)"),
    "D5": (Severity.WARNING, "orphan results: results without a _links bucket (C8)"),
    # BuildKit metadata_v2.db (reference/buildkit-stores.md §3.8)
    "M1": (Severity.INFO, "top-level entry BuildKit does not use"),
    "M2": (Severity.ERROR, "plain value where a record or external bucket belongs"),
    "M3": (Severity.ERROR, "value not a {\"value\",\"index\"} envelope (daemon will not start), or payload of the "
                           "wrong type"),
    "M4": (Severity.ERROR, "parent record missing: the record and its descendants are cleared at start"),
    "M5": (Severity.ERROR, "parent (or equalMutable) cycle: buildkitd overflows its stack at start"),
    "M6": (Severity.WARNING, "parent kinds mixed, or a merge with fewer than two parents"),
    "M7": (Severity.WARNING, "a parent record is mutable (neither committed nor backed by equalMutable)"),
    "M8": (Severity.WARNING, "equalMutable names a record that does not exist"),
    "M9": (Severity.WARNING, "mutable record without its active snapshot (missing from containerdmeta.db: removed at "
                             "start)"),
    "M10": (Severity.WARNING, "_index out of step with the records (missing, dangling, or without '::')"),
    "M11": (Severity.INFO, "externals of a record that does not exist"),
    "M12": (Severity.WARNING, "field out of range or inconsistent (sizes, policy, createdAt, blob fields, record "
                              "type)"),
    "M13": (Severity.WARNING, "chainID/blobChainID do not follow from diffID, blob and the parent's chain"),
    "M14": (Severity.INFO, "record marked deleted: removed at next start"),
    "M15": (Severity.WARNING, "record without its lease in containerdmeta.db: its data is not protected from "
                              "containerd GC"),
    "M16": (Severity.WARNING, "lease of no record: what it holds leaks disk space forever"),
    "M17": (Severity.WARNING, "layer record whose snapshot's parent is not its parent record's snapshot"),
    # BuildKit history.db (reference/buildkit-stores.md §5.1)
    "H1": (Severity.ERROR, "build record does not decode as a BuildHistoryRecord"),
    "H2": (Severity.WARNING, "build record's Ref differs from its key"),
    "H3": (Severity.INFO, "build record outside _records (salvaged from a torn tree): BuildKit never lists it"),
    # across stores of one root
    "X1": (Severity.INFO, "cache.db result of a worker this root does not have (released at next start)"),
    "X2": (Severity.INFO, "cache.db result whose metadata_v2.db record is gone (released at next start)"),
}

register(CODES)
