"""Ray job: predict masks for a dataset (no labels needed), with the options of `unet-pipeline predict`.

    ray job submit --working-dir . -- python jobs/predict.py --checkpoint s3://models/unet.pth \
        --input s3://photos/2026-11-24 --output s3://masks --history s3://masks/history.jsonl --format png

Exit status 0: passed; 1: failed (a pipeline error or errors above --max-errors); 2: bad options.
"""

import sys
from pathlib import Path

# The job's working directory holds the project, which may not be installed there: import it from here first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.entrypoint import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("predict", sys.argv[1:])
