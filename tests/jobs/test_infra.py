"""infra/ stays runnable: every YAML parses, images and versions match pyproject.toml, and every job command
in the manifests names an entry point that exists and options its click command accepts (parsed by click
itself)."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.cli.options import build_config, explicit_params
from pipeline.cli.run_commands import predict, score

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
VERSION = PYPROJECT["project"]["version"]
PROJECT_IMAGE = f"unet-pipeline:{VERSION}"
SUBMITTER_IMAGE = re.compile(r"bitnami/kubectl:\d+\.\d+\.\d+")  # only creates RayJobs; pinned, never :latest
JOB_SCRIPT = re.compile(r"^(?:/app/)?(jobs/\w+\.py)$")  # /app is the image's WORKDIR (see the Dockerfile)
COMMANDS = {"score": score, "predict": predict}


def _pin(package: str) -> str:
    for requirement in PYPROJECT["project"]["dependencies"]:
        match = re.fullmatch(rf"{package}(\[[^\]]*\])?==([\w.]+)", requirement)
        if match:
            return match.group(2)
    raise AssertionError(f"pyproject.toml does not pin {package}")


def _documents() -> dict[str, list[dict]]:
    files = sorted(INFRA.rglob("*.yaml"))
    assert len(files) >= 5, files
    return {str(path.relative_to(INFRA)): [d for d in yaml.safe_load_all(path.read_text())] for path in files}


def _walk(node, key=None):
    """(key, value) of every scalar in a YAML tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, k)
    elif isinstance(node, list):
        for item in node:
            yield from _walk(item, key)
    else:
        yield key, node


def _kind(kind: str) -> list[dict]:
    return [d for docs in _documents().values() for d in docs if d and d.get("kind") == kind]


def _job_commands() -> list[tuple[str, list[str]]]:
    """(entry point script, its arguments) for every `python [/app/]jobs/X.py ...` in the YAML files."""
    found = []
    for docs in _documents().values():
        for _, value in _walk(docs):
            if not isinstance(value, str) or "jobs/" not in value:
                continue
            for line in value.splitlines() if "\n" in value.strip() else [value]:
                tokens = shlex.split(line)
                for i, token in enumerate(tokens):
                    match = JOB_SCRIPT.match(token)
                    if match and i > 0 and tokens[i - 1] == "python":
                        found.append((match.group(1), tokens[i + 1:]))
    return found


def test_every_yaml_file_parses():
    documents = _documents()
    assert all(docs and all(isinstance(d,
                                       dict) for d in docs) for docs in documents.values()), documents.keys()


def test_images_and_versions_match_pyproject():
    dockerfile = (INFRA / "Dockerfile").read_text()
    arg = lambda name: re.search(rf"^ARG {name}=(\S+)$", dockerfile, re.M).group(1)  # noqa: E731
    assert arg("RAY_VERSION") == _pin("ray") == "2.60.0"
    assert arg("TORCH_VERSION") == _pin("torch")
    assert PYPROJECT["project"]["requires-python"] == f">={arg('PYTHON_VERSION')}"
    assert "COPY jobs ./jobs" in dockerfile and "WORKDIR /app" in dockerfile

    images = [value for docs in _documents().values() for key, value in _walk(docs) if key == "image"]
    assert len(images) >= 7
    for image in images:
        assert image == PROJECT_IMAGE or SUBMITTER_IMAGE.fullmatch(image), image
    ray_versions = [value for docs in _documents().values() for key,
                    value in _walk(docs) if key == "rayVersion"]
    assert ray_versions and set(ray_versions) == {_pin("ray")}
    # a manifest running the project says which Ray and image it expects
    for name, docs in _documents().items():
        if any(key == "image" and value == PROJECT_IMAGE for key, value in _walk(docs)):
            header = "\n".join(line for line in (INFRA / name).read_text().splitlines()
                               if line.startswith("#"))
            assert f"Ray {_pin('ray')}" in header and PROJECT_IMAGE in header, name


def test_job_commands_name_existing_entry_points_and_options():
    commands = _job_commands()
    assert {script for script, _ in commands} >= {"jobs/score.py"}
    for script, args in commands:
        path = ROOT / script
        assert path.is_file(), f"{script} is referenced in infra/ but does not exist"
        command_name = re.search(r'run_job\("(\w+)"', path.read_text()).group(1)
        command = COMMANDS[command_name]
        context = command.make_context(command_name, list(args))  # unknown options, bad choices: click raises
        params = dict(context.params)
        params.pop("as_json")
        config = build_config(command_name, params, explicit_params(context))  # and the settings must agree
        assert config.data.input.startswith("s3://") and config.output.uri.startswith("s3://")
        if config.tracking.baseline:
            assert config.tracking.history, "a gated job needs its history"


def test_raycluster_has_cpu_workers_and_a_vacc_group_and_s3_from_a_secret():
    (cluster,) = _kind("RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    declared = {name: json.loads(json.loads(g["rayStartParams"]["resources"]))
                if "resources" in g["rayStartParams"] else {} for name, g in groups.items()}
    assert declared["cpu"] == {} and declared["vacc"]["VACC"] > 0
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head runs no work
    (rayjob,) = _kind("RayJob")
    assert rayjob["spec"]["shutdownAfterJobFinishes"] is True
    specs = [cluster["spec"], rayjob["spec"]["rayClusterSpec"]]
    pods = [spec["headGroupSpec"]["template"] for spec in specs]
    pods += [g["template"] for spec in specs for g in spec["workerGroupSpecs"]]
    for pod in pods:
        for container in pod["spec"]["containers"]:
            assert {"secretRef": {"name": "unet-pipeline-s3"}} in container["envFrom"], container["name"]


def test_nightly_cronjob_creates_the_rayjob_that_kustomize_packs():
    (kustomization,) = _kind("Kustomization")
    (generator,) = kustomization["configMapGenerator"]
    assert generator["files"] == ["rayjob.yaml"] and (INFRA / "k8s" / "rayjob.yaml").is_file()
    assert all((INFRA / "k8s" / resource).is_file() for resource in kustomization["resources"])
    (cronjob,) = _kind("CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert {"name": "manifests", "configMap": {"name": generator["name"]}} in pod["volumes"]
    script = pod["containers"][0]["args"][0]
    assert "kubectl create -f /manifests/rayjob.yaml" in script
    assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    (role,) = _kind("Role")
    assert role["rules"][0]["resources"] == ["rayjobs"] and "create" in role["rules"][0]["verbs"]


@pytest.mark.parametrize("script", ["score.py", "predict.py"])
def test_job_scripts_run_the_cli_command_they_are_named_after(script):
    text = (ROOT / "jobs" / script).read_text()
    assert f'run_job("{script[:-3]}", sys.argv[1:])' in text
    assert "sys.path.insert(0, str(Path(__file__).resolve().parent.parent))" in text
