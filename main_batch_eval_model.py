"""Evaluate every checkpoint of a single-scene run (any single-scene model): a CSV and an HTML report.

    python main_batch_eval_model.py hyperpose test <backbone> <dataset_root> <test.csv> <config.json> \
        ./models/run_<stamp> --output_path ./evals/hyperpose_7scenes_evals

Re-running evaluates only checkpoints added (or changed) since the last run. See docs/batch_eval.md.
"""

import sys

from engine.evaluation.batch_eval import main

if __name__ == "__main__":
    sys.exit(main(multi_scene=False))
