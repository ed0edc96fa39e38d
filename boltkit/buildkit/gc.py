"""BuildKit's garbage collection, replayed offline on the records the start model loaded.

Written from BuildKit at 73ed6825 (the daemon of the start and GC recordings): ``cacheManager.prune`` /
``pruneOnce`` / ``DiskUsage`` / ``sortDeleteRecords`` (cache/manager.go), ``cacheRecord.size`` and the
reference counting of ``cache/refs.go``, the policy of ``cmd/buildkitd/config/gcpolicy.go`` and
``getGCPolicy``, and buildctl prune's options (``client.WithKeepOpt``). The rules that decide what stays:

- a record is a candidate only when nothing holds a reference to it. In an idle daemon the only holders are
  the records loaded on top of it: every record holds one reference on each of its parents from
  ``cacheManager.init`` on, so a parent can go only after all its descendants, and a prune repeats its pass
  until a pass removes nothing;
- an equal-mutable pair counts once, through its mutable half; removing it removes both;
- internal and frontend records need ``--all``; ``keepDuration`` keeps a record used after the cut-off; a
  rule's filters (containerd's filter syntax over id, description, type, mutable, immutable, shared,
  private) must match;
- with a byte budget (reservedSpace, maxUsedSpace, minFreeSpace) the records go one at a time, least
  recently and least often used first, until the total is under what the rule keeps;
- releasing the last reference on a parent stamps it as used *now* (``updateLastUsed``: usageCount + 1,
  lastUsedAt = now). A keep-duration prune therefore keeps the parents of everything it removes, until
  the next prune: the commonest answer to "why is this old record still here".

Sizes are BuildKit's: ``snapshot.size`` where recorded, else the snapshotter's usage (a committed
snapshot's size row in snapshots/metadata.db, an active one's directory walked as containerd's
``fs.DiskUsage`` does: 512-byte blocks of each inode once) plus the blob's size in the content store; the
size found is written back to the record, as ``queueSize`` does.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Iterable, TypeAlias

import numpy as np

from .containerd_gc import uvarint
from .gotime import unix_ns
from .startconfig import ConfigError, StartConfig, go_duration

# The start model's cache manager, worker and record (startup.py, which calls into this module): typed
# loosely here so the two modules do not import each other.
_Model: TypeAlias = Any
_Worker: TypeAlias = Any
_Rec: TypeAlias = Any

MAX_PRUNE_BATCH = 10            # maxPruneBatch: records removed per pass while the manager's lock is held
SKIPPED_TYPES = ("internal", "frontend")


# -- the policy -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DiskStat:
    """util/disk.GetDiskStat: statfs of the root (Bsize × Blocks, Bsize × Bfree)."""
    total: int
    free: int

    @classmethod
    def of(cls, path: str | os.PathLike) -> "DiskStat":
        try:
            st = os.statvfs(path)
        except OSError:
            return cls(0, 0)
        return cls(st.f_bsize * st.f_blocks, st.f_bsize * st.f_bfree)


@dataclass(frozen=True)
class Rule:
    """One client.PruneInfo: a GC policy rule, or the options of one `buildctl prune`."""
    filters: tuple[str, ...] = ()
    all: bool = False
    keep_duration: datetime.timedelta = datetime.timedelta(0)
    reserved_space: int = 0
    max_used_space: int = 0
    min_free_space: int = 0

    @property
    def has_budget(self) -> bool:
        return bool(self.max_used_space or self.reserved_space or self.min_free_space)

    def describe(self) -> str:
        parts = []
        if self.filters:
            parts.append("filter " + " | ".join(self.filters))
        if self.all:
            parts.append("all")
        if self.keep_duration:
            parts.append(f"keep {_duration(self.keep_duration)}")
        for name, v in (("reserved", self.reserved_space), ("max used", self.max_used_space),
                        ("min free", self.min_free_space)):
            if v:
                parts.append(f"{name} {_bytes(v)}")
        return ", ".join(parts) or "everything"

    def as_dict(self) -> dict:
        return {"filters": list(self.filters), "all": self.all,
                "keep_duration_s": self.keep_duration.total_seconds(), "reserved_space": self.reserved_space,
                "max_used_space": self.max_used_space, "min_free_space": self.min_free_space}


def _bytes(n: int) -> str:
    """A budget as it was most likely written: 5MiB for 5242880, 512MB for 512000000."""
    for unit, k in (("GB", 10**9), ("MB", 10**6), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= k and n % k == 0:
            return f"{n // k}{unit}"
    return f"{n}B"


def _duration(d: datetime.timedelta) -> str:
    s = int(d.total_seconds())
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n and s % n == 0:
            return f"{s // n}{unit}"
    return f"{s}s"


_RAM = re.compile(r"^(\d+(?:\.\d+)*) ?([kKmMgGtTpP])?[iI]?[bB]?$")


def ram_in_bytes(text: str) -> int:
    """docker/go-units RAMInBytes: binary multiples ("5MB" is 5 MiB), a decimal number allowed."""
    m = _RAM.match(text)
    if not m:
        raise ConfigError(f"invalid disk space {text!r}")
    n = float(m.group(1))
    exp = "kmgtp".find(m.group(2).lower()) + 1 if m.group(2) else 0
    return int(n * 1024 ** exp)


def disk_space(value, dstat: DiskStat) -> int:
    """config.DiskSpace, then AsBytes: bytes, or a percentage of the disk rounded up to whole GB."""
    if value is None or value == "":
        return 0
    if isinstance(value, bool):
        raise ConfigError(f"invalid disk space {value!r}")
    if isinstance(value, int):
        return value
    text = str(value).strip().strip('"')
    if not text:
        return 0
    if text.endswith("%"):
        try:
            pct = int(text[:-1])
        except ValueError:
            raise ConfigError(f"invalid disk space {value!r}") from None
        return _percent(pct, dstat)
    return ram_in_bytes(text)


def _percent(pct: int, dstat: DiskStat) -> int:
    if pct == 0:
        return 0
    if dstat.total == 0:
        return 2_000_000_000               # defaultCap
    avail = dstat.total * pct // 100
    return (avail // (1 << 30) + 1) * 1_000_000_000


def default_policy(config: StartConfig, dstat: DiskStat) -> list[Rule]:
    """DefaultGCPolicy with the worker's reservedSpace / maxUsedSpace / minFreeSpace (gckeepstorage as
    reservedSpace), or DetectDefaultGCCap's 10 % / 80 % / 20 % of the disk (at most 10 GB / 100 GB)."""
    space = config.gc_space
    reserved = disk_space(space.get("reservedSpace"), dstat)
    max_used = disk_space(space.get("maxUsedSpace"), dstat)
    min_free = disk_space(space.get("minFreeSpace"), dstat)
    if not (reserved or max_used or min_free):
        reserved = disk_space(space.get("gckeepstorage"), dstat)
    if not (reserved or max_used or min_free):
        reserved = min(_percent(10, dstat), 10_000_000_000)
        max_used = min(_percent(80, dstat), 100_000_000_000)
        min_free = _percent(20, dstat)
    return [
        Rule(filters=("type==source.local", "type==exec.cachemount", "type==source.git.checkout"),
             keep_duration=datetime.timedelta(hours=48), max_used_space=512_000_000),
        Rule(keep_duration=datetime.timedelta(days=60), reserved_space=reserved, max_used_space=max_used,
             min_free_space=min_free),
        Rule(reserved_space=reserved, max_used_space=max_used, min_free_space=min_free),
        Rule(all=True, reserved_space=reserved, max_used_space=max_used, min_free_space=min_free),
    ]


