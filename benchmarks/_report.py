"""Output shared by the benchmarks: the records as one JSON line on stdout, and optionally a file."""

from __future__ import annotations

import json


def emit_records(records: list[dict], path: str | None) -> None:
    print(json.dumps(records))
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=1)
