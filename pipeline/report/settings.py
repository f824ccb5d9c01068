"""Report defaults shared by the library and CLI (no heavy imports, so `unet-pipeline --help` is fast)."""

DEFAULT_WORST = 12  # worst images shown in a run report
DEFAULT_CLASSES = 5  # weakest classes plotted over runs in a history report
CONFUSION_SCALES = ("auto", "linear", "log")  # auto: log above LOG_SCALE_ABOVE_CLASSES classes
LOG_SCALE_ABOVE_CLASSES = 20