def worker_policy(config: StartConfig, dstat: DiskStat) -> list[Rule]:
    """getGCPolicy: no rules with gc = false; the config's gcpolicy list as written (keepBytes standing in
    for a missing reservedSpace), else the default policy."""
    if not config.gc:
        return []
    if not config.gc_policy:
        return default_policy(config, dstat)
    rules = []
    for i, raw in enumerate(config.gc_policy):
        if not isinstance(raw, dict):
            raise ConfigError(f"worker.oci.gcpolicy[{i}] is not a table")
        filters = raw.get("filters") or []
        if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
            raise ConfigError(f"worker.oci.gcpolicy[{i}].filters must be a list of strings")
        reserved = raw.get("reservedSpace") or raw.get("keepBytes")
        rules.append(Rule(
            filters=tuple(filters), all=raw.get("all") is True,
            keep_duration=go_duration(raw.get("keepDuration", 0) or 0),
            reserved_space=disk_space(reserved, dstat), max_used_space=disk_space(raw.get("maxUsedSpace"), dstat),
            min_free_space=disk_space(raw.get("minFreeSpace"), dstat)))
    for rule in rules:
        for f in rule.filters:
            parse_filter(f)
    return rules


# -- containerd's filters -----------------------------------------------------------------------------------

class FilterError(ConfigError):
    """A filter containerd's parser rejects: buildkitd fails the prune with it."""


