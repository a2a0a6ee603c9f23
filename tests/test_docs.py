"""docs/tables.md documents every table and column the schema module declares."""
from pathlib import Path

from recsys_spark.schemas import ALL_TABLES

DOC = (Path(__file__).resolve().parents[1] / "docs" / "tables.md").read_text()


def test_every_table_and_column_is_documented():
    missing = []
    for table in ALL_TABLES.values():
        section = DOC.split(f"## `{table.name}`", 1)
        if len(section) == 1:
            missing.append(table.name)
            continue
        body = section[1].split("\n## ", 1)[0]
        for field in table.schema.fields:
            if f"`{field.name}` | {field.dataType.simpleString()} |" not in body:
                missing.append(f"{table.name}.{field.name} ({field.dataType.simpleString()})")
    assert not missing, f"docs/tables.md lacks: {missing}"
