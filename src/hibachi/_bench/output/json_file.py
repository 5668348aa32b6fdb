"""Every figure of a bench run as JSON: `Report.as_json` is the schema."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..results import Report

__all__ = ["write_json"]


def write_json(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.as_json(), indent=2, default=_plain) + "\n")


def _plain(value: object) -> Any:
    if isinstance(value, tuple | set):
        return list(value)
    return str(value)