@dataclass(frozen=True)
class _Selector:
    field: str
    op: str | None           # None: present; "==", "!=", "~="
    value: str = ""


_TOKEN = re.compile(r'\s*(?:(?P<op>==|!=|~=)|(?P<sep>,)|(?P<quoted>"(?:[^"\\]|\\.)*"|/(?:[^/\\]|\\.)*/|'
                    r"\|(?:[^|\\]|\\.)*\|)|(?P<word>[^\s,=!~\"]+))")


def parse_filter(text: str) -> list[_Selector]:
    """filters.Parse: selectors joined by commas (all must match); a selector is a field, optionally an
    operator and a value (quoted with "…", or /…/ and |…| for ~=)."""
    if not text.strip():
        return []
    out, pos = [], 0
    tokens = []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise FilterError(f"invalid filter {text!r}: unexpected {text[pos]!r} at {pos}")
        tokens.append(m)
        pos = m.end()
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t.group("word") is None and t.group("quoted") is None:
            raise FilterError(f"invalid filter {text!r}: a field name expected at {t.start()}")
        name = _unquote(t.group("word") or t.group("quoted"))
        i += 1
        if i < len(tokens) and tokens[i].group("op"):
            op = tokens[i].group("op")
            i += 1
            if i >= len(tokens) or tokens[i].group("sep"):
                raise FilterError(f"invalid filter {text!r}: a value expected after {op}")
            value = _unquote(tokens[i].group("word") or tokens[i].group("quoted"))
            if op == "~=":
                try:
                    re.compile(value)
                except re.error as e:
                    raise FilterError(f"invalid filter {text!r}: {e}") from None
            out.append(_Selector(name, op, value))
            i += 1
        else:
            out.append(_Selector(name, None))
        if i < len(tokens):
            if not tokens[i].group("sep"):
                raise FilterError(f"invalid filter {text!r}: expected ',' at {tokens[i].start()}")
            i += 1
    return out


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> tuple[_Selector, ...]:
    return tuple(parse_filter(text))


def _unquote(s: str) -> str:
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"/|":
        body = s[1:-1]
        return json.loads('"' + body.replace('"', '\\"') + '"') if s[0] == '"' else body
    return s


def matches(filters: tuple[str, ...], fields: dict[str, tuple[str, bool]]) -> bool:
    """filters.ParseAll: no filter matches everything; several match when any one does."""
    if not filters:
        return True
    for text in filters:
        sels = _parsed(text)
        if all(_match(s, fields) for s in sels):
            return True
    return False


