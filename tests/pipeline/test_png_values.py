"""`--png-values upstream`: PNG files as the model family's predict script writes them, Parquet unchanged."""

from __future__ import annotations

import io

import factories
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.config import RunConfig
from pipeline.defaults import default_checkpoint
from pipeline.io.outputs import safe_name
from pipeline.models import load_model
from pipeline.processing import create_processing
from pipeline.run import run


@pytest.mark.integration
def test_upstream_png_values(ray_session, tmp_path):
    data = factories.write_pairs(tmp_path / "data", factories.samples(3, size=(40, 48)))
    config = RunConfig.create(input=str(data), output=str(tmp_path / "out"), checkpoint=default_checkpoint(),
                              scale=1.0, format="both", png_values="upstream", progress=False, report=False)
    run(config)
    loaded = load_model(None, default_checkpoint())
    processing = create_processing("upstream", family=loaded.family, num_classes=4, in_channels=3, scale=1.0)
    rows = pq.read_table(tmp_path / "out" / "masks").to_pylist()
    assert len(rows) == 3
    for row in rows:
        classes = np.asarray(Image.open(io.BytesIO(row["mask_png"])))  # Parquet keeps class indices
        written = Image.open(tmp_path / "out" / "png" / f"{safe_name(row['id'])}.png")
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written),
                                      classes.astype(int) * 255 // 4)  # milesial a013c80 mask_to_image
        np.testing.assert_array_equal(np.asarray(written), np.asarray(processing.upstream_png(classes)))
