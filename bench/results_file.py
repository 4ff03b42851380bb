"""Where every benchmark leaves its JSON report: one stamped file per run under `--out-dir`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def write_report(name: str, report: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `report` to OUT_DIR/NAME-STAMP.json and return the path. STAMP is the report's own
    `time` (so the file and its contents agree), or now when the report has none."""
    stamp = str(report.get("time") or datetime.now(UTC).isoformat(timespec="seconds"))
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{stamp.replace(':', '')}.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    return path