def _match(s: _Selector, fields: dict[str, tuple[str, bool]]) -> bool:
    value, present = fields.get(s.field, ("", False))
    if s.op is None:
        return present
    if s.op == "==":
        return present and value == s.value
    if s.op == "!=":
        return value != s.value
    return re.search(s.value, value) is not None


# -- the replay ---------------------------------------------------------------------------------------------

class Keep(str, Enum):
    """Why a record survives a GC pass or a prune."""
    PARENT = "parent"                    # a record loaded on top of it holds a reference
    PAIR = "pair"                        # the immutable half of an equal-mutable pair: goes with its mutable
    TYPE = "internal-or-frontend"        # skipped unless --all / all = true
    RECENT = "keep-duration"             # used after the rule's cut-off
    FILTER = "filter"                    # the rule's filters do not match it
    BUDGET = "under-budget"              # the total fell under what the rule keeps before its turn came
    NO_RULE = "no-rule"                  # no rule's filters match it


@dataclass
class Removed:
    id: bytes
    worker: str
    rule: int                  # index into the rules
    size: int | None
    record_type: str
    mutable: bool
    last_used: int | None      # UnixNano
    usage_count: int
    description: str
    partner: bytes | None      # the immutable half removed with it
    tie: bool = False          # another candidate had the same rank: buildkitd's pick among them is arbitrary


@dataclass
class Kept:
    id: bytes
    worker: str
    reason: Keep
    size: int | None           # as DiskUsage lists it (a pair's mutable half carries the pair's size)
    counted: bool              # listed by DiskUsage (False: the immutable half of a pair, counted with it)
    record_type: str
    per_rule: list[Keep]
    holders: list[bytes]       # the records holding it (Keep.PARENT)
    last_used: int | None
    description: str
    stamped: bool = False      # its last child went in this pass: lastUsedAt is now (updateLastUsed)


@dataclass
class GCResult:
    rules: list[Rule]
    removed: list[Removed] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    total_before: int = 0
    total_after: int = 0
    unknown_sizes: int = 0

    @property
    def reclaimed(self) -> int:
        return sum(r.size or 0 for r in self.removed)


