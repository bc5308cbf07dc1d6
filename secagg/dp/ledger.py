"""Append-only, hash-chained privacy ledger (JSON lines), one file per training run.

What it proves: every round that released a noisy aggregate is recorded *before* the
aggregate is returned to the training loop (write-ahead), with its mechanism as a
:mod:`secagg.dp.events` event, sampling rate, noise multiplier, clip norm, the ids of the
clients whose data entered it, and the run's target delta. From the ledger alone an
auditor can recompute the spent epsilon with any accountant, per client and for the
population, independently of the training code.

Format: line 1 is a ``header`` entry (run id, budget, neighbouring relation, accountant);
every further line is a ``round`` or ``recovery`` entry. Each entry carries ``seq``
(0, 1, 2, ...), ``prev`` (the previous entry's hash; 64 zeros for the header) and ``hash``
= SHA-256 over ``prev`` and the canonical JSON (sorted keys, no spaces) of the entry
without ``hash``.

Threat model: the hash chain detects edits, deletions, reordering or insertions anywhere
*before the head*; it cannot stop someone who rewrites the whole file consistently, so
:attr:`PrivacyLedger.head` (printed by ``secagg privacy audit``) should be anchored
elsewhere (a signed log, a ticket) after each run. Dropping trailing entries is detectable
only against such an anchor or by ``rounds_expected`` in the audit.

Crash safety: each entry is written with one ``os.write`` on an ``O_APPEND`` descriptor and
``os.fsync``\\ ed before :meth:`PrivacyLedger.record_round` returns. A kill during a write
can leave a torn last line; readers report it (``torn_tail``) and otherwise read the
ledger; :meth:`PrivacyLedger.open` (resume) truncates the torn bytes, appends a
``recovery`` entry recording their SHA-256 and length, and continues the chain. A torn
round was never returned to training (write-ahead), so no released output is unaccounted.

Budget guard: :meth:`PrivacyLedger.check_round` raises :class:`PrivacyBudgetExceeded` if
recording the round would make the population-level epsilon exceed the configured budget.
The guard's accountant must be a certified upper bound (:data:`CERTIFIED_ACCOUNTANTS`).
A fixed-size round listing more participants than its event's ``sample_size`` is refused.
Costs: append O(participants); open/verify O(file size); accounting see accountants.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from secagg.dp import accountants as acc
from secagg.dp.events import (
    Neighbouring,
    RoundEvent,
    check_delta,
    check_epsilon,
    compress,
    event_from_dict,
)
from secagg.errors import ConfigError, DataError, SecaggError

LEDGER_VERSION = 1
GENESIS = "0" * 64


class PrivacyBudgetExceeded(SecaggError):
    """Starting the round would exceed the configured (epsilon, delta) budget."""


class LedgerIntegrityError(DataError):
    """The ledger's hash chain or contents are inconsistent (tampered or corrupted)."""


@dataclass(frozen=True)
class PrivacyBudget:
    """Total client-level (epsilon, delta) a run may spend."""

    epsilon: float
    delta: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", check_epsilon(self.epsilon))
        object.__setattr__(self, "delta", check_delta(self.delta))


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def entry_hash(entry: dict) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(entry.get("prev", "").encode() + canonical(body)).hexdigest()


@dataclass
class LedgerContents:
    """A ledger as read from disk, verified; ``problems`` empty means the chain is intact."""

    path: Path
    header: dict
    rounds: list[dict]
    entries: list[dict]
    torn_tail: bytes | None = None
    torn_offset: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def head(self) -> str:
        return self.entries[-1]["hash"] if self.entries else GENESIS

    @property
    def budget(self) -> PrivacyBudget:
        b = self.header["budget"]
        return PrivacyBudget(b["epsilon"], b["delta"])

    @property
    def neighbouring(self) -> Neighbouring:
        return Neighbouring(self.header.get("neighbouring", "add_remove"))

    @property
    def events(self) -> list[RoundEvent]:
        return [event_from_dict(r["event"]) for r in self.rounds]

    @property
    def participants(self) -> list[list[int]]:
        return [list(r["participants"]) for r in self.rounds]


