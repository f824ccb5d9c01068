"""The isolation plugin (tests/isolation.py) itself, in a pytest run of its own: a test that leaks global
state is failed, the state is put back for the next test, and every test starts from the same seeds."""

from __future__ import annotations

import os
from pathlib import Path

LEAKY_TESTS = '''
import os
import torch

THREADS = torch.get_num_threads()


def test_leaks_threads_and_environment():
    torch.set_num_threads(THREADS + 1)
    os.environ["UNET_TEST_LEAK"] = "1"


def test_monkeypatch_is_fine(monkeypatch):
    monkeypatch.setenv("UNET_TEST_OK", "1")
    monkeypatch.chdir("/")


def test_sees_the_state_put_back():
    assert torch.get_num_threads() == THREADS and "UNET_TEST_LEAK" not in os.environ


def test_starts_from_fixed_seeds():
    assert torch.rand(1).item() == torch.rand(1, generator=torch.Generator().manual_seed(0)).item()
'''


def test_a_leak_fails_the_test_that_leaked_and_is_put_back(pytester, monkeypatch):
    pytester.makepyfile(test_leaky=LEAKY_TESTS)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(Path(__file__).parent),
                                                                   os.environ.get("PYTHONPATH")])))
    result = pytester.runpytest_subprocess("-p", "isolation", "-p", "no:randomly", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines([
        "*ERROR at teardown of test_leaks_threads_and_environment*",
        "*test_leaks_threads_and_environment changed process-wide state and did not restore it (restored "
        "now):",
        "*torch.get_num_threads(): * -> *",
        "*os.environ?'UNET_TEST_LEAK'?: <unset> -> '1'",  # ? for the brackets, which fnmatch reads as a set
    ])