class _Prune:
    """One worker's cacheManager during the prune: reference holders, sizes, and the loop of pruneOnce."""

    def __init__(self, model: _Model, worker: _Worker, stage, why):
        self.model = model
        self.w = worker
        self.now_ns = unix_ns(model.now)
        self.stage = stage
        self.why = why               # Why values: (removed, pair half, size recorded)
        self.holders = worker.holders    # the references the start model counted from cacheManager.init on
        self.sizes: dict[bytes, int | None] = {}
        self.stamped_from = len(worker.stamped)

    @property
    def stamped(self) -> set[bytes]:
        return set(self.w.stamped[self.stamped_from:])

    def refs(self, rid: bytes) -> int:
        return len(self.holders.get(rid, ()))

    # -- sizes --------------------------------------------------------------------------------------------

    def recorded_size(self, rec: _Rec) -> int | None:
        if rec.id in self.sizes:
            return self.sizes[rec.id]
        s = rec.md.int64("snapshot.size")
        return s if s is not None and s >= 0 else None

    def size(self, rec: _Rec, write: bool = True) -> int | None:
        """cacheRecord.size: the recorded size, else the snapshotter's usage plus the blob, written back
        (``write``: as the daemon does; totals the daemon never computes measure without writing)."""
        s = self.recorded_size(rec)
        if s is not None:
            return s
        driver = rec.md.snapshot_id()
        if rec.equal_mutable is not None and rec.equal_mutable in self.w.records:
            driver = self.w.records[rec.equal_mutable].md.snapshot_id()
        usage = 0 if rec.md.boolean("cache.blobonly") else snapshot_usage(self.w, driver)
        if usage is None:
            return None
        blob = rec.md.string("cache.blob")
        if blob:
            usage += blob_size(self.w, blob.encode()) or 0
        if not write:
            return usage
        self.sizes[rec.id] = usage
        main = self.w.md.bucket(b"_main")
        b = main.bucket(rec.id) if main is not None else None
        if b is not None:
            b.put(b"snapshot.size", int_value(usage), ("record-value", self.why[2], rec.id, self.stage))
            rec.md.values["snapshot.size"] = (usage, "")
        return usage

    # -- DiskUsage ------------------------------------------------------------------------------------------

    def listed(self, rec: _Rec) -> bool:
        """DiskUsage and pruneOnce skip the duplicate of a pair: the immutable half while nothing holds
        it, the mutable half while something does."""
        if rec.equal_immutable is not None and self.refs(rec.equal_immutable) > 0:
            return False
        if rec.equal_mutable is not None and self.refs(rec.id) == 0:
            return False
        return True

    def disk_usage_total(self) -> int:
        """The sum of DiskUsage's sizes (nothing is shared on an OCI worker). Loading a record of unknown
        size removes a mutable one without an immutable partner (the start model's rule, kept there)."""
        self.model.partnerless(self.w, self.stage)
        total = 0
        for rec in sorted(self.w.records.values(), key=lambda r: r.id):
            if rec.id not in self.w.records or not self.listed(rec):
                continue
            total += self.listed_size(rec) or 0
        return total

    def listed_size(self, rec: _Rec, write: bool = True) -> int | None:
        """DiskUsage's size of a row: recorded, else that of the reference `cm.get` hands out, which for
        the mutable half of a pair is its immutable half."""
        s = self.recorded_size(rec)
        if s is None and rec.mutable and rec.equal_immutable in self.w.records:
            return self.size(self.w.records[rec.equal_immutable], write)
        return self.size(rec, write) if s is None else s

    # -- pruneOnce ----------------------------------------------------------------------------------------

    def verdict(self, rec: _Rec, rule: Rule) -> Keep | None:
        """None when pruneOnce would take the record, else why not."""
        if not self.listed(rec):
            return Keep.PAIR
        if self.refs(rec.id) > 0:
            return Keep.PARENT
        rtype = rec.md.string("cache.recordType") or "regular"
        if not rule.all and rtype in SKIPPED_TYPES:
            return Keep.TYPE
        last = rec.md.int64("cache.lastUsedAt") if rec.md.int64("cache.usageCount") is not None else None
        if rule.keep_duration and last is not None and last > self.now_ns - _ns(rule.keep_duration):
            return Keep.RECENT
        fields = {"id": (rec.id.decode("utf-8", "surrogateescape"), True),
                  "description": (rec.md.string("cache.description"), bool(rec.md.string("cache.description"))),
                  "mutable": ("", rec.mutable), "immutable": ("", not rec.mutable),
                  "type": (rtype, True), "shared": ("", False), "private": ("", True)}
        if not matches(rule.filters, fields):
            return Keep.FILTER
        return None

    def run(self, rule: Rule, index: int, result: GCResult, verdicts: dict[bytes, Keep]) -> None:
        """cacheManager.prune: the budget from DiskUsage, then pruneOnce until a pass removes nothing.

        pruneOnce judges every record on every pass, and under a byte budget removes one record a pass: O(n²)
        in Go, minutes in Python at fleet size. Only the records a removal touches can change their verdict
        (the references it released, and the pair halves whose listing depends on those), so each pass
        re-judges just those and ranks the candidates in arrays (``_Candidates``): the same picks, in the
        same order, as judging and ranking everything."""
        total = 0
        if rule.has_budget:
            total = self.disk_usage_total()
        keep = keep_bytes(total, rule, self.model.disk if rule.min_free_space else DiskStat(0, 0))
        cands = _Candidates(sorted(self.w.records))
        dirty: Iterable[bytes] = cands.ids
        while True:
            for rid in dirty:
                rec = self.w.records.get(rid)
                if rec is None:
                    cands.drop(rid)
                    continue
                why = self.verdict(rec, rule)
                verdicts[rid] = why if why is not None else Keep.BUDGET
                cands.set(rec, why is None)
            if (keep != 0 and total < keep) or not cands.any():
                return
            released, gone = self.prune_batch(cands.pick(keep != 0), index, result, verdicts)
            total -= released
            dirty = self._touched(gone)

    def _touched(self, gone: list[_Rec]) -> set[bytes]:
        """The records whose verdict a removal may change: the removed ones, the records they held a
        reference on, and the halves of a pair whose listing reads those references."""
        out: set[bytes] = set()
        for rec in gone:
            out.add(rec.id)
            for t in rec.held:
                out.add(t)
                held = self.w.records.get(t)
                if held is not None:
                    out.update(x for x in (held.equal_mutable, held.equal_immutable) if x is not None)
        return out

    def prune_batch(self, picked: tuple[list[bytes], bool], index: int, result: GCResult,
                    verdicts: dict[bytes, Keep]) -> tuple[int, list[_Rec]]:
        """pruneOnce's removals: each picked record with its pair partner, sizes as the daemon takes them."""
        batch, tie = picked
        released = 0
        gone: list[_Rec] = []
        for rid in batch:
            rec = self.w.records[rid]
            partner = self.w.records.get(rec.equal_immutable) if rec.equal_immutable is not None else None
            size = self.recorded_size(rec)
            if size is None and partner is not None:
                size = self.recorded_size(partner)      # "benefit from DiskUsage calc"
            if size is None:
                size = self.size(rec)
            result.removed.append(Removed(
                rec.id, self.w.rel, index, size, rec.md.string("cache.recordType") or "regular", rec.mutable,
                rec.md.int64("cache.lastUsedAt"), rec.md.int64("cache.usageCount") or 0,
                rec.md.string("cache.description"), partner.id if partner is not None else None, tie))
            verdicts.pop(rec.id, None)
            if partner is not None:
                verdicts.pop(partner.id, None)
                self.remove(partner, remove_snapshot=False)
                gone.append(partner)
            self.remove(rec, remove_snapshot=True)
            gone.append(rec)
            released += size or 0
        return released, gone

    def remove(self, rec: _Rec, *, remove_snapshot: bool) -> None:
        """cacheRecord.remove: leases (with the snapshot), metadata, then the references on its parents;
        the parent whose last reference goes is stamped as used now."""
        self.w.remove(rec, self.why[0] if remove_snapshot else self.why[1], rec.id, self.stage,
                      remove_snapshot=remove_snapshot)


