"""Every input or output fault is one clear line or one error record, and the run goes on where it can.

Permission faults are real: as root nothing is unreadable, so those cases run as the `nobody` user (setpriv)
or on a read-only mount in a user namespace (unshare).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import factories
import pytest
from faults.support import ROOT, base_config, make_checkpoint

from pipeline.run import run

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def _world_readable_tmp() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="unet-io-faults-"))
    folder.chmod(0o755)
    return folder


@pytest.mark.integration
def test_symlink_loops_are_error_records_and_hidden_files_are_counted(tmp_path, ray_session):
    data = factories.write_pairs(tmp_path / "data", factories.samples(3, first=940))
    (data / "images" / "loop.png").symlink_to(data / "images" / "loop.png")  # ELOOP when followed
    (data / "images" / ".DS_Store").write_bytes(b"finder metadata")
    (data / "masks" / ".hidden.png").write_bytes(b"x")
    result = run(base_config(str(data), str(tmp_path / "out"), make_checkpoint(tmp_path / "m.pth")))
    metrics = result.metrics
    assert metrics["num_images"] == 3 and metrics["num_errors"] == 1 and metrics["num_inputs"] == 4
    (error,) = [json.loads(line) for line in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert error["id"] == "loop" and error["error_stage"] == "read"
    assert "symbolic links" in error["error"] and str(data / "images" / "loop.png") in error["error"]
    assert metrics["listing"]["skipped_hidden_files"] == 2


def test_a_permission_denied_file_is_an_error_record():
    """Read as `nobody`, a file it may not read becomes a read error naming the file (no exception)."""
    folder = _world_readable_tmp()
    try:
        secret = folder / "secret.png"
        secret.write_bytes(factories.png_bytes(factories.samples(1)[0][1]))
        secret.chmod(0o600)
        code = ("import json; from pipeline.io.source import _read_item; from pipeline.datasets import Item; "
                f"print(json.dumps(_read_item(0, 0, Item('secret', {str(secret)!r}, None), False, None)))")
        done = subprocess.run([*NOBODY, sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                              check=True)
        row = json.loads(done.stdout)
        assert row["error_stage"] == "read" and row["error_class"] == "InputError"
        assert "permission denied" in row["error"] and str(secret) in row["error"]
    finally:
        shutil.rmtree(folder)


def _cli(args: list[str], prefix: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, "-c", "from pipeline.cli import main; main()", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_an_unwritable_output_is_refused_before_the_run_starts():
    folder = _world_readable_tmp()
    try:
        (folder / "in").mkdir(mode=0o755)
        locked = folder / "locked"
        locked.mkdir(mode=0o555)
        done = _cli(["score", "-c", "never-read.pth", "-i", str(folder / "in"), "-o", str(locked / "out")],
                    NOBODY)
        assert done.returncode == 1, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        assert lines == [f"Error: --output {locked / 'out'} is not writable (permission denied) (its nearest "
                         f"existing folder {locked} is not writable): pick a folder this user can write, or "
                         "fix its permissions."]
    finally:
        shutil.rmtree(folder)


def test_a_read_only_file_system_is_named_as_such():
    folder = _world_readable_tmp()
    try:
        (folder / "in").mkdir(mode=0o755)
        mount = folder / "mnt"
        mount.mkdir()
        script = (f"mount -t tmpfs -o ro tmpfs {mount} && exec {sys.executable} -c "
                  "'from pipeline.cli import main; main()' score -c never-read.pth "
                  f"-i {folder / 'in'} -o {mount / 'out'}")
        done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True,
                              cwd=ROOT,
                              timeout=120)
        assert done.returncode == 1, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith(
            f"Error: --output {mount / 'out'} is not writable (read-only file system)")
    finally:
        shutil.rmtree(folder)


@pytest.mark.integration
def test_a_write_error_in_an_actor_is_named_in_the_one_line_error(ray_session):
    """A full disk surfaces as `OSError: [Errno 28] No space left on device ...`, not as Ray's wrapper."""
    import errno

    import ray

    from pipeline.run import _cause

    @ray.remote
    def write_part():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/out/masks/part-000000-000001.parquet")

    with pytest.raises(ray.exceptions.RayTaskError) as caught:
        ray.get(write_part.remote())
    assert _cause(caught.value) == ("OSError: [Errno 28] No space left on device: "
                                    "'/out/masks/part-000000-000001.parquet'")
