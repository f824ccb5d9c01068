"""Help per command: only the options that do something there, that command's defaults, sections in a fixed
order with the essentials first, registry names as choices; a wrong name fails before anything runs."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.options import ESSENTIALS, GROUP_TITLES
from pipeline.config import SECTIONS


def _help(command: str) -> str:
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _sections(text: str) -> dict[str, str]:
    """Section title -> its text."""
    parts = re.split(r"^([A-Z][a-z]+) options:$", text, flags=re.M)
    return {title: body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


def _layout_help(command: str) -> str:
    flat = " ".join(_help(command).split())
    return flat[flat.index("--layout"):flat.index("-m, --model")]


def test_predict_help_shows_its_own_layout_default_and_no_scoring_options():
    text = _help("predict")
    assert "[default: folder]" in _layout_help("predict"), _layout_help("predict")
    for option in ("--report", "--baseline", "--max-drop", "--mask-dir", "--mask-suffix", "--mask-column"):
        assert option not in text, f"predict --help offers {option}, which does nothing there"
    assert "--resume" in text and "--max-errors" in text  # both act on a prediction run
    assert "[default: pairs]" in _layout_help("score")


def test_options_that_do_nothing_are_refused_not_ignored():
    result = CliRunner().invoke(cli, ["predict", "--report", "-c", "x.pth", "-i", "in", "-o", "out"])
    assert result.exit_code == 2 and "No such option '--report'" in result.output
    bench = _help("bench")
    for option in ("--report", "--resume", "--max-errors"):
        assert option not in bench, f"bench --help offers {option}"


@pytest.mark.parametrize("command", ["score", "predict", "bench"])
def test_help_is_in_sections_with_the_essentials_first(command):
    text = _help(command)
    sections = _sections(text)
    order = ["Essential", *GROUP_TITLES.values(), "Other"]
    assert list(sections) == [title for title in order if title in sections], list(sections)
    assert {"Essential", "Data", "Model", "Processing", "Backend", "Execution"} <= set(sections)
    essentials = sections["Essential"]
    flags = re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", essentials, flags=re.M)
    expected = [f"--{name}" for name in ESSENTIALS if command != "bench" or name != "output"]
    assert flags == expected, flags
    assert "--batch-size" in sections["Execution"] and "--precision" in sections["Backend"]
    assert "--num-classes" in sections["Model"] and "--s3-endpoint" in sections["Data"]


def test_every_configuration_section_has_a_help_section():
    assert list(GROUP_TITLES) == list(SECTIONS)


def test_registry_names_are_choices():
    from pipeline.datasets import LAYOUTS
    from pipeline.models import MODELS
    from pipeline.processing import PROCESSINGS

    options = {p.name: p for p in cli.commands["score"].params}
    assert list(options["model"].type.choices) == MODELS.names()
    assert list(options["layout"].type.choices) == LAYOUTS.names()
    assert list(options["processing"].type.choices) == PROCESSINGS.names()
    completions = [c.value for c in options["layout"].type.shell_complete(None, options["layout"], "p")]
    assert completions == [name for name in LAYOUTS.names() if name.startswith("p")]


def test_a_model_typo_fails_first_in_one_line():
    """No "running the built-in default" before the error: the name is checked while parsing."""
    result = CliRunner().invoke(cli, ["score", "-m", "milesal"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: Unknown model 'milesal'. Did you mean 'milesial'?"), result.stderr


def test_an_invalid_option_value_exits_2_in_one_line():
    result = CliRunner().invoke(cli, ["predict", "-c", "x.pth", "-i", "in", "-o", "out", "--batch-size", "0"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == ["Error: --batch-size and --shard-size must be at least 1."]
