"""Layouts list their inputs lazily, pair labels by name, report orphans, and decode labels to classes."""

from __future__ import annotations

import io

import numpy as np
import pytest
from factories import (
    layout_case,
    make_sample_pair,
    samples,
    write_carvana,
    write_folder,
    write_isbi,
    write_pairs,
    write_parquet,
    write_voc,
)
from PIL import Image

from pipeline.config import DataConfig
from pipeline.datasets import LAYOUTS, ContainerLayout
from pipeline.errors import ConfigError, InputError
from pipeline.io.manifest import plan_shards, read_items
from pipeline.io.source import read_shard

OPTIONS = DataConfig()
CONTAINER_LAYOUTS = [name for name in LAYOUTS.names() if isinstance(LAYOUTS.get(name), ContainerLayout)]


def _label(layout_name: str, data: bytes, num_classes: int, options: DataConfig = OPTIONS) -> np.ndarray:
    rule = LAYOUTS.get(layout_name).label_rule(num_classes, options)
    return rule(Image.open(io.BytesIO(data)))


def test_pairs_lists_items_and_reports_orphan_labels(tmp_path):
    items = samples(5)
    root = write_pairs(tmp_path / "ds", items)
    (root / "masks" / "orphan.png").write_bytes((root / "masks" / "s0500.png").read_bytes())
    (root / "images" / "s0501.png").rename(root / "images" / "s0501.jpg")  # any image extension pairs by stem
    listed = list(LAYOUTS.get("pairs").items(str(root), OPTIONS))
    assert sorted(i.id for i in listed if i.image) == [i for i, _, _ in items]
    assert all(i.label.endswith(f"masks/{i.id}.png") for i in listed if i.image)
    orphans = [i for i in listed if i.image is None]
    assert [(o.id, o.label.endswith("orphan.png")) for o in orphans] == [("orphan", True)]


def test_voc_reads_ids_from_the_split_file(tmp_path):
    items = samples(3)
    root = write_voc(tmp_path / "voc", items, split="val")
    listed = list(LAYOUTS.get("voc").items(str(root), DataConfig(split="val")))
    assert [i.id for i in listed] == [i for i, _, _ in items]
    assert listed[0].image.endswith("VOC2012/JPEGImages/s0500.jpg")
    with pytest.raises(ConfigError, match="--split"):
        list(LAYOUTS.get("voc").items(str(root), DataConfig(split="train")))
    data = (root / "VOCdevkit/VOC2012/SegmentationClass/s0500.png").read_bytes()
    np.testing.assert_array_equal(_label("voc", data, 21), items[0][2])


@pytest.mark.parametrize("mask_scale", [1, 255])
def test_carvana_masks_become_classes_0_1(tmp_path, mask_scale):
    items = samples(2)
    root = write_carvana(tmp_path / "car", items, mask_scale=mask_scale)
    listed = list(LAYOUTS.get("carvana").items(str(root), OPTIONS))
    assert [i.label.rsplit("/", 1)[1] for i in listed] == ["s0500_mask.gif", "s0501_mask.gif"]
    label = _label("carvana", (root / "masks/s0500_mask.gif").read_bytes(), 2)
    expected = (np.where(items[0][2] == 255, 0, items[0][2]) > 0).astype(np.uint8)
    np.testing.assert_array_equal(label, expected)


def test_isbi_binarises_white_cells_to_1(tmp_path):
    items = samples(1)
    root = write_isbi(tmp_path / "isbi", items)
    label = _label("isbi", (root / "label/s0500.png").read_bytes(), 2)
    assert set(np.unique(label)) <= {0, 1}
    assert label.sum() == (np.where(items[0][2] == 255, 0, items[0][2]) > 0).sum()


def test_label_values_outside_the_classes_are_errors():
    bad = Image.fromarray(np.array([[0, 1], [7, 255]], np.uint8), "L")
    buffer = io.BytesIO()
    bad.save(buffer, format="PNG")
    with pytest.raises(InputError, match=r"values \[7\] outside the model's 4 classes"):
        _label("pairs", buffer.getvalue(), 4)
    np.testing.assert_array_equal(_label("pairs", buffer.getvalue(), 8), np.array([[0, 1], [7, 255]]))
    with pytest.raises(InputError, match=r"values \[1\] that are not classes"):
        _label("pairs", buffer.getvalue(), 2, DataConfig(label_values=(0, 7)))


def test_label_values_map_raw_values_to_classes():
    # milesial HEAD's mask_values: raw value at position i is class i
    raw = Image.fromarray(np.array([[0, 7], [7, 255]], np.uint8), "L")
    buffer = io.BytesIO()
    raw.save(buffer, format="PNG")
    mapped = _label("pairs", buffer.getvalue(), 2, DataConfig(label_values=(0, 7)))
    np.testing.assert_array_equal(mapped, np.array([[0, 1], [1, 255]]))


def test_folder_lists_images_only(tmp_path):
    root = write_folder(tmp_path / "f", samples(3))
    (root / "notes.txt").write_text("not an image")
    listed = list(LAYOUTS.get("folder").items(str(root), OPTIONS))
    assert [i.id for i in listed] == ["s0500", "s0501", "s0502"] and all(i.label is None for i in listed)