@dataclass(frozen=True)
class UsageInfo:
    """One row of DiskUsage: what `buildctl du -v` shows for a record."""
    id: bytes
    in_use: bool
    size: int | None           # None: not recorded and not measurable here
    mutable: bool


def disk_usage(model: _Model, worker: _Worker) -> list[UsageInfo]:
    """cacheManager.DiskUsage on the started daemon, without writing: the records it lists (a pair once),
    in use when a reference is left after the references of unused records on their parents are taken
    away (the rescan), and sizes measured as it measures them."""
    p = _Prune(model, worker, None, None)
    listed = [r for r in sorted(worker.records.values(), key=lambda r: r.id) if p.listed(r)]
    refs = {r.id: p.refs(r.id) for r in listed}
    done: set[bytes] = set()
    todo = [r.id for r in listed]
    while todo:
        rid = todo.pop()
        if refs[rid] > 0 or rid in done:
            continue
        done.add(rid)
        rec = worker.records[rid]
        for parent in rec.parents:
            target = worker.ref_target(parent)
            if target in refs:
                refs[target] -= 2 if rec.equal_immutable is not None else 1
                todo.append(target)
    return [UsageInfo(r.id, refs[r.id] > 0, p.listed_size(r, write=False), r.mutable) for r in listed]


def keep_bytes(total: int, rule: Rule, dstat: DiskStat) -> int:
    """calculateKeepBytes: maxUsedSpace, lowered to free minFreeSpace, never under reservedSpace."""
    if not rule.has_budget:
        return 0
    keep = rule.max_used_space
    excess = rule.min_free_space - dstat.free
    if excess > 0:
        keep = total - excess if keep == 0 else min(keep, total - excess)
    elif rule.min_free_space and keep == 0:
        keep = total
    return max(keep, rule.reserved_space)


