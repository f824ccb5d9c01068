"""A test-only fake of Vastai's `vaststreamx` runtime, so the VACC backend's real code runs without a card.

Never importable from the package: tests put `tests/fakes` on sys.path (the `fake_sdk` fixture) and Ray
workers get it through the session Ray's runtime_env (tests/conftest.py). It follows the contract of
shared/reference/vacc-sdk.md §9, and is deliberately strict where the real runtime is undocumented:

* Dies: `VSX_FAKE_DIE_IDS` (default "0,1"), read at each call; `get_all_cards()` groups them two to a card.
  `set_device(id)` returns 0 and binds the die to the *calling thread* (thread-local), or returns -1 for a die
  the machine lacks. The first successful `set_device` initialises the process's runtime: `get_all_cards()`
  and `get_all_cards_count()` raise before it (both vendor card_info samples call `set_device(0)`, "init
  card", first). `Model()` and `run_sync()` raise unless the calling thread's device is set (and, for runs, is
  the die the model lives on), as the vendor samples bind in every thread that builds or runs a model.
  `create_image()` and `as_numpy()` work from any thread (the zoo's UNet runner makes images and reads outputs
  in threads that never call set_device); an image belongs to the die it was made for, and `run_sync()`
  refuses it on another (the bug the zoo fixed in commit 4151cd4).
* `create_image(array, fmt, width, height, device_id)`: C-contiguous uint8 only; shape (3, H, W) for *_PLANAR,
  (H, W, 3) for *_INTERLEAVE, (H, W) for GRAY, and a die this machine has; ValueError otherwise.
* `Model(prefix, batch_size)`: RuntimeError unless `<prefix>.so`, `.json` and `.params` exist and `.json`
  holds the fake compiler's sidecar (tests/backends/fake_vamc.py). `batch_size` reads back
  min(requested, max_batch_size).
* `Operator.load_ops_from_json_file(path)`: [] for a missing file, bad JSON, or an OpType / NormaType it does
  not know; else one fusion op whose `get_attribute(AttrKey.IIMAGE_FORMAT)` is the ImageFormat code (5000
  RGB_PLANAR, 5004 GRAY) and whose `attributes` are keyed by name ("IIMAGE_FORMAT"), as VastStreamX-Samples
  reads them.
* `Stream.run_sync(images)`: RuntimeError before `build()`, for a graph that is not [fusion op, model op], for
  more images than the model's batch size (or none), for an image format other than the op's, and from a
  thread whose device is not the model's die. Outputs come back in input order, one `[Tensor]` per image.
* Not faked (the backend does not use them; calling them fails with AttributeError): run_async /
  get_operator_output / close_input / wait_until_done, tensor mode (`from_numpy`), custom ELF operators,
  `Die`.

Numerics (deterministic, so tests can predict every mask):
1. Pre-processing op, per image: uint8 planes (c, h, w) (GRAY: c = 1) as float32; if (h, w) differs from
   (OimageHeight, OimageWidth), torch bilinear resize (align_corners=False, no antialias) to that size; then
   DIV255: x / 255 in float32, or DIV255_MINUSMEAN_DIVSTD: (x / 255 - Mean) / Std; then rounded to float16.
2. Model, per image (batch 1, whatever the batch size): the network of the sidecar's registry name and config,
   with the weights stored in `.params` (the fake compiler stores them rounded to float16, after int8
   fake-quantization for int8 models), computed in float32 on one CPU thread on the float16 input, output
   rounded to float16, shape (1, C, H, W). int8 models also fake-quantize activations: the input of every
   convolution, per tensor, symmetric int8 with the sidecar's calibrated threshold. A one-channel model takes
   the first of the op's three planes, which must be equal (RuntimeError otherwise).
3. `as_numpy` returns a copy of that float16 array.

Fake-only helpers for tests: `fake_run_sync_calls()` (die, inputs, thread of every run), `fake_reset()`
(empties the run log and forgets the initialisation), `fake_live_models()` (Model objects still referenced).
"""

from vaststreamx._data import (
    AttrKey,
    GraphOutputType,
    Image,
    ImageFormat,
    StreamBalanceMode,
    Tensor,
    as_numpy,
    create_image,
)
from vaststreamx._device import get_all_cards, get_all_cards_count, set_device
from vaststreamx._model import Model, ModelOperator, fake_live_models
from vaststreamx._ops import Operator
from vaststreamx._stream import Graph, Stream, fake_reset, fake_run_sync_calls

__all__ = ["AttrKey", "Graph", "GraphOutputType", "Image", "ImageFormat", "Model", "ModelOperator",
           "Operator",
           "Stream", "StreamBalanceMode", "Tensor", "as_numpy", "create_image", "fake_live_models",
           "fake_reset",
           "fake_run_sync_calls", "get_all_cards", "get_all_cards_count", "set_device"]