def _check_round(e: dict, where: str) -> list[str]:
    probs = []
    try:
        ev = event_from_dict(e["event"])
    except (KeyError, ConfigError) as ex:
        return [f"{where}: bad event ({ex})"]
    parts = e.get("participants")
    if not isinstance(parts, list) or not all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        probs.append(f"{where}: participants must be a list of integer client ids")
    elif len(set(parts)) != len(parts):
        probs.append(f"{where}: duplicate participants")
    elif not parts:
        probs.append(f"{where}: no participants")
    d = ev.to_dict()
    if "noise_multiplier" in d and e.get("noise_multiplier") != d["noise_multiplier"]:
        probs.append(f"{where}: noise_multiplier {e.get('noise_multiplier')} disagrees with its event {d['noise_multiplier']}")
    if e.get("sampling_rate") != d["sampling_rate"]:
        probs.append(f"{where}: sampling_rate {e.get('sampling_rate')} disagrees with its event {d['sampling_rate']}")
    if d.get("sample_size") is not None and isinstance(parts, list) and len(parts) > d["sample_size"]:
        probs.append(f"{where}: {len(parts)} participants exceed the fixed sample_size {d['sample_size']} the round "
                     f"is accounted with (record the sample size the training loop really draws)")
    if "survivors" in d and isinstance(parts, list) and d["survivors"] != len(parts):
        probs.append(f"{where}: event says {d['survivors']} noise-adding survivors but {len(parts)} participants listed")
    cn = e.get("clip_norm")
    if not isinstance(cn, (int, float)) or not cn > 0:
        probs.append(f"{where}: clip_norm must be > 0, got {cn!r}")
    return probs


def read_ledger(path: str | os.PathLike) -> LedgerContents:
    """Read and verify a ledger without modifying it.

    A torn (unterminated, unparsable) last line is reported in ``torn_tail`` and is not a
    problem; anything else wrong (bad hash, broken link, gap in ``seq``, inconsistent
    fields, an unparsable line before the end) is listed in ``problems``.
    Raises :class:`DataError` if the file is missing, empty or has no header.
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise DataError(f"ledger {p}: file not found") from None
    if not data:
        raise DataError(f"ledger {p}: empty file")
    lines = data.split(b"\n")
    torn = None
    torn_offset = None
    if lines[-1] == b"":
        lines.pop()
    else:
        # the last line has no newline: a write was interrupted
        torn = lines.pop()
        torn_offset = len(data) - len(torn)
    entries: list[dict] = []
    problems: list[str] = []
    for i, raw in enumerate(lines):
        try:
            entries.append(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError):
            problems.append(f"line {i + 1}: not valid JSON")
            entries.append({})
    if not entries or entries[0].get("type") != "header":
        if torn is not None and not entries:
            raise DataError(f"ledger {p}: only a torn header line; the run never started")
        raise DataError(f"ledger {p}: first line is not a ledger header")
    prev = GENESIS
    rounds = []
    for i, e in enumerate(entries):
        where = f"line {i + 1}"
        if not e:
            prev = None  # type: ignore[assignment]
            continue
        if e.get("seq") != i:
            problems.append(f"{where}: seq {e.get('seq')} != {i} (entry removed, inserted or reordered)")
        if prev is not None and e.get("prev") != prev:
            problems.append(f"{where}: prev hash does not match the previous entry (chain broken)")
        if e.get("hash") != entry_hash(e):
            problems.append(f"{where}: entry hash mismatch (entry modified)")
        prev = e.get("hash")
        t = e.get("type")
        if t == "round":
            problems.extend(_check_round(e, where))
            rounds.append(e)
        elif t == "header" and i == 0:
            try:
                PrivacyBudget(**e["budget"])
                Neighbouring(e.get("neighbouring", "add_remove"))
            except (KeyError, TypeError, ValueError) as ex:
                problems.append(f"{where}: bad header ({ex})")
        elif t != "recovery":
            problems.append(f"{where}: unexpected entry type {t!r}")
    idx = [r.get("round_index") for r in rounds]
    if len(set(idx)) != len(idx):
        problems.append("round_index values repeat (a round was recorded twice)")
    return LedgerContents(p, entries[0], rounds, entries, torn, torn_offset, problems)


def _append_line(path: Path, entry: dict) -> None:
    line = canonical(entry) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        n = os.write(fd, line)
        if n != len(line):
            raise OSError(f"short write to ledger {path}: {n} of {len(line)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path.parent if str(path.parent) else ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: Accountants whose epsilon is a certified upper bound; only these may guard a budget.
#: (``opacus-gdp`` is a central-limit approximation that can underestimate epsilon.)
CERTIFIED_ACCOUNTANTS: tuple[str, ...] = ("dpa-rdp", "dpa-pld", "opacus-rdp", "opacus-prv")


def check_guard_accountant(name: str, param: str = "accountant") -> str:
    """Validate the budget guard's accountant: a certified upper bound, else :class:`ConfigError`."""
    if name not in CERTIFIED_ACCOUNTANTS:
        acc.get_accountant(name)  # an unknown name gets the registry's message
        raise ConfigError(f"{param} must be one of {list(CERTIFIED_ACCOUNTANTS)} (certified upper bounds) for a "
                          f"ledger / budget guard, got {name!r}, which is not a certified upper bound (opacus-gdp is a "
                          f"central-limit approximation that can underestimate epsilon); use it only for side-by-side reports")
    return name