class _Candidates:
    """pruneOnce's candidates as arrays over the records in id order (the order the daemon walks them), with
    the two keys sortDeleteRecords ranks by; kept up to date record by record between passes."""

    def __init__(self, ids: list[bytes]):
        self.ids = ids
        self.at = {rid: i for i, rid in enumerate(ids)}
        n = len(ids)
        self.cand = np.zeros(n, bool)
        self.used = np.zeros(n, bool)          # usageCount is set: lastUsedAt counts
        self.last = np.zeros(n, np.int64)
        self.count = np.zeros(n, np.int64)

    def set(self, rec: _Rec, candidate: bool) -> None:
        i = self.at[rec.id]
        self.cand[i] = candidate
        count = rec.md.int64("cache.usageCount")
        last = rec.md.int64("cache.lastUsedAt") if count is not None else None
        self.used[i] = last is not None
        self.last[i] = last or 0
        self.count[i] = count or 0

    def drop(self, rid: bytes) -> None:
        self.cand[self.at[rid]] = False

    def any(self) -> bool:
        return bool(self.cand.any())

    def pick(self, ranked: bool) -> tuple[list[bytes], bool]:
        """Without a budget, the first maxPruneBatch candidates; with one, the lowest of sortDeleteRecords
        (the first such in id order, as the stable sort leaves it), and whether another ties with it."""
        pos = np.flatnonzero(self.cand)
        if not ranked:
            return [self.ids[i] for i in pos[:MAX_PRUNE_BATCH].tolist()], False
        score = rank_scores(self.used[pos], self.last[pos], self.count[pos])
        best = int(np.argmin(score))
        tie = pos.size > 1 and int((score == score[best]).sum()) > 1
        return [self.ids[int(pos[best])]], tie


def rank_scores(used: np.ndarray, last: np.ndarray, count: np.ndarray) -> np.ndarray:
    """sortDeleteRecords' blended rank, per record: the dense rank of last use (never used: 1) over the
    number of distinct last uses + 1, plus the dense rank of use count (0 shares the first rank) over the
    number of its distinct values + 1. The same float arithmetic as the loop of manager.go, so ties are the same
    ties."""
    distinct_last = np.unique(last[used])
    rl = np.where(used, np.searchsorted(distinct_last, last) + 2, 1).astype(np.float64)
    max_last = 1.0 + distinct_last.size
    distinct_count = np.unique(count)
    skip = 1 if distinct_count.size and distinct_count[0] == 0 else 0
    rc = (np.searchsorted(distinct_count, count) + 2 - skip).astype(np.float64)
    max_count = 1.0 + distinct_count.size - skip
    return rl / max_last + rc / max_count


def _ns(d: datetime.timedelta) -> int:
    return (d.days * 86400 + d.seconds) * 1_000_000_000 + d.microseconds * 1000


def int_value(n: int) -> bytes:
    """metadata.NewValue of an integer: the JSON BuildKit stores."""
    return b'{"value":%d}' % n


def snapshot_usage(worker: _Worker, key: bytes) -> int | None:
    """The metadata snapshotter's Usage → the native/overlayfs snapshotter's: a committed snapshot's size
    row; an active one's directory walked. 0 when the snapshot is unknown (NotFound is no error there);
    None when an active snapshot's directory is not on disk here."""
    cd, backend = worker.cd, worker.backend
    if cd is None or worker.snapshotter is None:
        return None
    snaps = cd.bucket(b"v1", b"buildkit", b"snapshots", worker.snapshotter)
    s = snaps.bucket(key) if snaps is not None else None
    name = s.get(b"name") if s is not None else None
    if name is None:
        return 0
    if backend is None:
        return None
    row = backend.bucket(b"v1", b"snapshots", name)
    if row is None:
        return 0
    kind = row.get(b"kind") or b"\x00"
    if kind[:1] != b"\x02":                         # not KindActive: the size stored at commit
        return _varint(row.get(b"size"))
    sid = uvarint(row.get(b"id"))
    return walk_usage(Path(worker.dir) / "snapshots" / "snapshots" / str(sid))


