"""VACC inference (`--backend vacc`): a compiled UNet on one Vastai VACC die, via the `vaststreamx` runtime.

Driver side, once per job (`prepare_vacc`): check that the SDK is installed, that the three compiled-model
files exist (local or S3) and that the VDSP op normalises as the run's processing does; record the model
prefix, the VDSP JSON and `--actors-per-die` in the spec's options.

Actor side (`VaccBackend`), the call order of Vastai's own code (VastModelZOO's UNet runners,
VastStreamX-Samples' `common/model_base.py` and `samples/card_info/`):

    [without VACC_DIE_IDS: set_device(0) ("init card") -> get_all_cards()] -> claim a die -> set_device(die)
    -> Model(prefix, batch) -> Operator.load_ops_from_json_file(vdsp.json) -> Graph() -> ModelOperator(model)
    -> graph.add_operators(*ops, model_op) -> Stream(graph, RUN) -> register_operator_output(model_op) ->
    build() run: set_device(die) in the calling thread (as the samples' profilers do in every thread that
    runs) -> create_image(planes, RGB_PLANAR, w, h, die) per image -> run_sync per chunk of the model's batch
    size -> as_numpy(out)[0] (fp16) -> float32

The zoo's runner creates images and reads outputs from threads that never call set_device; what must hold is
that an image is made for the die its model runs on (`create_image(..., device_id=die)`; a bug the zoo fixed
in commit 4151cd4 passed set_device's return value instead).

The die normalises on the device, so the host passes the network-size uint8 images themselves as planar RGB
(3, h, w) arrays (`RGB_PLANAR`, the only format the zoo's VDSP JSONs use); a one-channel model's grey plane
(zhixuhao) is replicated to the three planes, as the zoo's one-channel runners do (`vacc_files`). Images must
already have the compiled model's input size (use --processing resize / model-res / zhixuhao with
--input-size HxW of the compiled model): the op would otherwise resize them and the outputs would no longer
match what the processing expects.

The precision (fp16, int8) is fixed when vamc compiles the model; this backend runs whatever it is given.
Which die an actor owns: `pipeline.backends.vacc_dies`.

Backend options (`RunConfig.backend_options`), besides those `prepare_vacc` fills in:
    vacc_vdsp_params: the VDSP JSON the model was compiled with (local or s3://); default: the zoo's UNet JSON
        for the model's input size (see `pipeline.backends.vacc_files`).
    vacc_lock_dir: node-local folder of the die claims (default: VACC_LOCK_DIR, else
    <tmp>/unet-pipeline-vacc-locks). vacc_claim_timeout_s: how long a new actor waits for a die to come free
    (default 10).
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import importlib.util
import sys
import threading
from typing import Any

import numpy as np

from pipeline.backends.base import BackendSpec, ToNetworkInput
from pipeline.backends.vacc_dies import (
    DEFAULT_CLAIM_TIMEOUT_S,
    DieClaim,
    check_actors_per_die,
    default_lock_dir,
    node_die_ids,
)
from pipeline.backends.vacc_files import (
    MODEL_CHANNELS,
    check_same_normalisation,
    default_vdsp_json,
    local_copy,
    parse_vdsp,
    read_vdsp_config,
    resolve_suite,
    suite_files,
    write_default_vdsp,
)
from pipeline.errors import BackendUnavailable, ConfigError
from pipeline.io import fs

SDK_MODULE = "vaststreamx"
# `get_attribute(AttrKey.IIMAGE_FORMAT)` codes of the VDSP op (VastStreamX-Samples common/utils.py).
IMAGE_FORMAT_CODES = {5000: "RGB_PLANAR", 5004: "GRAY"}
FED_FORMAT = "RGB_PLANAR"


def sdk_missing_message(reason: str) -> str:
    python = f"cp{sys.version_info.major}{sys.version_info.minor}"
    return (
        f"--backend vacc needs Vastai's VastStreamX Python runtime (module `{SDK_MODULE}`), and this Python "
        f"({sys.executable}) cannot import it: {reason}. Install it on the driver and on every VACC node "
        "from Vastai's developer centre (developer.vastaitech.com; Vastai sales grant access): `pip install "
        f"vaststreamx-<version>-{python}-{python}-linux_x86_64.whl`, with the VastStream SDK runtime "
        "(`ai-<version>.bin`) and the card driver, and LD_LIBRARY_PATH including "
        "/opt/vastai/vaststreamx/vaststreamx/lib. Or run on CPU instead with --backend torch or --backend "
        "onnx.")


def require_sdk_installed() -> None:
    """Driver-side check (the SDK is not imported here, only located)."""
    try:
        found = importlib.util.find_spec(SDK_MODULE) is not None
    except (ImportError, ValueError) as err:
        raise BackendUnavailable(sdk_missing_message(f"{type(err).__name__}: {err}")) from err
    if not found:
        raise BackendUnavailable(sdk_missing_message("no such module is installed"))


def import_sdk() -> Any:
    try:
        return importlib.import_module(SDK_MODULE)
    except ImportError as err:
        raise BackendUnavailable(sdk_missing_message(f"{type(err).__name__}: {err}")) from err


def prepare_vacc(spec: BackendSpec, to_network_input: ToNetworkInput, *, vacc_model: str | None,
                 actors_per_die: int,
                 s3: fs.S3Options | None = None) -> BackendSpec:
    """Driver side, once per job: fail now on what every actor would fail on, and fill in the options.

    Options set: `vacc_model` (the resolved prefix), `vacc_vdsp_params` (None: the default JSON, written by
    each actor for the model's input size), `vacc_actors_per_die`.

    Raises:
        BackendUnavailable: the SDK is not installed.
        ConfigError: no or an incomplete compiled model, a bad VDSP JSON, a bad --actors-per-die.
    """
    require_sdk_installed()
    check_actors_per_die(actors_per_die)
    model_uri = vacc_model or spec.options.get("vacc_model")
    if not model_uri:
        raise ConfigError(
            "--backend vacc needs --vacc-model PREFIX: the model compiled for VACC by Vastai's vamc, the "
            "files <PREFIX>.so, <PREFIX>.json and <PREFIX>.params (e.g. deploy_weights/unet-fp16/mod), local "
            "or s3://.")
    prefix = resolve_suite(model_uri, s3)
    vdsp = spec.options.get("vacc_vdsp_params")
    if vdsp:
        vdsp = fs.normalize(vdsp)
        if not fs.storage_for(vdsp, s3).exists(vdsp):
            raise ConfigError(f"The VDSP JSON {vdsp} (backend option vacc_vdsp_params) does not exist: give "
                              "the *-vdsp_params.json the model was compiled with, or leave the option "
                              "unset.")
        check_same_normalisation(read_vdsp_config(vdsp, s3), to_network_input, vdsp)
    else:
        default = parse_vdsp(default_vdsp_json(3, 1, 1), "the default VDSP JSON")
        check_same_normalisation(default, to_network_input, "the default VDSP JSON")
    options = {**spec.options, "vacc_model": prefix, "vacc_vdsp_params": vdsp or None,
               "vacc_actors_per_die": actors_per_die}
    return dataclasses.replace(spec, options=options)


class VaccBackend:
    """One compiled model on one claimed VACC die, for the life of its actor.

    Attributes (read-only after construction):
        die_id: the die this backend owns. batch_size: images per `run_sync` call: the model's batch size as
        the runtime reports it (a request above
            the compiled maximum is clamped).
        input_size: (h, w) of the compiled model's input (and output).
        in_channels, num_classes: the compiled model's input and output channels.
    """

    name = "vacc"

    def __init__(self, spec: BackendSpec, s3: fs.S3Options | None = None) -> None:
        self._closed = False
        self._lock = threading.Lock()
        self._claim: DieClaim | None = None
        self._stream: Any = None
        self._graph: Any = None
        self._model_op: Any = None
        self._ops: Any = None
        self._model: Any = None
        self._image_format: Any = None
        options = spec.options
        if not options.get("vacc_model"):
            raise ConfigError("The vacc backend spec has no vacc_model option: build it with "
                              "pipeline.backends.prepare_backend (which `unet-pipeline score --backend vacc "
                              "--vacc-model PREFIX` does).")
        self._vsx = vsx = import_sdk()
        from pipeline.cache import cache_dir

        cache = str(cache_dir() / "vacc")
        vdsp = options.get("vacc_vdsp_params")
        local = local_copy(suite_files(options["vacc_model"]) + ([vdsp] if vdsp else []), cache, s3)
        prefix = local[0][: -len(".so")]
        self._claim = DieClaim.acquire(
            node_die_ids(vsx), int(options.get("vacc_actors_per_die", 1)),
            options.get("vacc_lock_dir") or default_lock_dir(),
            float(options.get("vacc_claim_timeout_s", DEFAULT_CLAIM_TIMEOUT_S)))
        try:
            self._open(prefix, local[3] if vdsp else None, spec.batch_size, cache)
        except BaseException:
            self.close()
            raise

    @property
    def die_id(self) -> int:
        if self._claim is None:
            raise RuntimeError("This VACC backend holds no die (it was closed or never opened).")
        return self._claim.die_id

    def _open(self, prefix: str, vdsp: str | None, batch_size: int, cache: str) -> None:
        vsx = self._vsx
        self._bind_thread()
        try:
            self._model = vsx.Model(prefix, batch_size)
        except Exception as err:  # the runtime's exception types are not documented
            raise BackendUnavailable(
                f"vaststreamx could not load the compiled model {prefix} on die {self.die_id} "
                f"({type(err).__name__}: {err}): check that it was compiled (vamc) for this SDK version and "
                "card, and that the die has free memory (`vasmi list`).") from err
        model = self._model
        self.batch_size = max(1, min(int(model.batch_size), int(model.max_batch_size)))
        _, self.in_channels, height, width = (int(v) for v in model.input_shape[0])
        self.input_size = (height, width)
        self.num_classes = int(model.output_shape[0][1])
        if self.in_channels not in MODEL_CHANNELS:
            raise ConfigError(f"The compiled model {prefix} takes {self.in_channels}-channel input; the VDSP "
                              "op feeds RGB_PLANAR images to 3-channel models (and, replicated, to "
                              "1-channel ones): compile the model with 3 or 1 input channels.")
        vdsp = vdsp or write_default_vdsp(self.in_channels, height, width, cache)
        config = read_vdsp_config(vdsp)
        if config.output_size != self.input_size:
            raise ConfigError(
                f"The VDSP JSON {vdsp} makes {config.output_size[0]}x{config.output_size[1]} inputs, but the "
                f"compiled model {prefix} takes {height}x{width}: use the JSON the model was compiled with, "
                "or leave vacc_vdsp_params unset.")
        self._ops = vsx.Operator.load_ops_from_json_file(vdsp)
        if not self._ops:
            raise ConfigError(f"vaststreamx could not build a pre-processing op from {vdsp}: check the file "
                              "against the zoo's *-vdsp_params.json.")
        code = int(self._ops[0].cast_to_buildin_operator().get_attribute(vsx.AttrKey.IIMAGE_FORMAT))
        if IMAGE_FORMAT_CODES.get(code) != FED_FORMAT:
            raise ConfigError(f"The VDSP op from {vdsp} takes image format "
                              f"{IMAGE_FORMAT_CODES.get(code, code)}; this backend feeds {FED_FORMAT} "
                              "images, as the zoo's runners do.")
        self._image_format = getattr(vsx.ImageFormat, FED_FORMAT)
        self._graph = vsx.Graph()
        self._model_op = vsx.ModelOperator(model)
        self._graph.add_operators(*self._ops, self._model_op)
        self._stream = vsx.Stream(self._graph, vsx.StreamBalanceMode.RUN)
        self._stream.register_operator_output(self._model_op)
        self._stream.build()

    def _bind_thread(self) -> None:
        """Make the owned die the current thread's device (the runtime binds devices per thread)."""
        status = self._vsx.set_device(self.die_id)
        if status != 0:
            raise BackendUnavailable(
                f"vaststreamx.set_device({self.die_id}) returned {status}: die {self.die_id} is not usable "
                "on this node. Check `vasmi list`, and set VACC_DIE_IDS on the node to the dies that exist.")

    def _check_images(self, images: Any) -> None:
        height, width = self.input_size
        expected = (height, width, self.in_channels)
        if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
                or images.shape[1:] != expected:
            got = (f"{images.dtype} {images.shape}" if isinstance(images,
                                                                  np.ndarray) else type(images).__name__)
            raise ConfigError(
                f"The VACC model takes uint8 images of shape (N, {height}, {width}, {self.in_channels}), got "
                f"{got}: score with --processing resize or model-res (zhixuhao for its model) and "
                f"--input-size {height}x{width}, the size and channels the model was compiled for.")

    def run(self, images: np.ndarray) -> np.ndarray:
        """(N, h, w, c) uint8 -> (N, C, h, w) float32, in chunks of `batch_size`, on this backend's die.

        Calls are serialised: one synchronous stream serves one caller at a time, whichever thread it is in.
        """
        with self._lock:
            return self._run(images)

    def _run(self, images: np.ndarray) -> np.ndarray:
        if self._closed:
            raise RuntimeError("This VACC backend was closed and its die released: create a new backend.")
        self._check_images(images)
        self._bind_thread()
        height, width = self.input_size
        outputs = []
        for start in range(0, len(images), self.batch_size):
            chunk = [self._image(x) for x in images[start:start + self.batch_size]]
            results = self._stream.run_sync(chunk)
            if len(results) != len(chunk):
                raise RuntimeError(f"vaststreamx returned {len(results)} outputs for {len(chunk)} images.")
            for result in results:
                logits = np.asarray(self._vsx.as_numpy(result[0]))
                if logits.shape != (1, self.num_classes, height, width):
                    raise RuntimeError(f"vaststreamx returned an output of shape {logits.shape}, expected "
                                       f"(1, {self.num_classes}, {height}, {width}).")
                outputs.append(logits[0].astype(np.float32))  # the device's outputs are fp16
        if not outputs:
            return np.zeros((0, self.num_classes, height, width), np.float32)
        return np.stack(outputs)

    def _image(self, image: np.ndarray):
        """One (h, w, c) uint8 image as the RGB_PLANAR runtime image the VDSP op takes, made for this die (a
        grey image's plane replicated to the three planes)."""
        height, width = self.input_size
        planes = np.repeat(image.transpose(2, 0, 1), 3,
                           axis=0) if self.in_channels == 1 else image.transpose(2, 0, 1)
        return self._vsx.create_image(np.ascontiguousarray(planes), self._image_format, width, height,
                                      self.die_id)

    def close(self) -> None:
        """Drop the runtime objects (stream, graph, model op, pre-ops, model: the reverse of building) and
        release the die. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stream = None
        self._graph = None
        self._model_op = None
        self._ops = None
        self._model = None
        gc.collect()
        if self._claim is not None:
            self._claim.release()
