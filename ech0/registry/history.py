"""Promotion history and the aliases derived from it; safe with many processes and a shared server.

    from ech0.registry import promote, rollback
    promote(ctx, run_id="abc123", stage="production")     # refused unless the version's gate passed
    rollback(ctx, stage="production")                      # back to the version before

Design. MLflow has no transactions across calls, so every move is made under a registry-wide lock
and the history, not the alias, is the source of truth:

* **Lock** — the one atomic primitive both the SQLite store and ``mlflow server`` offer is a unique
  name: ``create_registered_model("<name>.ech0-lock")`` succeeds for exactly one caller. The lock
  model carries its owner token and an expiry (``lock_ttl`` seconds); release deletes it. Waiters
  retry with jittered back-off; a lock past its expiry (its holder died) is deleted by the next
  waiter. Before writing, the holder re-reads the lock and aborts if it is no longer its own.
* **History** — each move is one registered-model tag ``ech0.history.000017`` holding a JSON event
  (stage, from → to, when, who, reason, forced, action). Sequence numbers are contiguous; a new
  event takes max+1 under the lock, so no two events share a number and none is lost.
* **Aliases are derived** — the event is written *before* the alias moves, then the alias (and the
  ``active_run`` tag, and the legacy stage field) are set from it. A process that dies between the
  two leaves the alias on the event's ``from`` version, which the history still explains; the next
  operation (or ``ech0 registry history --repair``) rolls it forward. An alias moved outside ech0
  (the UI) is adopted into the history as an ``adopt`` event, so the history explains it too.
* **Shown in the UI** — every event also rewrites the registered model's description (each alias's
  version and the history as a Markdown table) and adds a row to ``registry/history.json`` in the
  runs it moved to and from (ech0/registry/describe.py); both are derived, so a failure there is a
  note on the move, not an error, and the next move (or ``--repair``) rewrites the page.

Limits: the lock is a lease — a holder stalled longer than ``lock_ttl`` (default 120 s; a move takes
well under a second) can be overtaken, and the fence check narrows but cannot close that window.
Registering is not under the lock (it only creates versions). Readers see the alias, which may lag
the newest event by one in-flight move. The lock shows briefly in the UI's model list.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import asdict, dataclass, field

from ech0.context import Context
from ech0.errors import UserError
from ech0.io import utc_now
from ech0.registry import access, describe, store

HISTORY_PREFIX = "ech0.history."
ACTIVE_RUN_TAG = "active_run"
LEGACY_STAGE = {"production": "Production", "staging": "Staging"}
LOCK_SUFFIX = ".ech0-lock"


@dataclass
class Event:
    seq: int
    stage: str
    action: str  # promote | rollback | adopt
    from_version: str | None
    to_version: str
    at: str = field(default_factory=utc_now)
    who: str = ""
    reason: str = ""
    forced: bool = False
    run_id: str = ""

    @property
    def key(self) -> str:
        return f"{HISTORY_PREFIX}{self.seq:06d}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def events(rm) -> list[Event]:
    out = []
    for k, v in (rm.tags or {}).items():
        if k.startswith(HISTORY_PREFIX) and k[len(HISTORY_PREFIX):].isdigit():
            try:
                out.append(Event(**json.loads(v)))
            except (ValueError, TypeError):
                raise UserError(f"registered model {rm.name!r}: history tag {k} is not an ech0 event; "
                                f"restore it from the MLflow UI's tag list or delete it") from None
    return sorted(out, key=lambda e: e.seq)


@dataclass
class StageState:
    current: str | None = None
    stack: list[str] = field(default_factory=list)  # promotions still in effect, oldest first
    last: Event | None = None


def replay(evts: list[Event]) -> tuple[dict[str, StageState], list[str]]:
    """Each stage's state after the history, and every inconsistency found on the way."""
    states = {s: StageState() for s in store.ALIASES}
    problems = []
    for i, e in enumerate(evts, start=1):
        if e.seq != i:
            problems.append(f"sequence gap or duplicate at event {e.seq} (expected {i})")
        st = states.setdefault(e.stage, StageState())
        if e.from_version != st.current:
            problems.append(f"event {e.seq}: {e.stage} moves from v{e.from_version} but was on v{st.current}")
        if e.action == "rollback":
            if e.to_version not in st.stack[:-1]:
                problems.append(f"event {e.seq}: rollback to v{e.to_version}, never earlier in {e.stage}")
            while st.stack and st.stack[-1] != e.to_version:
                st.stack.pop()
        else:
            st.stack.append(e.to_version)
        st.current, st.last = e.to_version, e
    return states, problems


