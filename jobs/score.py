"""Ray job: score a model on a labelled dataset, with the options of `unet-pipeline score`.

    ray job submit --working-dir . -- python jobs/score.py --input s3://data/val --output s3://runs/nightly \
        --checkpoint s3://models/unet.pth --history s3://runs/nightly/history.jsonl --baseline last-good

With no options it runs the built-in default (synthetic shapes, packaged checkpoint); submitted with
--working-dir, give --output as an s3:// URI or an absolute path (the working dir is deleted after the job).
Exit status 0: passed; 1: failed (errors above --max-errors, or mIoU fell more than --max-drop below
--baseline); 2: bad options (an output inside the job's working dir included).
"""

import sys
from pathlib import Path

# The job's working directory holds the project, which may not be installed there: import it from here first.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobs.entrypoint import run_job  # noqa: E402

if __name__ == "__main__":
    run_job("score", sys.argv[1:])
