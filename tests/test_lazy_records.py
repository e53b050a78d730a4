"""Records streamed from CSV (fields typed when read) equal records typed at once."""

from __future__ import annotations

import csv
from pathlib import Path

from worker.sources.base import RowSkip
from worker.sources.csv import CsvSource
from worker.sources.schema import to_record

REPO = Path(__file__).resolve().parent.parent


def _eager(folder: Path, entity: str, file: str) -> list[tuple[str, dict, dict]]:
    with (folder / file).open(encoding="utf-8-sig", newline="") as stream:
        rows = list(csv.DictReader(stream))
    typed = [to_record(entity, row, file) for row in rows]
    return [(r.id, dict(r.fields), dict(r.problems)) for r in typed if not isinstance(r, RowSkip)]


def test_demo_data_streams_to_the_same_values_and_problems() -> None:
    folder = REPO / "examples" / "crm"
    source = CsvSource(folder)
    for entity, file in (("customer", "customers.csv"), ("purchase", "purchases.csv")):
        streamed = [(r.id, dict(r.fields), dict(r.problems)) for r in source.iter_records(entity)]
        assert streamed == _eager(folder, entity, file)


def test_a_bad_field_is_none_with_its_reason_and_other_fields_stay_usable(tmp_path: Path) -> None:
    (tmp_path / "customers.csv").write_text(
        "id,email,birthday,timezone,email_opt_in\n"
        "7,a@example.com,1990-02-30,Mars/Base,maybe\n"
        "bad id,b@example.com,1990-01-01,UTC,true\n"
        "8,c@example.com\n",
        encoding="utf-8",
    )
    records = list(CsvSource(tmp_path).iter_records("customer"))
    assert [r.id for r in records] == ["7", "8"]
    bad, ragged = records
    assert bad["email"] == "a@example.com"
    assert bad["birthday"] is None
    assert set(bad.problems) == {"birthday", "timezone", "email_opt_in"}
    assert "1990-02-30" in bad.problems["birthday"]
    assert ragged["birthday"] is None and ragged["timezone"] is None
    assert dict(ragged.problems) == {}


def test_get_finds_every_row_before_and_after_quoted_multiline_fields(tmp_path: Path) -> None:
    # The index splits plain lines fast and hands over to csv.reader at the first quote.
    lines = ["\ufeffid,email,first_name"] + [f"{n},c{n}@example.com,Kim{n}" for n in range(1, 4)]
    lines += ['4,c4@example.com,"Smith,\nJohn"', "5,c5@example.com,Lee", '"6",c6@example.com,Ana']
    lines += ["", "7 ,c7@example.com,Bo"]
    (tmp_path / "customers.csv").write_bytes("\r\n".join(lines).encode("utf-8") + b"\r\n")
    source = CsvSource(tmp_path)
    streamed = {r.id: dict(r.fields) for r in source.iter_records("customer")}
    assert sorted(streamed) == ["1", "2", "3", "4", "5", "6", "7"]
    for record_id, fields in streamed.items():
        found = source.get("customer", record_id)
        assert found is not None and dict(found.fields) == fields
    assert source.get("customer", "8") is None
