"""The report's parts without Ray: HTML escaping and files, the worst-N choice, source lookup for file and
container layouts, overlays, and the confusion-matrix normalisation."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import factories
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from report.html_checks import embedded_pngs, external_references

from pipeline.io.images import encode_png, palette
from pipeline.io.rows import MASK_SCHEMA
from pipeline.report.document import Document, Figure, Section, Table, render_html, write_document
from pipeline.report.plots import confusion_heatmap, row_normalised
from pipeline.report.sources import RunSources
from pipeline.report.thumbnails import STRIP_SIZE, comparison_strip, overlay
from pipeline.report.worst import read_predictions, select_worst


def _png(size=(30, 20), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_text_from_the_data_is_escaped_and_cannot_add_markup():
    hostile = '<script>alert(1)</script><img src="//evil.example/x.png">'
    page = render_html(Document(hostile, hostile, (Section(hostile, (hostile, Table((hostile,), ((hostile,),
                                                                                                 )),
                                                                     Figure("f", _png(), hostile))),)))
    assert "<script" not in page
    assert [attrs["src"][:22] for attrs, _, _ in embedded_pngs(page)] == ["data:image/png;base64,"]
    assert external_references(page) == []  # the escaped text is no src= attribute


def test_write_document_replaces_old_figures(tmp_path):
    write_document(Document("a", sections=(Section("s", (Figure("old", _png()),)),)), str(tmp_path), "report")
    write_document(Document("b", sections=(Section("s", (Figure("new", _png()),)),)), str(tmp_path), "report")
    assert sorted(p.name for p in (tmp_path / "report_files").iterdir()) == ["new.png"]
    assert "report_files/new.png" in (tmp_path / "report.md").read_text()
    with pytest.raises(ValueError, match="unique"):
        write_document(Document("c", sections=(Section("s", (Figure("x", _png()), Figure("x", _png()))),)),
                       str(tmp_path), "report")


def _write_masks(output: Path, files: dict[str, list[tuple[str, float | None]]]) -> dict[str, np.ndarray]:
    """Mask shards in the sink's schema: one row per (id, iou); each mask is filled with its row number."""
    (output / "masks").mkdir(parents=True)
    masks = {}
    for name, rows in files.items():
        out = []
        for row, (item_id, iou) in enumerate(rows):
            mask = np.full((6, 8), row % 4, np.uint8)
            masks[item_id] = mask
            out.append({"id": item_id, "source": f"/data/{item_id}.png", "height": 6, "width": 8,
                        "mask_png": encode_png(mask, num_classes=4), "pixel_accuracy": 0.5, "iou": iou,
                        "dice": 0.5,
                        "confusion": [0] * 16, "model": "milesial", "shard": int(name[-1]), "row": row})
        pq.write_table(pa.Table.from_pylist(out, schema=MASK_SCHEMA),
                       output / "masks" / f"part-00000{name[-1]}.parquet")
    return masks


def test_worst_choice_across_files_with_ties_and_images_without_iou(tmp_path):
    files = {
        "f0": [("a", 0.5), ("b", float("nan")), ("c", 0.1)],
        "f1": [("d", 0.1), ("e", None), ("f", 0.9)],
        "f2": [("g", 0.05), ("h", 0.3)],
    }
    masks = _write_masks(tmp_path, files)
    selection = select_worst(str(tmp_path), 4)
    every = [(iou, item_id) for rows in files.values() for item_id,
             iou in rows if iou is not None and not math.isnan(iou)]
    assert [r.id for r in selection.ranked] == [item_id for _, item_id in sorted(every)[:4]] == ["g", "c",
                                                                                                 "d", "h"]
    assert (selection.num_ranked, selection.num_unranked) == (6, 2)
    predictions = read_predictions(selection.ranked)
    for predicted in predictions:
        np.testing.assert_array_equal(predicted.prediction, masks[predicted.ranked.id])
    assert [(p.shard, p.row) for p in predictions] == [(2, 0), (0, 2), (1, 0), (2, 1)]
    assert select_worst(str(tmp_path), 100).ranked[-1].id == "f"


def _fake_run(output: Path, shards: list[dict], layout: str, class_names: tuple[str, ...]) -> dict:
    manifest = output / "_run" / "manifest"
    manifest.mkdir(parents=True)
    (manifest / "index.json").write_text(json.dumps({"input": "x", "layout": layout, "shards": shards}))
    return {"dataset": {"layout": layout}, "class_names": list(class_names), "model": {"mask_values": None},
            "config": {"layout": layout}}


def test_sources_of_a_file_layout_run_come_from_the_manifest(tmp_path):
    items = factories.samples(3, first=40)
    data = factories.write_voc(tmp_path / "data", items)
    base = data / "VOCdevkit" / "VOC2012"
    shard = tmp_path / "out" / "_run" / "manifest" / "shard-000000.jsonl"
    metrics = _fake_run(tmp_path / "out", [{"index": 0, "uri": str(shard), "kind": "items", "size": 3}],
                        "voc",
                        tuple(f"c{i}" for i in range(21)))
    lines = [[i, str(base / "JPEGImages" / f"{i}.jpg"), str(base / "SegmentationClass" / f"{i}.png")]
             for i, _, _ in items]
    lines[2][2] = str(base / "SegmentationClass" / "gone.png")
    shard.write_text("".join(json.dumps(line) + "\n" for line in lines))
    found = RunSources(str(tmp_path / "out"), metrics).lookup([(0, 0), (0, 1), (0, 2)])
    for row in (0, 1):
        np.testing.assert_array_equal(found[(0, row)].label,
                                      items[row][2])  # palette indices = classes, 255 kept
        assert found[(0, row)].image.size == items[row][1].size and found[(0, row)].problem == ""
    assert found[(0, 2)].label is None and "gone.png does not exist" in found[(0, 2)].problem
    assert found[(0, 2)].image is not None


