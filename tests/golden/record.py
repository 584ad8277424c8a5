"""Re-record the HTTP golden set: `python -m tests.golden.record` (after a deliberate change of behaviour)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from tests.golden.cases import GOLDEN_FILE, record_all


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        golden = record_all(Path(folder))
    GOLDEN_FILE.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{GOLDEN_FILE}: {sum(len(group) for group in golden.values())} responses")


if __name__ == "__main__":
    main()