def walk_usage(path: Path) -> int | None:
    """continuity fs.DiskUsage: 512-byte blocks of every inode under the directory, each inode once."""
    if not path.is_dir():
        return None
    seen, size = set(), 0
    for top, dirs, files in os.walk(path):
        for name in [top] + [os.path.join(top, f) for f in files] + [os.path.join(top, d) for d in dirs
                                                                      if os.path.islink(os.path.join(top, d))]:
            try:
                st = os.lstat(name)
            except OSError:
                continue
            key = (st.st_dev, st.st_ino)
            if key not in seen:
                seen.add(key)
                size += st.st_blocks * 512
    return size


def blob_size(worker: _Worker, digest: bytes) -> int | None:
    """The content store's Info: the blob's size row in containerdmeta.db."""
    if worker.cd is None:
        return None
    b = worker.cd.bucket(b"v1", b"buildkit", b"content", b"blob", digest)
    return _varint(b.get(b"size")) if b is not None else None


def _varint(buf: bytes | None) -> int:
    """Go's binary.Varint: the zig-zag signed form of the unsigned varint."""
    u = uvarint(buf)
    return (u >> 1) ^ -(u & 1)


def collect(model: _Model, worker: _Worker, rules: list[Rule], stage, why) -> GCResult:
    """cacheManager.Prune with these rules, in order, on one worker: removals, and for every record left
    why it stayed."""
    result = GCResult(rules)
    p = _Prune(model, worker, stage, why)
    per_rule: dict[bytes, list[Keep]] = {rid: [] for rid in worker.records}
    for i, rule in enumerate(rules):
        verdicts: dict[bytes, Keep] = {}
        p.run(rule, i, result, verdicts)
        for rid, k in verdicts.items():
            if rid in worker.records:
                per_rule.setdefault(rid, []).append(k)
    for rid, rec in sorted(worker.records.items()):
        reasons = per_rule.get(rid) or []
        if len(rules) > 1 and reasons and all(k is Keep.FILTER for k in reasons):
            reason = Keep.NO_RULE
        else:
            reason = next((k for k in reversed(reasons) if k is not Keep.FILTER),
                          reasons[-1] if reasons else Keep.NO_RULE)
        holders = sorted(p.holders.get(rid, ()))
        if reason is Keep.PAIR and rec.equal_mutable is not None:
            holders = [rec.equal_mutable]
        listed = p.listed(rec)
        result.kept.append(Kept(rid, worker.rel, reason, p.listed_size(rec, write=False) if listed else None,
                                listed, rec.md.string("cache.recordType") or "regular", reasons, holders,
                                rec.md.int64("cache.lastUsedAt"), rec.md.string("cache.description"),
                                rid in p.stamped))
    result.kept.sort(key=lambda k: (not k.counted, -(k.size or 0), k.id))
    after = [p.listed_size(r, write=False) for r in worker.records.values() if p.listed(r)]
    result.total_after = sum(s or 0 for s in after)
    result.unknown_sizes = sum(s is None for s in after)
    result.total_before = result.total_after + result.reclaimed
    return result


__all__ = ["UsageInfo", "disk_usage", "Rule", "DiskStat", "Keep", "Removed", "Kept", "GCResult", "default_policy",
           "worker_policy", "parse_filter", "matches", "keep_bytes", "rank_scores", "collect", "disk_space",
           "ram_in_bytes", "FilterError"]
