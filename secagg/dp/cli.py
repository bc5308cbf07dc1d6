"""``secagg privacy`` subcommands: ``audit`` a ledger and ``calibrate`` noise.

``secagg privacy audit LEDGER [--json] [--accountants a,b] [--rounds-expected N] [--anchor HASH]``
verifies the hash chain and the consistency of every entry, then prints the spent
epsilon of the recorded history by every accountant side by side, per-client
(participation-aware) epsilon percentiles, the remaining budget and the head hash to
anchor. Exit status: 0 = intact (a torn last line from a crash is reported, not an error),
2 = tampered or inconsistent, over budget (by the guard's accountant or by *any* certified
upper-bound accountant in the table: dpa-rdp, dpa-pld, opacus-rdp, opacus-prv), a guard
accountant that is not a certified upper bound (opacus-gdp), or not matching
``--rounds-expected`` / ``--anchor``.

``secagg privacy calibrate --epsilon E --delta D --rounds T --sampling-rate Q [--accountant A]``
prints the noise multiplier that meets (E, D) for T Poisson-sampled rounds.

The lead wires :func:`register` into ``secagg/cli.py``; ``python -m secagg.dp.cli`` runs it alone.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from secagg.dp import accountants as acc
from secagg.dp.calibrate import calibrate_noise_multiplier
from secagg.dp.events import compress
from secagg.dp.ledger import CERTIFIED_ACCOUNTANTS, read_ledger
from secagg.errors import SecaggError

EXIT_OK, EXIT_BAD = 0, 2


def audit(path: str, accountants: list[str] | None = None, rounds_expected: int | None = None,
          anchor: str | None = None) -> dict[str, Any]:
    """The audit report of one ledger as a JSON-able dict (``ok`` False -> exit status 2)."""
    c = read_ledger(path)
    problems = list(c.problems)
    if rounds_expected is not None and len(c.rounds) != rounds_expected:
        problems.append(f"ledger has {len(c.rounds)} rounds, expected {rounds_expected} (rounds removed or missing)")
    if anchor is not None and anchor not in {e.get("hash") for e in c.entries}:
        problems.append(f"anchored hash {anchor[:16]}... is not in the chain (ledger rewritten)")
    report: dict[str, Any] = {
        "ledger": str(c.path), "run_id": c.header.get("run_id"), "rounds": len(c.rounds),
        "head": c.head, "torn_tail_bytes": len(c.torn_tail) if c.torn_tail is not None else 0,
        "problems": problems,
    }
    if c.problems:  # do not account a ledger whose entries cannot be trusted
        report["ok"] = False
        return report
    budget = c.budget
    events = compress(c.events)
    report["budget"] = {"epsilon": budget.epsilon, "delta": budget.delta}
    report["neighbouring"] = c.neighbouring.value
    report["ledger_accountant"] = c.header.get("accountant", acc.DEFAULT_ACCOUNTANT)
    table = acc.epsilon_table(events, budget.delta, c.neighbouring, accountants)
    report["epsilon_by_accountant"] = table
    guard = report["ledger_accountant"]
    if guard not in CERTIFIED_ACCOUNTANTS:
        problems.append(f"the ledger's budget guard used {guard!r}, which is not a certified upper bound (allowed: "
                        f"{list(CERTIFIED_ACCOUNTANTS)}); spent epsilon is reported by {acc.DEFAULT_ACCOUNTANT}")
        guard = acc.DEFAULT_ACCOUNTANT
        report["spent_accountant"] = guard
    spent = acc.population_epsilon(events, budget.delta, c.neighbouring, guard) if events else 0.0
    report["spent_epsilon"] = spent
    report["remaining_epsilon"] = budget.epsilon - spent
    per_client = acc.client_epsilons(c.events, c.participants, budget.delta, c.neighbouring, spent)
    report["clients"] = len(per_client)
    report["client_epsilon_percentiles"] = acc.percentiles(per_client)
    if spent > budget.epsilon * (1 + 1e-9):
        problems.append(f"spent epsilon {spent:.6g} exceeds the budget {budget.epsilon:g}")
    for name, v in table.items():  # any certified upper bound over budget means the guarantee is not shown
        if name in CERTIFIED_ACCOUNTANTS and isinstance(v, float) and v > budget.epsilon * (1 + 1e-9):
            problems.append(f"epsilon by {name} ({v:.6g}, a certified upper bound) exceeds the budget {budget.epsilon:g}")
    report["ok"] = not problems
    return report


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _print_report(r: dict[str, Any]) -> None:
    print(f"ledger      {r['ledger']}  (run {r['run_id']})")
    print(f"rounds      {r['rounds']}")
    print(f"head hash   {r['head']}  (anchor this value elsewhere)")
    if r["torn_tail_bytes"]:
        print(f"note        torn last line ({r['torn_tail_bytes']} bytes) from an interrupted write; "
              "that round was never released. Resuming the run truncates it.")
    if "budget" in r:
        b = r["budget"]
        print(f"budget      epsilon={b['epsilon']:g} delta={b['delta']:g}  neighbouring={r['neighbouring']}")
        print("spent epsilon by accountant (same history):")
        for name, v in r["epsilon_by_accountant"].items():
            print(f"  {name:<12} {_fmt(v)}")
        by = r.get("spent_accountant", r["ledger_accountant"])
        print(f"spent       {_fmt(r['spent_epsilon'])}  (by {by}, the budget guard's accountant)")
        print(f"remaining   {_fmt(r['remaining_epsilon'])}")
        pc = r["client_epsilon_percentiles"]
        print(f"clients     {r['clients']}  per-client epsilon " + "  ".join(f"{k}={_fmt(v)}" for k, v in pc.items()))
    for p in r["problems"]:
        print(f"PROBLEM     {p}")
    print("status      " + ("OK" if r["ok"] else "FAILED"))


def _cmd_audit(args: argparse.Namespace) -> int:
    try:
        names = args.accountants.split(",") if args.accountants else None
        r = audit(args.ledger, names, args.rounds_expected, args.anchor)
    except SecaggError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD
    if args.json:
        print(json.dumps(r, indent=2, default=str))
    else:
        _print_report(r)
    return EXIT_OK if r["ok"] else EXIT_BAD


def _cmd_calibrate(args: argparse.Namespace) -> int:
    try:
        res = calibrate_noise_multiplier(args.epsilon, args.delta, args.rounds, args.sampling_rate, args.accountant)
    except SecaggError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD
    d = res.__dict__
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(f"noise multiplier {res.noise_multiplier:.6g} gives epsilon={res.achieved_epsilon:.6g} "
              f"(target {res.target_epsilon:g}) at delta={res.delta:g} after {res.rounds} rounds "
              f"at sampling rate {res.sampling_rate:g} ({res.accountant}, Poisson sampling, add/remove)")
    return EXIT_OK


def register(subparsers: "argparse._SubParsersAction") -> argparse.ArgumentParser:
    """Add the ``privacy`` subcommand (with ``audit`` and ``calibrate``) to ``subparsers``."""
    p = subparsers.add_parser("privacy", help="audit privacy ledgers and plan DP noise")
    sub = p.add_subparsers(dest="privacy_command", required=True)
    a = sub.add_parser("audit", help="verify a privacy ledger and report the spent epsilon")
    a.add_argument("ledger")
    a.add_argument("--json", action="store_true", help="machine-readable output")
    a.add_argument("--accountants", help=f"comma-separated subset of {acc.accountant_names()}")
    a.add_argument("--rounds-expected", type=int, help="fail unless the ledger has exactly this many rounds")
    a.add_argument("--anchor", help="a head hash recorded earlier; fail unless it is in the chain")
    a.set_defaults(func=_cmd_audit)
    c = sub.add_parser("calibrate", help="noise multiplier for a target (epsilon, delta)")
    c.add_argument("--epsilon", type=float, required=True)
    c.add_argument("--delta", type=float, required=True)
    c.add_argument("--rounds", type=int, required=True)
    c.add_argument("--sampling-rate", type=float, required=True)
    c.add_argument("--accountant", default=acc.DEFAULT_ACCOUNTANT, choices=acc.accountant_names())
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_calibrate)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="secagg")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
