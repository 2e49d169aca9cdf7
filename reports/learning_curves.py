"""Draw reports/learning-curves.png from reports/learning-curves.json.

`python reports/learning_curves.py` (from the repository root; needs matplotlib, in the `train`
extra). The points are the recorded ones; nothing is recomputed here.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after the backend is chosen

HERE = Path(__file__).resolve().parent


def main() -> None:
    data = json.loads((HERE / "learning-curves.json").read_text(encoding="utf-8"))
    fig, (sst2, snli, mt) = plt.subplots(1, 3, figsize=(15, 4.2))

    steps, accuracy = zip(*data["sst2_run2_dev_accuracy"]["points"], strict=True)
    sst2.plot(steps, accuracy, marker="o")
    sst2.axhline(0.90, color="grey", linestyle="--", label="target 0.90")
    sst2.axvline(2105, color="grey", linestyle=":", label="end of epoch 1")
    sst2.set(title="SST-2 run 2: dev accuracy", xlabel="optimizer step", ylabel="accuracy")
    sst2.legend(loc="lower right")

    pairs, accuracy = zip(*data["snli_dev_accuracy_by_train_pairs"]["points"], strict=True)
    snli.plot(pairs, accuracy, marker="o")
    snli.axhline(0.85, color="grey", linestyle="--", label="target 0.85")
    snli.set_xscale("log", base=2)
    snli.set_xticks(pairs, [f"{p:,}" for p in pairs])
    snli.set(title="SNLI: dev accuracy by train pairs", xlabel="train pairs (log scale)")
    snli.legend(loc="lower right")

    bleu = data["multi30k_dev_bleu_greedy"]
    epochs, scores = zip(*bleu["stage1"], strict=True)
    mt.plot(epochs, scores, marker="o", label="stage 1")
    offset = len(bleu["stage1"])  # stage 2 continues stage 1's last checkpoint
    epochs, scores = zip(*bleu["stage2"], strict=True)
    mt.plot([offset + e for e in epochs], scores, marker="o", label="stage 2 (--init stage 1)")
    mt.axhline(35, color="grey", linestyle="--", label="target 35")
    mt.set(title="Multi30k en-de: dev BLEU (greedy)", xlabel="epoch", ylabel="BLEU")
    mt.legend(loc="lower right")

    fig.tight_layout()
    fig.savefig(HERE / "learning-curves.png", dpi=90)


if __name__ == "__main__":
    main()