def test_plan_shards_streams_into_manifest_files_and_reuses_them(tmp_path):
    root = write_pairs(tmp_path / "ds", samples(7))
    out = str(tmp_path / "out")
    shards = plan_shards(LAYOUTS.get("pairs"), str(root), OPTIONS, out, shard_size=3)
    assert [s.size for s in shards] == [3, 3, 1]
    assert [i.id for s in shards for i in read_items(s)] == [f"s{i:04d}" for i in range(500, 507)]
    (root / "images" / "s0500.png").unlink()  # a resumed run must not see a changed listing
    again = plan_shards(LAYOUTS.get("pairs"), str(root), OPTIONS, out, shard_size=3, reuse=True)
    assert again == shards
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="No inputs"):
        plan_shards(LAYOUTS.get("folder"), str(tmp_path / "empty"), OPTIONS, str(tmp_path / "o2"), 3)


def test_read_shard_turns_missing_files_into_error_rows(tmp_path):
    root = write_pairs(tmp_path / "ds", samples(4))
    (root / "masks" / "s0501.png").unlink()
    (root / "masks" / "orphan.png").write_bytes(b"x")
    layout = LAYOUTS.get("pairs")
    shards = plan_shards(layout, str(root), OPTIONS, str(tmp_path / "out"), shard_size=10)
    table = next(read_shard(shards[0], layout, OPTIONS, True, None, frozenset({3}), 64))
    rows = {r["id"]: r for r in table.to_pylist()}
    assert set(rows) == {"s0500", "s0501", "s0502", "orphan"}  # row 3 (s0503) skipped as already committed
    assert rows["s0500"]["error"] == "" and rows["s0500"]["image"] and rows["s0500"]["label"]
    assert "label" in rows["s0501"]["error"] and "missing" in rows["s0501"]["error"]
    assert "has no image" in rows["orphan"]["error"]
    assert [r["row"] for r in table.to_pylist()] == [0, 1, 2, 4]


@pytest.mark.parametrize("name", LAYOUTS.names())
def test_every_layout_lists_reads_and_decodes_its_samples(tmp_path, name):
    """Written by the layout's case (tests/factories.py), listed, read and decoded back without Ray."""
    case = layout_case(name)
    layout = LAYOUTS.get(name)
    assert layout.name == name and layout.description
    items = [(f"x{i:02d}", *make_sample_pair(600 + i, (40 + 8 * i, 32), case.binary)) for i in range(3)]
    root = case.write(tmp_path / name, items)
    uri = str(root / case.input_subdir if case.input_subdir else root)
    shards = plan_shards(layout, uri, OPTIONS, str(tmp_path / "out"), shard_size=2,
                         expect_labels=layout.has_labels)
    rows = [r for s in shards for t in read_shard(s, layout, OPTIONS, layout.has_labels, None, frozenset(), 8)
            for r in t.to_pylist()]
    assert sorted(r["id"] for r in rows) == [i for i, _, _ in items]
    assert all(r["error"] == "" for r in rows)
    rule = layout.label_rule(2 if case.binary else 4, OPTIONS) if layout.has_labels else None
    for item_id, image, classes in items:
        row = next(r for r in rows if r["id"] == item_id)
        decoded = Image.open(io.BytesIO(row["image"]))
        stored = case.as_stored(image)
        assert decoded.size == image.size and len(decoded.getbands()) == case.in_channels
        if not case.lossy:
            np.testing.assert_array_equal(np.asarray(decoded), np.asarray(stored))
        if rule is not None:
            label = rule(Image.open(io.BytesIO(row["label"])))
            np.testing.assert_array_equal(label, case.ground_truth(classes), err_msg=f"{name} {item_id}")


@pytest.mark.parametrize("name", CONTAINER_LAYOUTS)
def test_container_layouts_stream_samples(tmp_path, name):
    items = samples(5)
    root = layout_case(name).write(tmp_path / name, items)  # in two container files
    layout = LAYOUTS.get(name)
    shards = plan_shards(layout, str(root), OPTIONS, str(tmp_path / "out"), shard_size=2)
    assert len(shards) == 2 and all(s.kind == "container" for s in shards)
    rows = [r for s in shards for t in read_shard(s, layout, OPTIONS, True, None, frozenset(), 2)
            for r in t.to_pylist()]
    assert sorted(r["id"] for r in rows) == [i for i, _, _ in items]
    by_id = {r["id"]: r for r in rows}
    first_label = np.asarray(Image.open(io.BytesIO(by_id["s0500"]["label"])))
    np.testing.assert_array_equal(first_label, items[0][2])
    assert all(r["error"] == "" for r in rows)


def test_parquet_without_a_mask_column_is_an_error_for_scoring_only(tmp_path):
    root = write_parquet(tmp_path / "pq", samples(2), shards=1, with_masks=False)
    layout = LAYOUTS.get("parquet")
    with pytest.raises(ConfigError, match="--mask-column"):
        plan_shards(layout, str(root), OPTIONS, str(tmp_path / "out"), 4, expect_labels=True)
    shards = plan_shards(layout, str(root), OPTIONS, str(tmp_path / "out"), 4)
    error_rows = next(read_shard(shards[0], layout, OPTIONS, True, None, frozenset(), 4)).to_pylist()
    assert len(error_rows) == 1 and "--mask-column" in error_rows[0]["error"]  # recorded, not lost
    rows = next(read_shard(shards[0], layout, OPTIONS, False, None, frozenset(), 4)).to_pylist()
    assert [r["error"] for r in rows] == ["", ""]