def test_sources_of_a_container_run_are_read_from_the_container(tmp_path):
    items = factories.samples(5, first=60)
    data = factories.write_webdataset(tmp_path / "data", items, shards=1)
    tar = str(data / "shard-0000.tar")
    metrics = _fake_run(tmp_path / "out", [{"index": 0, "uri": tar, "kind": "container", "size": None}],
                        "webdataset", ("background", "disc", "square", "triangle"))
    found = RunSources(str(tmp_path / "out"), metrics).lookup([(0, 1), (0, 3)])
    for row in (1, 3):
        np.testing.assert_array_equal(found[(0, row)].label, items[row][2])
        assert np.array_equal(np.asarray(found[(0, row)].image), np.asarray(items[row][1]))
    missing = RunSources(str(tmp_path / "nothing"), metrics).lookup([(0, 0)])
    assert missing[(0, 0)].image is None and "manifest cannot be read" in missing[(0, 0)].problem


def test_overlay_greys_the_image_then_tints_classes():
    image = Image.new("RGB", (4, 2), (100, 100, 100))
    classes = np.array([[0, 1, 2, 255], [1, 1, 0, 0]], np.uint8)
    pixels = np.asarray(overlay(image, classes, palette(4))).astype(int)
    assert pixels[0, 0].tolist() == [100, 100, 100]  # background (black): untinted
    assert pixels[0, 1].tolist() == [round(100 * 0.45 + 128 * 0.55), 45, 45]  # disc, VOC (128, 0, 0) at 0.55
    assert pixels[0, 2].tolist() == [45, round(100 * 0.45 + 128 * 0.55), 45]
    assert pixels[0, 3].tolist() == [round(100 * 0.45 + 255 * 0.55)] * 3  # ignored: white veil


@pytest.mark.parametrize("shape", [(40, 300), (300, 40), (1, 1), (2000, 1500)])
def test_strips_have_one_size_whatever_the_image(shape):
    height, width = shape
    prediction = np.zeros(shape, np.uint8)
    image = Image.new("RGB", (width, height), (10, 20, 30))
    for strip in (comparison_strip(image, prediction, prediction, palette(4)),
                  comparison_strip(None, None, prediction, palette(4))):
        assert Image.open(io.BytesIO(strip)).size == STRIP_SIZE


def test_confusion_rows_are_divided_by_their_pixels():
    matrix = np.array([[8, 2, 0], [0, 0, 0], [1, 1, 2]])
    expected = np.array([[0.8, 0.2, 0.0], [np.nan] * 3, [0.25, 0.25, 0.5]])
    np.testing.assert_allclose(row_normalised(matrix), expected)
    many = np.eye(30, dtype=np.int64) * 100 + 1
    assert Image.open(io.BytesIO(confusion_heatmap(many, [f"class {i}" for i in range(30)]))).size == (1370,
                                                                                                       1210)


def test_a_report_that_fails_warns_instead_of_failing_the_run(tmp_path):
    from pipeline.report.run_report import report_after_run

    with pytest.warns(UserWarning, match=r"report.html was not written \(KeyError.*unet-pipeline report"):
        assert report_after_run(str(tmp_path), {"command": "score"}) is None


@pytest.mark.integration
def test_ranking_a_run_on_s3_fetches_a_small_part_of_its_mask_files(tmp_path, s3_server, s3_bucket,
                                                                    monkeypatch):
    """On S3 only the footer and the three small columns travel, not the encoded masks in between."""
    import s3fs.core
    from conftest import upload_tree

    rng = np.random.default_rng(0)
    (tmp_path / "run" / "masks").mkdir(parents=True)
    rows = [{"id": f"n{i:02d}", "source": f"/data/n{i:02d}.png", "height": 300, "width": 300,
             "mask_png": encode_png(rng.integers(0, 4, (300, 300), dtype=np.uint8), num_classes=4),
             "pixel_accuracy": 0.5, "iou": float(rng.random()), "dice": 0.5, "confusion": [0] * 16,
             "model": "m",
             "shard": 0, "row": i} for i in range(32)]
    path = tmp_path / "run" / "masks" / "part-000000-000001.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=MASK_SCHEMA), path, compression="zstd")
    uri = upload_tree(tmp_path / "run", s3_bucket, "run", s3_server)
    fetched: list[int] = []
    real = s3fs.core.S3File._fetch_range

    def counting(self, start, end):
        fetched.append(end - start)
        return real(self, start, end)

    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", counting)
    selection = select_worst(uri, 3)
    assert [r.id for r in selection.ranked] == [r["id"] for r in sorted(rows, key=lambda r: r["iou"])[:3]]
    assert path.stat().st_size > 800_000
    assert sum(fetched) < 0.1 * path.stat().st_size, f"{sum(fetched)} of {path.stat().st_size} bytes fetched"
