"""Ray job entry points: `python jobs/score.py ...` and `python jobs/predict.py ...` take the CLI's options.

They run from a job's working directory (`ray job submit --working-dir .`), where the project may not be
installed, so each script puts the project root first on `sys.path` before importing anything from it.
"""
