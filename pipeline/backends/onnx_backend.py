"""onnxruntime inference on the CPU, one session per actor, from the model `prepare_onnx` built on the driver.

Session options are set for an actor that owns a fixed share of the node's CPUs:

* intra-op threads = `spec.threads` (the actor's CPUs; 1 if unset), inter-op threads 1, sequential execution:
  a UNet is one chain of convolutions, so parallel branches gain nothing and extra pools only compete;
* no spin-waiting of idle pool threads: they would burn CPU that the node's other actors and the preprocessing
  tasks need (shared/reference/cpu-inference.md: busy neighbours slow multi-threaded sessions 2.6x); on an
  idle 2-core machine spinning gained nothing (int8 UNet, 2 threads: 5.79 img/s without, 5.64 with);
* all graph optimisations (constant folding, Conv+ReLU fusion, NCHWc layouts, QDQ -> int8 kernels), done when
  the session is built, in each actor, because the optimised graph is specific to the CPU it runs on;
* big images run one per call (`SINGLE_IMAGE_PIXELS`): batching them gains nothing on the CPU and costs speed
  and memory (VGG16 at 512, 2-core AMD EPYC, 2 processes x 1 thread: 0.472 images/s one per call, 0.455 four
  per call; 1 process x 2 threads: 0.466 / 0.452), while small images keep their batch, whose per-call
  overhead matters.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from pipeline.backends.base import BackendEntry, BackendSpec, PrepareContext, ToNetworkInput
from pipeline.errors import BackendUnavailable, ConfigError
from pipeline.io.fs import S3Options

SINGLE_IMAGE_PIXELS = 512 * 512  # network-input pixels from which images run one per session call


def model_bytes(options: dict[str, Any]) -> bytes:
    """The ONNX model of a prepared spec: from Ray's object store, else the cached file (sha256-checked)."""
    if options.get("onnx_model_ref") is not None:
        import ray

        return ray.get(options["onnx_model_ref"])
    path = options.get("onnx_path")
    if not path:
        raise ConfigError("This onnx backend spec was not prepared: call "
                          "pipeline.backends.prepare_backend(spec, context) on the driver first "
                          "(pipeline.run.run does), then create_backend.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ConfigError(f"Cannot read the ONNX model {path} ({err}): the driver built it in its own cache; "
                          "without Ray running, the backend must be created on the driver's "
                          "machine.") from err
    if hashlib.sha256(data).hexdigest() != options.get("onnx_sha256"):
        raise ConfigError(f"The ONNX model {path} differs from the one the driver prepared (sha256 "
                          "mismatch): the cache was changed meanwhile; prepare the backend again.")
    return data


def session_options(threads: int | None) -> Any:
    """onnxruntime SessionOptions for an actor with `threads` CPUs (see the module docstring)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads or 1))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxBackend:
    """One onnxruntime session (CPU provider) over the job's fp32, fp16-emulated or int8 QDQ model."""

    name = "onnx"

    def __init__(self, spec: BackendSpec, to_network_input: ToNetworkInput,
                 s3: S3Options | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as err:
            raise BackendUnavailable("--backend onnx needs onnxruntime, a dependency of unet-pipeline: "
                                     "pip install onnxruntime onnx, or use --backend torch.") from err
        if spec.device != "cpu":
            raise ConfigError(f"--backend onnx runs on the CPU, not --device {spec.device}: drop --device, "
                              "or use --backend torch --device cuda.")
        self.spec = spec
        self._to_network_input = to_network_input
        self._session = ort.InferenceSession(model_bytes(spec.options), session_options(spec.threads),
                                             providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._closed = False

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) uint8 network-size images -> (N, C, h, w) float32 network output."""
        if self._closed:
            raise RuntimeError("the onnx backend was closed")
        x = np.ascontiguousarray(self._to_network_input(images), dtype=np.float32)
        if len(x) > 1 and x.shape[-2] * x.shape[-1] >= SINGLE_IMAGE_PIXELS:
            return np.concatenate([self._forward(x[i:i + 1]) for i in range(len(x))])
        return self._forward(x)

    def _forward(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self._session.run(None, {self._input: x})[0], dtype=np.float32)

    def close(self) -> None:
        self._session = None
        self._closed = True


def _prepare(spec: BackendSpec, context: PrepareContext) -> BackendSpec:
    from pipeline.backends.onnx_models import prepare_onnx

    return prepare_onnx(spec, context)


ENTRY = BackendEntry(
    name="onnx",
    description="ONNX Runtime on the CPU: exported (and for int8 calibrated) once per job on the driver, "
                "cached.",
    precisions=("fp32", "fp16", "int8"),
    create=OnnxBackend,
    prepare=_prepare,
)
