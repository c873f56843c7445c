"""Where every benchmark writes its JSON, with the facts about the machine that made it."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    import psutil

    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def save(name: str, result: dict[str, Any], folder: Path | None = None) -> Path:
    """Write ``result`` (with the machine's facts first) to ``bench/results/<name>.json`` (or
    ``folder``)."""
    out = (folder or RESULTS) / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({**machine(), **result}, indent=2, default=str))
    print(f"wrote {out}")
    return out
