"""The always-valid test's false-positive rate with equal arms, watched after every outcome: the
variance of the difference from the arms' own rates (before 2026-12-03) against the pooled rate
under the null (service/stats.py now), at equal and unequal shares and two mixing taus.

    .venv/bin/python benchmarks/always_valid.py --paths 2000 --outcomes 1600

Each path draws ``--outcomes`` outcomes, each on the challenger with probability ``share`` and
correct with probability ``--accuracy`` on both arms (no difference), and counts whether its
always-valid p-value ever reached alpha (and in which direction: a false "better" is what would
promote a rollout's challenger). Seeded; prints a table and writes always_valid.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.stats import always_valid_p_values, msprt_likelihood_ratio  # noqa: E402


def own_rates_path(counts: np.ndarray, tau: float) -> np.ndarray:
    """The path as it was computed before: each arm's variance from its own rate."""
    s_a, n_a, s_b, n_b = counts.T.astype(float)
    both = (n_a > 0) & (n_b > 0)
    n_a, n_b = np.where(both, n_a, 1.0), np.where(both, n_b, 1.0)
    r_a, r_b = (s_a + 0.5) / (n_a + 1), (s_b + 0.5) / (n_b + 1)
    variance = r_a * (1 - r_a) / n_a + r_b * (1 - r_b) / n_b
    ratio = msprt_likelihood_ratio(s_b / n_b - s_a / n_a, variance, tau)
    return np.minimum.accumulate(np.where(both, 1.0 / ratio, 1.0))


def false_positives(
    share: float, tau: float, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    found = {"own rates": [0, 0], "pooled (now)": [0, 0]}  # [crossed, crossed as "better"]
    for _ in range(args.paths):
        on_b = rng.random(args.outcomes) < share
        correct = rng.random(args.outcomes) < args.accuracy
        counts = np.stack([np.cumsum(~on_b & correct), np.cumsum(~on_b),
                           np.cumsum(on_b & correct), np.cumsum(on_b)], axis=1)  # fmt: skip
        n_a, n_b = np.maximum(counts[:, 1], 1), np.maximum(counts[:, 3], 1)
        difference = counts[:, 2] / n_b - counts[:, 0] / n_a
        paths = {"own rates": own_rates_path(counts, tau),
                 "pooled (now)": np.asarray(always_valid_p_values(counts, tau))}  # fmt: skip
        for name, path in paths.items():
            hits = np.nonzero(path <= args.alpha)[0]
            if len(hits):
                found[name][0] += 1
                found[name][1] += int(difference[hits[0]] > 0)
    return {name: {"crossed": c / args.paths, "false_better": b / args.paths}
            for name, (c, b) in found.items()}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=2000)
    parser.add_argument("--outcomes", type=int, default=1600)
    parser.add_argument("--accuracy", type=float, default=0.8)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--out", default="artifacts/benchmarks/always_valid.json")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    rows = []
    print(f"{args.paths} equal-arm paths of {args.outcomes} outcomes, accuracy {args.accuracy} "
          f"on both arms, alpha {args.alpha}")  # fmt: skip
    print(f"{'share':>6} {'tau':>5}  {'variance':<13} {'crossed':>8} {'false better':>13}")
    for share in (0.5, 0.2):
        for tau in (0.05, 0.2):
            for name, rates in false_positives(share, tau, args, rng).items():
                rows.append({"share": share, "tau": tau, "variance": name, **rates})
                print(f"{share:>6g} {tau:>5g}  {name:<13} {rates['crossed']:>8.2%} "
                      f"{rates['false_better']:>13.2%}")  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
