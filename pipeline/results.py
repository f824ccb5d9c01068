"""What a run returns or raises, and how its metrics are assembled from its commit records.

Shared by the pipeline (`pipeline.run`) and the run history (`pipeline.history`), neither of which imports the
other; importing this module loads neither Ray nor torch.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.config import RunConfig
from pipeline.errors import PipelineError
from pipeline.io import fs
from pipeline.io.commits import PartRecord
from pipeline.io.outputs import ERRORS, MASKS, PNG, REPORT_HTML
from pipeline.metrics import ConfusionAccumulator

if TYPE_CHECKING:
    from pipeline.models import LoadedModel


@dataclass(frozen=True)
class RunResult:
    """A finished run: its metrics (what metrics.json / summary.json hold), output folder and metrics file."""

    metrics: dict[str, Any]
    output: str
    metrics_uri: str

    @property
    def miou(self) -> float | None:
        return self.metrics.get("miou")

    @property
    def per_class(self) -> list[dict[str, Any]]:
        """One row per class (score): `{"class": name, "iou": ..., "accuracy": ..., "support": ...}`, from
        metrics.json's `per_class_*` tables; [] for predict."""
        tables = {key.removeprefix("per_class_"): value for key, value in self.metrics.items()
                  if key.startswith("per_class_") and isinstance(value, dict)}
        return [{"class": name, **{column: table.get(name) for column, table in tables.items()}}
                for name in self.metrics.get("class_names", [])]

    @property
    def paths(self) -> dict[str, str]:
        """Where the run wrote: output, metrics, errors, and (when written) report, masks and png folders."""
        config = self.metrics.get("config", {})
        formats = {"parquet": (MASKS,), "png": (PNG,), "both": (MASKS, PNG)}.get(config.get("format"), ())
        paths = {"output": self.output, "metrics": self.metrics_uri, "errors": fs.join(self.output, ERRORS)}
        if self.metrics.get("command") == "score" and config.get("report", True):
            paths["report"] = fs.join(self.output, REPORT_HTML)
        for folder in formats:
            paths["masks" if folder == MASKS else folder] = fs.join(self.output, folder)
        return paths


class RunFailed(PipelineError):
    """The run broke a limit or lost inputs. When it finished, `result` holds what it wrote (outputs, metrics
    and report are written before the limit is checked); None when it stopped before the end."""

    def __init__(self, message: str, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result


def check_error_limit(max_errors: float | None, num_inputs: int, num_errors: int, by_stage: dict[str, int],
                      result: RunResult | None = None) -> None:
    """Raise RunFailed when more inputs failed than `--max-errors` allows (a count, or a fraction below 1)."""
    if max_errors is None or num_errors == 0:
        return
    allowed = max_errors * num_inputs if max_errors < 1 else max_errors
    if num_errors > allowed:
        summary = ", ".join(f"{stage}: {n}" for stage, n in sorted(by_stage.items()))
        raise RunFailed(
            f"{num_errors} of {num_inputs} inputs failed ({summary}), above --max-errors {max_errors:g}. "
            "See errors.jsonl in the output for each file and reason.", result)


IGNORED_SHARE_WARNING = 0.5  # above this share of ignored label pixels a run warns


def label_counts(scores: ConfusionAccumulator, ignore_index: int | None) -> dict[str, Any]:
    """metrics.json's `labels`: the ignore index in force and how many label pixels it left out."""
    total = scores.label_pixels
    return {"ignore_index": ignore_index, "label_pixels": total, "ignored_pixels": scores.ignored_pixels,
            "ignored_fraction": round(scores.ignored_pixels / total, 6) if total else None,
            "labels_only_0_and_ignored": scores.zero_and_ignored_images}


def label_warnings(labels: dict[str, Any], num_images: int) -> list[str]:
    """The warning a run gives when its labels look misread: most pixels ignored, or 0/ignored-only labels
    (binary 0/255 masks in a layout where 255 means "ignore"), naming the options that fix it."""
    share, only = labels["ignored_fraction"] or 0.0, labels["labels_only_0_and_ignored"]
    if share <= IGNORED_SHARE_WARNING and not only:
        return []
    value = labels["ignore_index"]
    found = [f"{share:.1%} of the label pixels ({labels['ignored_pixels']} of {labels['label_pixels']}) were "
             f"ignored (label value {value} is the ignore index)"]
    if only:
        found.append(f"{only} of {num_images} labels hold only 0 and {value}")
    return [f"{' and '.join(found)}: the scores leave those pixels out. If {value} marks a class (binary 0/"
            f"{value} masks), pass --label-values 0,{value} (or --label-map 0:0,{value}:1) to score it as "
            f"class 1; if it really means 'not labelled', this is fine."]


def run_metrics(config: RunConfig, loaded: LoadedModel, layout_name: str, class_names: Sequence[str],
                parts: Sequence[PartRecord], timings: dict[str, float], num_classes: int, *,
                ignore_index: int | None = None, new_parts: Sequence[PartRecord] | None = None,
                ) -> dict[str, Any]:
    """metrics.json (score) or summary.json (predict) of a run, from its commit records.

    Scores come only from the merged confusion-matrix state of the parts; counts from the parts' rows.
    `new_parts` are the parts this attempt made (default: all): images/s counts only those, so a resumed
    run reports the speed of the work it did, and a finished run resumed again reports none.
    """
    scores = ConfusionAccumulator.merged(num_classes, [part.scores for part in parts])
    errors_by_stage: Counter[str] = Counter(e.error_stage for part in parts for e in part.errors)
    num_ok = sum(part.num_ok for part in parts)
    num_errors = sum(part.num_errors for part in parts)
    done_now = num_ok if new_parts is None else sum(part.num_ok for part in new_parts)
    metrics: dict[str, Any] = {"command": config.command}
    warnings: list[str] = []
    if config.scoring:
        metrics.update(scores.compute(class_names).to_dict())
        metrics["dice_per_image_mean"] = scores.dice_per_image_mean
        metrics["labels"] = label_counts(scores, ignore_index)
        warnings = label_warnings(metrics["labels"], num_ok)
    pipeline_seconds = timings["pipeline_seconds"]
    metrics.update({
        "num_inputs": num_ok + num_errors,
        "num_images": num_ok,
        "num_errors": num_errors,
        "errors_by_stage": dict(errors_by_stage),
        "model": {
            "name": loaded.family.name, "source": loaded.family.source, "backbone": loaded.family.backbone,
            "config": loaded.config, "checkpoint": config.model.checkpoint,
            "checkpoint_sha256": loaded.checkpoint.sha256,
            "mask_values": loaded.checkpoint.metadata.get("mask_values"),
        },
        "dataset": {"uri": config.data.input, "layout": layout_name,
                    "split": config.data.split if layout_name == "voc" else None,
                    "class_names": list(class_names)},
        "timings": {**{k: round(v, 3) for k, v in timings.items()},
                    "images_this_attempt": done_now, "images_before": num_ok - done_now,
                    "images_per_second": round(done_now / pipeline_seconds, 3)
                    if pipeline_seconds and done_now else None},
        "warnings": warnings,
        "config": config.to_dict(),
        "version": __version__,
        "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return metrics