class RegistryLock:
    """A lease on ``<name>.ech0-lock``; see the module docstring."""

    def __init__(self, c, name: str, who: str, ttl: float = 120.0, timeout: float = 120.0):
        self.c, self.name, self.who, self.ttl, self.timeout = c, name + LOCK_SUFFIX, who, ttl, timeout
        self.token = uuid.uuid4().hex

    def _holder(self) -> dict | None:
        from mlflow.exceptions import MlflowException

        try:
            return dict(self.c.get_registered_model(self.name).tags or {})
        except MlflowException as e:
            if store.is_not_found(e):
                return None
            raise

    def acquire(self) -> "RegistryLock":
        from mlflow.exceptions import MlflowException

        deadline, delay, holder = time.monotonic() + self.timeout, 0.02, None
        while True:
            try:
                self.c.create_registered_model(
                    self.name, tags={"ech0.lock.owner": self.token, "ech0.lock.expires": f"{time.time() + self.ttl:.3f}",
                                     "ech0.lock.who": self.who},
                    description="ech0 registry lock: held during one promote/rollback; "
                                "safe to delete once ech0.lock.expires (epoch seconds) has passed")
                return self
            except MlflowException as e:
                # Transient: a busy SQLite file, a server hiccup, or the SQL store's "already exists"
                # check finding the lock already released again (it reports that as not found).
                transient = "locked" in str(e).lower() or store.error_code(e) in (
                    "INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_DOES_NOT_EXIST")
                if not transient and store.error_code(e) not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                    raise
            try:
                holder = self._holder()
            except MlflowException:
                holder = None
            if holder is not None:
                if holder.get("ech0.lock.owner") == self.token:  # our create went through; its reply was lost
                    return self
                if float(holder.get("ech0.lock.expires") or 0) < time.time():
                    self._delete_if(holder.get("ech0.lock.owner"))  # its holder died: break the stale lease
                    continue
            if time.monotonic() > deadline:
                who = (holder or {}).get("ech0.lock.who", "another process")
                raise UserError(f"registry {self.name[:-len(LOCK_SUFFIX)]!r} is locked by {who}; try again, or "
                                f"delete registered model {self.name!r} if that process is gone")
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 1.6, 0.5)

    def _delete_if(self, owner: str | None) -> None:
        from mlflow.exceptions import MlflowException

        holder = self._holder()
        if holder is not None and holder.get("ech0.lock.owner") == owner:
            try:
                self.c.delete_registered_model(self.name)
            except MlflowException as e:
                if not store.is_not_found(e):
                    raise

    def fence(self) -> None:
        """Abort before writing if the lease was lost (held past its ttl and broken by another process)."""
        holder = self._holder()
        if holder is None or holder.get("ech0.lock.owner") != self.token:
            raise RuntimeError(f"lost the registry lock {self.name} (held longer than {self.ttl:.0f}s); nothing written")

    def release(self) -> None:
        self._delete_if(self.token)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@dataclass
class Move:
    """What promote/rollback did: the event written (None for a no-op) and the resulting version."""

    name: str
    stage: str
    version: str
    event: Event | None
    repaired: list[str] = field(default_factory=list)
    stage_mirrored: bool | None = None
    notes: list[str] = field(default_factory=list)  # what could not be shown in the UI (the move itself is done)

    def line(self) -> str:
        return self._line() + "".join(f"\n  note: {n}" for n in self.notes)

    def _line(self) -> str:
        if self.event is None:
            return f"{self.name}@{self.stage} is already version {self.version}; nothing to do"
        e = self.event
        verb = "rolled back" if e.action == "rollback" else "promoted"
        forced = f" (forced: {e.reason})" if e.forced else (f" ({e.reason})" if e.reason else "")
        return (f"{self.name}@{self.stage}: {verb} v{e.from_version or '-'} -> v{e.to_version}{forced} "
                f"[history #{e.seq}]")


