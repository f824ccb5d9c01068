"""The `vacc` registry entry: how VACC actors are prepared, placed and built (backend: `vacc.VaccBackend`).

Each actor asks Ray for 1/K of a `VACC` unit (K = `--actors-per-die`) and claims a die on its node; the number
of actors is the cluster's `VACC` total x K. The SDK is located on the driver before Ray starts, and a cluster
that declares no `VACC` resource is refused at once instead of waiting forever for actors that cannot be
placed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.backends.base import Backend, BackendEntry, BackendSpec, PrepareContext, ToNetworkInput
from pipeline.backends.vacc_dies import check_cluster_offers_dies, resource_share
from pipeline.io.fs import S3Options

if TYPE_CHECKING:
    from pipeline.config import BackendConfig


def _prepare(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    from pipeline.backends.vacc import prepare_vacc

    return prepare_vacc(spec, context.to_network_input, vacc_model=context.settings.vacc_model,
                        actors_per_die=context.settings.actors_per_die, s3=context.s3)


def _create(spec: BackendSpec, to_network_input: ToNetworkInput, s3: S3Options | None) -> Backend:
    from pipeline.backends.vacc import VaccBackend

    return VaccBackend(spec, s3)  # the die normalises on the device (the VDSP op), not to_network_input


def _never_on_cpu(settings: BackendConfig) -> bool:
    return False


def _dies(settings: BackendConfig, cluster: Mapping[str, float]) -> int:
    return int(float(cluster.get("VACC", 0.0)) * settings.actors_per_die)


def _die_share(settings: BackendConfig) -> dict[str, Any]:
    return {"resources": {"VACC": resource_share(settings.actors_per_die)}}  # K actors share a die


def _check(settings: BackendConfig, cluster: Mapping[str, float] | None) -> None:
    if cluster is None:
        from pipeline.backends.vacc import require_sdk_installed

        require_sdk_installed()  # before a Ray starts
    else:
        check_cluster_offers_dies(settings.actors_per_die)


ENTRY = BackendEntry(
    name="vacc",
    description="Vastai VACC dies through vaststreamx, running a vamc-compiled model (one die per actor).",
    precisions=("fp16", "int8", "fp32"),
    create=_create,
    prepare=_prepare,
    runs_on_cpu=_never_on_cpu,
    devices=_dies,
    actor_resources=_die_share,
    check=_check,
)
