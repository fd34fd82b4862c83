"""The tally of bad-input property cases (tests/property/conftest.py counts them), printed at the
end of the session. Under pytest-xdist each worker hands its counts to the controller, which
prints the sum (tests/conftest.py wires the hooks)."""

from __future__ import annotations

from collections import Counter, defaultdict

# (rpc, backend) -> outcome (status code name or OK) -> number of cases
TALLY: defaultdict[tuple[str, str], Counter[str]] = defaultdict(Counter)
FAILED: Counter[str] = Counter()  # rpc -> cases that failed a check
CASES_PER_DATABASE = 3000  # the floor the max_examples of the properties are sized for


def exported() -> dict:
    """This process's counts, as an xdist worker sends them (plain JSON-able data)."""
    return {
        "tally": [[rpc, backend, dict(outcomes)] for (rpc, backend), outcomes in TALLY.items()],
        "failed": dict(FAILED),
    }


def merge(counts: dict) -> None:
    for rpc, backend, outcomes in counts.get("tally", []):
        TALLY[(rpc, backend)].update(outcomes)
    FAILED.update(counts.get("failed", {}))


def summary(write) -> None:
    """Writes the per-RPC and per-database counts (nothing when no case ran)."""
    if not TALLY:
        return
    per_rpc: defaultdict[str, Counter[str]] = defaultdict(Counter)
    per_backend: Counter[str] = Counter()
    for (rpc, backend), outcomes in TALLY.items():
        per_rpc[rpc].update(outcomes)
        per_backend[backend] += sum(outcomes.values())
    total = sum(per_backend.values())
    write(
        "property cases run: "
        + ", ".join(f"{rpc} {sum(per_rpc[rpc].values())}" for rpc in sorted(per_rpc))
        + f", total {total}"
    )
    write(
        "  per database: "
        + ", ".join(f"{b} {n}" for b, n in sorted(per_backend.items()))
        + f" (the whole suite must run at least {CASES_PER_DATABASE:,} each: issue 9)"
    )
    width = max(map(len, per_rpc))
    for rpc in sorted(per_rpc):
        outcomes = ", ".join(f"{code} {n}" for code, n in per_rpc[rpc].most_common())
        write(f"  {rpc:<{width}} {sum(per_rpc[rpc].values()):>5}  ({outcomes})")
    if FAILED:
        write(
            f"  cases that failed a check: {sum(FAILED.values())} ("
            + ", ".join(f"{rpc} {n}" for rpc, n in sorted(FAILED.items()))
            + "); each is a test failure above"
        )