class _Txn:
    """One locked read-repair-write cycle on a registered model."""

    def __init__(self, c, name: str, who: str, mirror_stages: bool, lock_ttl: float, lock_timeout: float,
                 ctx: Context | None = None):
        self.c, self.name, self.who, self.mirror, self.ctx = c, name, who, mirror_stages, ctx
        self.lock = RegistryLock(c, name, who, ttl=lock_ttl, timeout=lock_timeout)
        self.repaired: list[str] = []
        self.mirrored: bool | None = None
        self.notes: list[str] = []

    def __enter__(self):
        store.registered_model(self.c, self.name)  # a clear error before taking the lock
        self.lock.acquire()
        try:
            self.reload()
            self.repair()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc):
        self.lock.release()

    def reload(self) -> None:
        self.rm = self.c.get_registered_model(self.name)
        self.events = events(self.rm)
        self.states, _ = replay(self.events)

    def alias(self, stage: str) -> str | None:
        v = (self.rm.aliases or {}).get(stage)
        return None if v is None else str(v)

    def append(self, stage: str, action: str, to_version: str, reason: str = "", forced: bool = False,
               who: str | None = None) -> Event:
        mv = self.c.get_model_version(self.name, to_version)
        e = Event(seq=len(self.events) + 1, stage=stage, action=action, from_version=self.states[stage].current,
                  to_version=str(to_version), reason=reason, forced=forced, run_id=mv.run_id or "",
                  who=who or self.who)
        self.lock.fence()
        self.c.set_registered_model_tag(self.name, e.key, e.to_json())  # the history first ...
        self.events.append(e)
        self.states, _ = replay(self.events)
        self.apply(e)  # ... then the alias it implies
        if self.ctx is not None:  # ... then what the UI shows of it
            self.notes += describe.log_event(self.ctx, self.c, self.name, e)
        self.publish()
        return e

    def publish(self) -> None:
        """Rewrite the registered model's page from the whole history (a no-op when it already says so)."""
        from mlflow.exceptions import MlflowException

        old = self.rm.description or ""
        text = describe.model_description(old, self.name, self.events,
                                          {s: self.states[s].current for s in store.ALIASES})
        if text == old:
            return
        try:
            self.lock.fence()
            self.c.update_registered_model(self.name, description=text)
            self.rm = self.c.get_registered_model(self.name)
        except MlflowException as err:
            self.notes.append(f"registered model page not updated ({str(err).strip().splitlines()[0][:200]}); "
                              f"`ech0 registry history --repair` rewrites it")

    def apply(self, e: Event) -> None:
        self.c.set_registered_model_alias(self.name, e.stage, e.to_version)
        if e.stage == "production":
            self.c.set_registered_model_tag(self.name, ACTIVE_RUN_TAG, e.run_id)
        if self.mirror:
            self.mirrored = self._mirror_stage(e)

    def _mirror_stage(self, e: Event) -> bool:
        """The legacy stage field tells the same story, where this MLflow still has stages."""
        import warnings

        fn = getattr(self.c, "transition_model_version_stage", None)
        if fn is None:
            return False
        from mlflow.exceptions import MlflowException

        target = LEGACY_STAGE[e.stage]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                new = self.c.get_model_version(self.name, e.to_version)
                if not (e.stage == "staging" and new.current_stage == "Production"):
                    fn(self.name, e.to_version, target)
                if e.from_version and e.from_version != e.to_version:
                    old = self.c.get_model_version(self.name, e.from_version)
                    if old.current_stage == target:  # still shown in this stage: another alias's, or Archived
                        held = sorted(a for a, v in (self.c.get_registered_model(self.name).aliases or {}).items()
                                      if a in LEGACY_STAGE and str(v) == e.from_version)
                        fn(self.name, e.from_version, LEGACY_STAGE[held[0]] if held else "Archived")
        except (MlflowException, NotImplementedError):
            return False
        return True

    def repair(self) -> None:
        """Make every alias agree with the history: roll a half-done move forward, adopt an outside one."""
        for stage in store.ALIASES:
            st, actual = self.states[stage], self.alias(stage)
            if actual == st.current:
                if stage == "production" and st.last and (self.rm.tags or {}).get(ACTIVE_RUN_TAG) != st.last.run_id:
                    self.apply(st.last)
                    self.repaired.append(f"{stage}: active_run tag restored to {st.last.run_id}")
                continue
            if st.last is not None and (actual is None or actual == st.last.from_version):
                self.apply(st.last)
                self.repaired.append(f"{stage}: alias rolled forward to v{st.current} (history #{st.last.seq})")
            else:
                e = self.append(stage, "adopt", actual, reason="alias moved outside ech0; adopted into the history",
                                who=f"external (seen by {self.who})")
                self.repaired.append(f"{stage}: alias v{actual} set outside ech0, adopted as history #{e.seq}")
        if self.repaired:
            self.reload()


def _txn(ctx: Context, c, name, mirror_stages, lock_ttl, lock_timeout) -> _Txn:
    return _Txn(c, name, store.who(ctx), mirror_stages, lock_ttl, lock_timeout, ctx)


def promote(ctx: Context, *, version: str | int | None = None, run_id: str | None = None,
            stage: str = "production", force: bool = False, reason: str = "", name: str | None = None,
            mirror_stages: bool = True, lock_ttl: float = 120.0, lock_timeout: float = 120.0) -> Move:
    """Point ``name@stage`` at a version (by number or newest of a run); the gate must have passed.

    ``name`` defaults to ``ctx.registry_name``; ``mirror_stages`` also moves MLflow's deprecated stage field."""
    name, stage = name or ctx.registry_name, store.check_stage(stage)
    c = store.client(ctx)
    what = f"v{str(version).strip()}" if version else f"the newest version of run {run_id}"
    with access.refusals(c, name, f"promote {what} of {name!r} to {stage}"):
        return _promote(ctx, c, name, stage, version, run_id, force, reason, mirror_stages, lock_ttl, lock_timeout)


