"""Does bfloat16 keep calibration? The Probabilistic U-Net in float32 against `mixed_bfloat16`,
trained on the same machine with the same recipe, step budget, data and seeds, seed by seed:
GED(16), and on *flips* the mode-frequency r and the modes found, with the criterion issue 29
set (r >= 0.9 on every seed, GED(16) no higher than the float32 seeds' highest). The runs of the
published comparisons (float32, trained on another machine) are listed beside them. Reads the
run reports that `bench/compare.py --publish` copies (docs/results/bf16/<dataset>,
docs/results/bf16/float32-<dataset>, docs/results/<dataset>); prints JSON, and with
`--markdown` the table of docs/results/bf16/README.md.

    python bench/precision_study.py [--markdown]
"""

import argparse
import glob
import json
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDERS = {"float32": "docs/results/bf16/float32-{dataset}",
           "mixed_bfloat16": "docs/results/bf16/{dataset}",
           "float32, published comparison": "docs/results/{dataset}"}
DATASETS = ("flips", "graders")
MODEL = "probunet"


def runs(folder):
    """`{seed: report}` of the Probabilistic U-Net's published runs in `folder`."""
    found = {}
    for path in glob.glob(os.path.join(ROOT, folder, "runs", f"{MODEL}-seed*", "evaluation",
                                       "report.json")):
        seed = int(re.search(r"seed(\d+)", path).group(1))
        with open(path) as f:
            found[seed] = json.load(f)
    return dict(sorted(found.items()))


def summary():
    result = {}
    for dataset in DATASETS:
        entry = {}
        for policy, folder in FOLDERS.items():
            entry[policy] = {
                seed: {"ged_16": round(report["ged"]["16"]["mean"], 4),
                       **({"pearson_r": round(report["modes"]["pearson_r"], 3),
                           "modes_found": report["modes"]["modes_found"]}
                          if report.get("modes") else {}),
                       "train_seconds": report.get("train_seconds")}
                for seed, report in runs(folder.format(dataset=dataset)).items()}
        reference = [run["ged_16"] for run in entry["float32"].values()]
        low, high = min(reference), max(reference)
        verdicts = {}
        for seed, run in entry["mixed_bfloat16"].items():
            ged_ok = run["ged_16"] <= high  # lower than float32's seeds is no loss
            r_ok = run.get("pearson_r", 1.0) >= 0.9
            verdicts[seed] = {"ged_within_float32_range": ged_ok, "r_at_least_0.9": r_ok}
        entry["float32_ged_16_range"] = [low, high]
        entry["bfloat16_verdicts"] = verdicts
        entry["holds"] = all(all(v.values()) for v in verdicts.values())
        result[dataset] = entry
    result["holds"] = all(result[d]["holds"] for d in DATASETS)
    return result


def markdown(result):
    lines = ["| dataset | precision | seed | GED(16) | mode r | modes found | holds |",
             "|---|---|---|---|---|---|---|"]
    for dataset in DATASETS:
        for policy in FOLDERS:
            for seed, run in result[dataset][policy].items():
                verdict = result[dataset]["bfloat16_verdicts"].get(seed) \
                    if policy == "mixed_bfloat16" else None
                holds = "" if verdict is None else ("yes" if all(verdict.values()) else "**no**")
                lines.append(f"| {dataset} | {policy} | {seed} | {run['ged_16']:.4f} | "
                             f"{run.get('pearson_r', '')} | {run.get('modes_found', '')} | "
                             f"{holds} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    result = summary()
    print(markdown(result) if args.markdown else json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
