"""A sentence-pair task built offline from AG News, for trying `data.text_pair`: two news texts, label `same` when
they are of the same topic, else `different` (balanced). Writes train.csv / test.csv with text, text_pair, label;
train pairs come from AG News train, test pairs from its test split. Derived data: not committed.

    python benchmarks/make_agnews_pairs.py --source data/raw/ag_news --out data/raw/agnews_pairs
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd


def pairs(df: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    by_label = {k: g["text"].to_numpy() for k, g in df.groupby("label")}
    labels = list(by_label)
    rows = []
    for i in range(n):
        a_label = labels[rng.integers(len(labels))]
        same = i % 2 == 0
        b_label = a_label if same else labels[(labels.index(a_label) + rng.integers(1, len(labels))) % len(labels)]
        rows.append({"text": rng.choice(by_label[a_label]), "text_pair": rng.choice(by_label[b_label]),
                     "label": "same" if same else "different"})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=int(rng.integers(1 << 31))).reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="data/raw/ag_news", help="folder with AG News train.csv / test.csv (text, label)")
    parser.add_argument("--out", default="data/raw/agnews_pairs", help="output folder")
    parser.add_argument("--train-pairs", type=int, default=6000)
    parser.add_argument("--test-pairs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", args.train_pairs), ("test", args.test_pairs)):
        pairs(pd.read_csv(Path(args.source) / f"{split}.csv"), n, rng).to_csv(out / f"{split}.csv", index=False)
        print(f"{out / split}.csv: {n} pairs")


if __name__ == "__main__":
    main()
