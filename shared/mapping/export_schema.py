"""Regenerate mappings/schema.json from the pydantic models: `python -m shared.mapping.export_schema`.

Editors with a YAML language server check mapping files against it (see the first line of default.yaml).
`--check` exits 1 when the committed file is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from shared.mapping.schema import MappingSet

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "mappings" / "schema.json"


def schema_text() -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "bc-dataverse-sync mapping file",
        **MappingSet.model_json_schema(),
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = schema_text()
    if "--check" in argv:
        current = SCHEMA_FILE.read_text(encoding="utf-8") if SCHEMA_FILE.exists() else ""
        if current != text:
            print(
                f"{SCHEMA_FILE} is out of date; run: python -m shared.mapping.export_schema", file=sys.stderr
            )
            return 1
        return 0
    SCHEMA_FILE.write_text(text, encoding="utf-8")
    print(f"wrote {SCHEMA_FILE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