class PrivacyLedger:
    """Writer for one run's ledger. Use :meth:`create` for a new run, :meth:`open` to resume."""

    def __init__(self, contents: LedgerContents, accountant: str) -> None:
        self._c = contents
        self.path = contents.path
        self.accountant = check_guard_accountant(accountant)

    # ----------------------------------------------------------------- construction
    @classmethod
    def create(cls, path: str | os.PathLike, budget: PrivacyBudget, *, run_id: str | None = None,
               neighbouring: Neighbouring | str = Neighbouring.ADD_REMOVE,
               accountant: str = acc.DEFAULT_ACCOUNTANT, metadata: dict | None = None) -> "PrivacyLedger":
        """Start a new ledger; refuses to overwrite an existing file."""
        p = Path(path)
        if not isinstance(budget, PrivacyBudget):
            raise ConfigError(f"budget must be a PrivacyBudget, got {type(budget).__name__}")
        check_guard_accountant(accountant)
        try:
            nb = Neighbouring(neighbouring)
        except ValueError:
            raise ConfigError(f"neighbouring must be one of {[n.value for n in Neighbouring]}, got {neighbouring!r}") from None
        header = {
            "type": "header", "seq": 0, "version": LEDGER_VERSION, "prev": GENESIS,
            "run_id": run_id or uuid.uuid4().hex, "created": time.time(),
            "budget": {"epsilon": budget.epsilon, "delta": budget.delta},
            "neighbouring": nb.value, "accountant": accountant, "metadata": metadata or {},
        }
        header["hash"] = entry_hash(header)
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise ConfigError(f"ledger {p} already exists; use PrivacyLedger.open to resume it") from None
        try:
            os.write(fd, canonical(header) + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(p)
        return cls(LedgerContents(p, header, [], [header]), accountant)

    @classmethod
    def open(cls, path: str | os.PathLike, *, accountant: str | None = None) -> "PrivacyLedger":
        """Resume a ledger: verify it, cut a torn last line (recording a ``recovery`` entry),
        and continue its chain. Raises :class:`LedgerIntegrityError` if it was tampered with."""
        c = read_ledger(path)
        if c.problems:
            raise LedgerIntegrityError(f"ledger {c.path} failed verification: " + "; ".join(c.problems))
        self = cls(c, accountant or c.header.get("accountant", acc.DEFAULT_ACCOUNTANT))
        if c.torn_tail is not None:
            torn = c.torn_tail
            with open(c.path, "r+b") as f:
                f.truncate(c.torn_offset)
                f.flush()
                os.fsync(f.fileno())
            self._append({"type": "recovery", "time": time.time(), "discarded_bytes": len(torn),
                          "discarded_sha256": hashlib.sha256(torn).hexdigest(),
                          "note": "torn last line from an interrupted write; that round was never released"})
            self._c.torn_tail = None
            self._c.torn_offset = None
        return self

    # ----------------------------------------------------------------- accessors
    @property
    def budget(self) -> PrivacyBudget:
        return self._c.budget

    @property
    def neighbouring(self) -> Neighbouring:
        return self._c.neighbouring

    @property
    def head(self) -> str:
        return self._c.head

    @property
    def run_id(self) -> str:
        return self._c.header["run_id"]

    @property
    def events(self) -> list[RoundEvent]:
        return self._c.events

    @property
    def rounds(self) -> list[dict]:
        return list(self._c.rounds)

    @property
    def next_round_index(self) -> int:
        return 1 + max((r["round_index"] for r in self._c.rounds), default=-1)

    def spent_epsilon(self, extra: Sequence[RoundEvent] = (), accountant: str | None = None) -> float:
        """Population-level epsilon at the budget's delta (optionally with ``extra`` events)."""
        evs = compress(self.events + list(extra))
        return acc.population_epsilon(evs, self.budget.delta, self.neighbouring, accountant or self.accountant)

    def client_epsilons(self) -> dict[int, float]:
        pop = self.spent_epsilon()
        return acc.client_epsilons(self.events, self._c.participants, self.budget.delta, self.neighbouring, pop)

    # ----------------------------------------------------------------- writing
    def _append(self, body: dict) -> dict:
        entry = dict(body)
        entry["seq"] = len(self._c.entries)
        entry["prev"] = self.head
        entry["hash"] = entry_hash(entry)
        _append_line(self.path, entry)
        self._c.entries.append(entry)
        if entry["type"] == "round":
            self._c.rounds.append(entry)
        return entry

    def check_round(self, event: RoundEvent) -> float:
        """Budget guard: the epsilon after ``event``; raises :class:`PrivacyBudgetExceeded` if over budget."""
        after = self.spent_epsilon([event])
        if after > self.budget.epsilon:
            before = self.spent_epsilon()
            raise PrivacyBudgetExceeded(
                f"refusing to start round {self.next_round_index}: it would raise the spent epsilon from "
                f"{before:.4g} to {after:.4g} (accountant {self.accountant}, delta={self.budget.delta:g}), "
                f"over the budget epsilon={self.budget.epsilon:g}. Stop training, or start a new run with a "
                f"larger budget / more noise / lower sampling rate.")
        return after

    def record_round(self, round_index: int, event: RoundEvent, participants: Iterable[int], *, clip_norm: float,
                     mechanism: str, extra: dict | None = None, check_budget: bool = True) -> dict:
        """Append one round (after the budget guard); returns the written entry.

        Call it after computing the noisy aggregate and *before* releasing it."""
        if not isinstance(round_index, int) or round_index < 0:
            raise ConfigError(f"round_index must be an int >= 0, got {round_index!r}")
        if any(r["round_index"] == round_index for r in self._c.rounds):
            raise ConfigError(f"round_index {round_index} is already in the ledger")
        parts = sorted(int(p) for p in participants)
        d = event.to_dict()
        body = {
            "type": "round", "round_index": round_index, "time": time.time(), "mechanism": str(mechanism),
            "event": d, "sampling_rate": d["sampling_rate"], "noise_multiplier": d.get("noise_multiplier"),
            "clip_norm": float(clip_norm), "participants": parts, "delta": self.budget.delta,
            "extra": extra or {},
        }
        probs = _check_round(body, f"round {round_index}")
        if probs:
            raise ConfigError("; ".join(probs))
        if check_budget:
            body["epsilon_after"] = self.check_round(event)
        return self._append(body)


__all__ = ["PrivacyLedger", "PrivacyBudget", "PrivacyBudgetExceeded", "LedgerIntegrityError", "read_ledger",
           "LedgerContents", "entry_hash", "CERTIFIED_ACCOUNTANTS", "check_guard_accountant"]
