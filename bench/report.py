"""Ratios of a bench/run.sh run: per round, per pair of measurements, and their medians.

    python3 bench/report.py OUT_DIR [--strict]

OUT_DIR holds what run.sh wrote:
- results.tsv: one line per wrk measurement: label, app, endpoint, req/s, p50 ms,
  p99 ms, errors (the floor's wrk_measure writes it); the label is "round<N>.<scenario>",
  as the floor is measured again in each scenario, right before Keel;
- pairs.tsv: one line per compared pair: scenario, server, target (the least ratio of
  req/s, or -), p99 limit (the most ratio of p99s, or -), then the denominator's app and
  endpoint (the floor, or idle Keel) and the numerator's (Keel);
- extras.tsv: label, scenario, server, a note to print under that round (412s, logins/s).

Prints a table per pair and a summary; exits 1 with --strict when a median misses its
target. Standard library only: it runs under any python3.
"""

from __future__ import annotations

import csv
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

CLEAN = "non2xx=0;sock=0"


@dataclass(frozen=True)
class Pair:
    scenario: str
    server: str
    target: float | None
    p99_limit: float | None
    den_app: str
    den_ep: str
    num_app: str
    num_ep: str


@dataclass
class Verdict:
    ratio: float | None
    p99_ratio: float | None
    met: bool | None  # None: no target


def _print(line: str = "") -> None:
    sys.stdout.write(line + "\n")


def _rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return [row for row in csv.reader(f, delimiter="\t") if row]


def _num(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def _limit(value: str) -> float | None:
    return None if value == "-" else float(value)


def _ratio(num: str, den: str) -> float | None:
    n, d = _num(num), _num(den)
    return n / d if n is not None and d else None


def _fmt(value: float | None) -> str:
    return "NA" if value is None else f"{value:.2f}"


def _round_no(label: str) -> int:
    digits = "".join(c for c in label if c.isdigit())
    return int(digits) if digits else 0


def _show(
    pair: Pair,
    by: dict[tuple[str, str, str], list[str]],
    rounds: list[str],
    extras: dict[tuple[str, str, str], list[str]],
) -> Verdict:
    _print(
        f"\n### {pair.scenario} [{pair.server}]: {pair.num_app} {pair.num_ep} "
        f"vs {pair.den_app} {pair.den_ep}"
    )
    _print(
        f"{'round':<8} {'den req/s':>11} {'num req/s':>11} {'den p50':>9} {'num p50':>9} "
        f"{'den p99':>9} {'num p99':>9} {'rps ratio':>10} {'p50 ratio':>10} {'p99 ratio':>10}"
    )
    rps, p50s, p99s = [], [], []
    for round_name in rounds:
        label = f"{round_name}.{pair.scenario}"
        den, num = (
            by.get((label, pair.den_app, pair.den_ep)),
            by.get((label, pair.num_app, pair.num_ep)),
        )
        if den and num:
            r, p50, p99 = _ratio(num[0], den[0]), _ratio(num[1], den[1]), _ratio(num[2], den[2])
            for value, bucket in ((r, rps), (p50, p50s), (p99, p99s)):
                if value is not None:
                    bucket.append(value)
            _print(
                f"{round_name:<8} {den[0]:>11} {num[0]:>11} {den[1]:>9} {num[1]:>9} {den[2]:>9} "
                f"{num[2]:>9} {_fmt(r):>10} {_fmt(p50):>10} {_fmt(p99):>10}"
            )
            for who, m in ((pair.den_app, den), (pair.num_app, num)):
                if m[3] != CLEAN:
                    _print(f"         ! {who} errors in {round_name}: {m[3]}")
        for note in extras.get((label, pair.scenario, pair.server), []):
            _print(f"         {round_name}: {note}")
    if not rps:
        _print(f"ratio: NA (no complete round) [{pair.scenario}, {pair.server}]")
        return Verdict(None, None, met=False if pair.target is not None else None)
    ratio = statistics.median(rps)
    p99_ratio = statistics.median(p99s) if p99s else None
    checks, met = [], None
    if pair.target is not None:
        met = ratio >= pair.target
        checks.append(f"target >= {pair.target:g}")
    if pair.p99_limit is not None:
        p99_ok = p99_ratio is not None and p99_ratio <= pair.p99_limit
        met = p99_ok if met is None else (met and p99_ok)
        checks.append(f"p99 ratio <= {pair.p99_limit:g}")
    verdict = (
        "no target set"
        if met is None
        else (", ".join(checks) + (": meets target" if met else ": BELOW target"))
    )
    _print(
        f"ratio {pair.num_ep} vs {pair.den_app} {pair.den_ep}: {ratio:.2f} ({verdict}; "
        f"median of {len(rps)} rounds, range {min(rps):.2f}-{max(rps):.2f}); latency "
        f"ratios (lower is better): p50 {_fmt(statistics.median(p50s) if p50s else None)}, "
        f"p99 {_fmt(p99_ratio)}"
    )
    return Verdict(ratio, p99_ratio, met)


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write(__doc__ or "")
        return 2
    out, strict = Path(argv[0]), "--strict" in argv[1:]
    results = _rows(out / "results.tsv")
    by = {(r[0], r[1], r[2]): r[3:7] for r in results if len(r) >= 7}
    rounds = sorted({r[0].split(".")[0] for r in results}, key=_round_no)
    pairs = [
        Pair(p[0], p[1], _limit(p[2]), _limit(p[3]), p[4], p[5], p[6], p[7])
        for p in _rows(out / "pairs.tsv")
    ]
    extras: dict[tuple[str, str, str], list[str]] = {}
    for e in _rows(out / "extras.tsv"):
        extras.setdefault((e[0], e[1], e[2]), []).append(e[3])

    _print(
        "\n## ratios (numerator / denominator; req/s higher is better, latencies lower is better)"
    )
    verdicts = {pair: _show(pair, by, rounds, extras) for pair in pairs}

    servers = list(dict.fromkeys(p.server for p in pairs))
    scenarios = list(dict.fromkeys(p.scenario for p in pairs))
    _print(
        "\n## summary: median req/s ratio per scenario"
        + (" and server" if len(servers) > 1 else "")
        + " (p99 ratio where a p99 limit is set; * = below target)"
    )
    _print(f"{'scenario':<22} {'target':<18} " + " ".join(f"{s:>14}" for s in servers))
    missed = False
    for scenario in scenarios:
        row, target_text = [], ""
        for server in servers:
            pair = next((p for p in pairs if p.scenario == scenario and p.server == server), None)
            if pair is None:
                row.append(f"{'-':>14}")
                continue
            v = verdicts[pair]
            parts = [f">= {pair.target:g}"] if pair.target is not None else ["reference"]
            if pair.p99_limit is not None:
                parts.append(f"p99 <= {pair.p99_limit:g}x")
            target_text = ", ".join(parts)
            cell = _fmt(v.ratio) + (
                f" p99 {_fmt(v.p99_ratio)}x" if pair.p99_limit is not None else ""
            )
            if v.met is False:
                cell += "*"
                missed = True
            row.append(f"{cell:>14}")
        _print(f"{scenario:<22} {target_text:<18} " + " ".join(row))
    return 1 if (missed and strict) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
