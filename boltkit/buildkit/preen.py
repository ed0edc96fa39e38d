"""`buildkit fsck --repair`: e2fsck's preen for an init system. What is safe is done without asking: a store
buildkitd would crash on or SafeOpen would reset is salvaged (every intact pair kept, instead of an empty
file), then what would stop the daemon is fixed and what its next start would do is applied (repair.py). Every
step writes beside the original, verifies, keeps the original as a backup, and leaves a JSON report."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..errors import CorruptionError, PreenError
from ..repair.preflight import require_sound
from .repair import apply_start_repair, plan_start_repair
from .root import discover
from .startconfig import StartConfig


@dataclass(frozen=True)
class PreenStep:
    store: str                  # relative to the root
    action: str                 # salvage, repair
    backup: str | None
    detail: dict = field(default_factory=dict)

    def as_record(self) -> dict:
        return {"type": "repair", "store": self.store, "action": self.action, "backup": self.backup, **self.detail}

    def describe(self) -> str:
        extra = ", ".join(f"{k} {v}" for k, v in self.detail.items() if not isinstance(v, (list, dict)))
        return f"{self.store}: {self.action}" + (f" ({extra})" if extra else "") + \
            (f"; original kept as {self.backup}" if self.backup else "")


@dataclass
class PreenResult:
    steps: list[PreenStep] = field(default_factory=list)


def preen_root(root: str, *, config: StartConfig | None = None, progress=None) -> PreenResult:
    """``progress(done, total)``: the stores checked, the damaged ones salvaged, the tidy-up, the start replayed
    and applied, each a share of one bar."""
    from ..check.checker import progress_part
    from ..repair.replace import InUse, refuse_if_held
    from ..repair.salvage import salvage_in_place
    found = discover(root)
    result = PreenResult()
    try:
        refuse_if_held([str(s.path) for s in found.stores] + ([str(found.lock)] if found.lock is not None else []))
        from .fsck import fsck_root
        first = fsck_root(str(found.path), simulate=False, progress=progress_part(progress, 0, 300, 1000))
        errors = False
        for s in found.stores:
            rel = os.path.relpath(s.path, found.path)
            try:
                require_sound(str(s.path))
            except CorruptionError:
                pass
            else:
                errors |= any(p.severity.value == "error" for p in first.reports[str(s.path)].problems)
                continue
            # which writes its report beside the backup
            res, done = salvage_in_place(str(s.path), progress=progress_part(progress, 300, 500, 1000))
            if done is None:
                raise PreenError(f"{rel}: the salvaged copy did not verify; {rel} is untouched (the attempt is "
                                 f"{res.dst})")
            backup = done.backup
            result.steps.append(PreenStep(rel, "salvage", backup, {"pairs": res.pairs, "buckets": res.buckets,
                                                                    "damage": len(res.damage)}))
        if result.steps or errors:
            # a salvaged or torn tree leaves ids where BuildKit does not look (old copies of its buckets,
            # lost+found) and entries of the wrong shape (poison link keys): put back and tidy, before the start
            # is replayed on the result
            from .repair import apply_root, plan_root
            tidy = plan_root(discover(found.path), config=config, progress=progress_part(progress, 500, 650, 1000))
            if tidy.changes:
                # a report per store beside its backup
                for store, backup in apply_root(tidy, progress_part(progress, 650, 700, 1000)):
                    result.steps.append(PreenStep(os.path.relpath(store, found.path), "rehome", backup,
                                                  {"changes": sum(1 for path, _ in tidy.changes if path == store)}))
        rep = plan_start_repair(found.path, config=config, progress=progress_part(progress, 700, 900, 1000))
        if rep.blocked is not None:
            rep.close()
            raise PreenError(rep.blocked)
        if not rep.changes:
            rep.close()
            return result
        backups = apply_start_repair(rep, {"operation": "buildkit fsck --repair"},    # a report per store
                                     progress=progress_part(progress, 900, 1000, 1000))
        for rel, backup in backups:
            result.steps.append(PreenStep(rel, "repair", backup, {"changes": sum(1 for c in rep.changes
                                                                                 if c.store == rel)}))
    except InUse as e:
        raise PreenError(str(e), exit_bits=8) from None
    return result
