"""OUT/loss.png: the loss curves (train, and validation where there is a split) against the step,
drawn with matplotlib, which comes with the `train` extra (`pip install 'llmvox-tts[train]'`)."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)

Row = tuple[int, float | None, float | None]  # iter, train loss, validation loss


def write_loss_png(path: Path, rows: Sequence[Row]) -> bool:
    """Write the plot (atomically: a reader never sees half a file); False, with a warning, when
    matplotlib is missing, since loss.csv beside it holds the same numbers and a run near its
    end should not fail for want of a picture."""
    try:
        # Imported here: the serving image installs llmvox-tts without the `train` extra.
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        log.warning("matplotlib is not installed (the `train` extra): %s not drawn", path)
        return False
    # A bare Figure on the Agg canvas rather than pyplot: no display is needed and no global
    # pyplot state (current figure, backend) is touched in the training process.
    figure = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for column, label, marker in ((1, "train", None), (2, "val", ".")):
        points = [(r[0], v) for r in rows if (v := r[column]) is not None and math.isfinite(v)]
        if points:
            iters, losses = zip(*points, strict=True)
            axes.plot(iters, losses, label=label, marker=marker)
    axes.set_xlabel("iter")
    axes.set_ylabel("loss")
    axes.grid(alpha=0.3)
    if axes.lines:
        axes.legend()
    figure.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
    return True