def _promote(ctx, c, name, stage, version, run_id, force, reason, mirror_stages, lock_ttl, lock_timeout) -> Move:
    mv = store.resolve(c, name, version=version, run_id=run_id)
    access.require(c, name, f"promote v{mv.version} of {name!r} to {stage}")  # before the lock: nothing written
    verdict, source = store.gate_verdict(c, mv)
    if verdict != "passed":
        why = "has no evaluation" if verdict == "none" else f"failed its gate ({source})"
        if not force:
            raise UserError(f"version {mv.version} (run {mv.run_id}) {why}; refusing to promote to {stage} "
                            f"(override with --force --reason \"...\")")
        if not reason.strip():
            raise UserError("--force needs --reason \"...\" (it is recorded in the promotion history)")
    with _txn(ctx, c, name, mirror_stages, lock_ttl, lock_timeout) as t:
        if t.states[stage].current == str(mv.version):
            return Move(name, stage, str(mv.version), None, t.repaired, notes=t.notes)
        note = reason.strip() if force and verdict != "passed" else (reason.strip() or f"gate {verdict}")
        e = t.append(stage, "promote", str(mv.version), reason=note, forced=force and verdict != "passed")
        return Move(name, stage, e.to_version, e, t.repaired, t.mirrored, t.notes)


def rollback(ctx: Context, *, stage: str = "production", to_version: str | int | None = None,
             reason: str = "", name: str | None = None, mirror_stages: bool = True, lock_ttl: float = 120.0,
             lock_timeout: float = 120.0) -> Move:
    """Move ``name@stage`` back to the version before the current one in its history (or ``to_version``)."""
    name, stage = name or ctx.registry_name, store.check_stage(stage)
    c = store.client(ctx)
    doing = f"roll back {name!r}@{stage}" + (f" to v{str(to_version).strip()}" if to_version is not None else "")
    with access.refusals(c, name, doing):
        if to_version is not None:
            store.get_version(c, name, to_version)
        access.require(c, name, doing)  # before the lock: nothing written
        return _rollback(ctx, c, name, stage, to_version, reason, mirror_stages, lock_ttl, lock_timeout)


def _rollback(ctx, c, name, stage, to_version, reason, mirror_stages, lock_ttl, lock_timeout) -> Move:
    with _txn(ctx, c, name, mirror_stages, lock_ttl, lock_timeout) as t:
        st = t.states[stage]
        earlier = st.stack[:-1]
        if not earlier:
            raise UserError(f"{name}@{stage}: no earlier version in its promotion history to roll back to"
                            + (f" (it is on v{st.current})" if st.current else " (never promoted)"))
        target = str(to_version) if to_version is not None else earlier[-1]
        if target not in earlier:
            raise UserError(f"{name}@{stage}: v{target} is not an earlier {stage} version in the history "
                            f"(earlier: {', '.join('v' + v for v in reversed(earlier))})")
        e = t.append(stage, "rollback", target, reason=reason.strip() or "rollback")
        return Move(name, stage, e.to_version, e, t.repaired, t.mirrored, t.notes)


def history(ctx: Context, *, name: str | None = None, repair: bool = False,
            mirror_stages: bool = True) -> tuple[list[Event], list[str]]:
    """The promotion history and its problems (aliases that disagree with it included)."""
    name = name or ctx.registry_name
    c = store.client(ctx)
    doing = f"repair the aliases of {name!r}" if repair else f"read the promotion history of {name!r}"
    with access.refusals(c, name, doing, need="EDIT" if repair else "READ"):
        if repair:
            access.require(c, name, doing)
            with _txn(ctx, c, name, mirror_stages, 120.0, 120.0) as t:
                t.publish()  # a page written before ech0 kept it (or edited since) says what the history says
                rm, repaired, notes = t.rm, t.repaired, t.notes
        else:
            rm, repaired, notes = store.registered_model(c, name), [], []
    evts = events(rm)
    states, problems = replay(evts)
    aliases = {k: str(v) for k, v in (rm.aliases or {}).items()}
    for stage, st in states.items():
        if aliases.get(stage) != st.current:
            problems.append(f"alias {stage} is on v{aliases.get(stage)} but the history says v{st.current}")
    return evts, [f"repaired: {r}" for r in repaired] + [f"not shown in the UI: {n}" for n in notes] + problems
