"""Evaluate every checkpoint of a multi-scene run (mshyperpose, ems-transposenet): a CSV and an HTML report.

    python main_batch_ms_eval.py mshyperpose test <backbone> <dataset_root> \
        ./datasets/7Scenes/7scenes_all_scenes.csv <config.json> [<eval_config.json>] ./models/run_<stamp> \
        --output_path ./evals/hyperpose_7scenes_evals [--test_dataset_id 7scenes]

Re-running evaluates only checkpoints added (or changed) since the last run. See docs/batch_eval.md.
"""

import sys

from engine.evaluation.batch_eval import main

if __name__ == "__main__":
    sys.exit(main(multi_scene=True))
