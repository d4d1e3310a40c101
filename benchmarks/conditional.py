"""Does the conditional quickstart draw the class it is asked for?

Trains ``recipes/quickstart_conditional.toml`` (timed, whole process), samples ``--per-class``
images of every class from its export, and has the digits classifier (the ``digits`` feature
extractor's CNN, trained here on 80% of the digits; its held-out accuracy is printed) label
them. Prints per-class accuracy (the target: ≥ 90% for every class), the confusion counts, and
digits-FD / digits-IS of the samples beside the held-out real digits.

    python benchmarks/conditional.py                    # about 5 minutes on 2 CPU cores
    python benchmarks/conditional.py --steps 200        # smoke run
    python benchmarks/conditional.py --skip-train       # rescore an existing run
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import ROOT, digits_evaluation, export_features, run_ganforge  # noqa: E402

from ganforge.evaluation import table  # noqa: E402
from ganforge.export import generate, load_generator  # noqa: E402
from ganforge_plugins.digits import train_digits_classifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="recipe overrides")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_conditional")
    parser.add_argument("--steps", type=int, help="train.steps (smoke runs)")
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = out / "run"
    overrides = args.overrides + ([f"train.steps={args.steps}"] if args.steps else [])
    if not args.skip_train:
        trained = run_ganforge(run, overrides, "recipes/quickstart_conditional.toml")
        print(f"trained: {trained}", flush=True)

    classifier, accuracy = train_digits_classifier()
    print(f"judge: digits CNN, held-out accuracy {accuracy:.4f}")
    generator, info = load_generator(run / "generator.safetensors")
    k, n = info.num_classes, args.per_class
    labels = torch.arange(k).repeat_interleave(n)
    with torch.no_grad():
        images = generate(generator, info, k * n, seed=0, labels=labels)
        predicted = torch.cat([classifier(part)[1].argmax(1) for part in images.split(250)])
    confusion = torch.zeros(k, k, dtype=torch.long)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    per_class = (confusion.diag().float() / n).tolist()

    print("\n| class | accuracy | most common other label |")
    print("|---|---:|---|")
    for c in range(k):
        others = confusion[c].clone()
        others[c] = 0
        top = int(others.argmax())
        note = f"{top} ({int(others[top])})" if others[top] else "-"
        print(f"| {c} | {per_class[c]:.2f} | {note} |")
    print(f"\nmean {sum(per_class) / k:.3f}, worst {min(per_class):.2f}")

    evaluation = digits_evaluation(1000)
    with torch.no_grad():
        results = {
            "real (held out)": evaluation.held_out,
            "conditional quickstart": export_features(
                evaluation, run / "generator.safetensors", 1000
            ),
        }
    scores = {name: evaluation.score(features) for name, features in results.items()}
    print(table(scores))
    (out / "results.json").write_text(
        json.dumps(
            {
                "judge_accuracy": accuracy,
                "per_class_accuracy": per_class,
                "confusion": confusion.tolist(),
                "metrics": scores,
            }
        )
    )


if __name__ == "__main__":
    main()
