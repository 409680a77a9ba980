"""Read a local data file (.jsonl, .json, .csv, .parquet) into rows, through `datasets`.

    table = read_table("data/train.jsonl", "task.path")
    table.rows[0]["question"], table.where(0)  # -> "...", "line 1"

`datasets` does the loading, but its errors name neither the line nor the row ("Expected
object or value"), so each text format is first checked here: UTF-8 (the byte offset of the
first bad byte), JSON syntax line by line for JSONL, one object per row, CSV rows with as
many fields as the header. A file that breaks the parser itself (nesting deeper than
Python's recursion limit, an integer of thousands of digits, binary junk, a Parquet file
with the right name and the wrong schema) ends the same way: one ValueError naming the
file, never the parser's own exception. Those checks also record where each row sits in the file, so a
missing field later is reported as "line 7" (JSONL), "row 6 (0-based, line 8)" (CSV) or
"row 6 (0-based)" (JSON array, Parquet).

Nothing here touches the network: the packaged json/csv/parquet builders read local files,
and their Arrow cache goes to a temporary directory removed after loading (keep_in_memory),
so nothing accumulates in ~/.cache.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ALLOWED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class Table:
    """The rows of one file, its column names, and how to point at row i in a message."""

    path: Path
    rows: list[dict[str, Any]]
    columns: list[str]
    where: Callable[[int], str]


def read_table(path: str, field: str) -> Table:
    """Check and load `path`; `field` (e.g. "task.path") is named in the errors."""
    p = Path(path)
    suffix = p.suffix.lower()
    if p.is_dir() and any((p / marker).is_file() for marker in SAVED_DATASET_FILES):
        return read_saved_dataset(p, field)
    if suffix not in ALLOWED_SUFFIXES:
        raise ValueError(
            f"config field `{field}` = {path!r} has an unsupported extension {p.suffix or '(none)'!r}; "
            f"allowed: {', '.join(ALLOWED_SUFFIXES)}"
        )
    if not p.exists():
        raise ValueError(f"config field `{field}`: data file {path!r} does not exist")
    if not p.is_file():
        raise ValueError(f"config field `{field}`: {path!r} is not a file")

    load_kwargs: dict[str, Any] = {}
    if suffix == ".jsonl":
        lines = _check_jsonl(p, _read_utf8(p))
        builder, where = "json", lambda i: f"line {lines[i]}"
    elif suffix == ".json":
        _check_json(p, _read_utf8(p))
        builder, where = "json", _row
    elif suffix == ".csv":
        header, lines, bom = _check_csv(p, _read_utf8(p))
        # Every column as text: otherwise "007" becomes 7.0 and a gap turns ints to floats.
        load_kwargs = _csv_kwargs(header, bom)
        builder, where = "csv", lambda i: f"row {i} (0-based, line {lines[i]})"
    else:
        _check_parquet(p)
        builder, where = "parquet", _row

    hint = ""
    if suffix == ".jsonl" and lines[-1] != len(lines):  # blank lines before the last row
        # datasets' fallback for columns that mix types (1 and "1") cannot skip blank lines
        hint = '; if some column mixes types (1 and "1"), removing the blank lines may help'
    dataset = _load(p, builder, load_kwargs, hint)
    if len(dataset) == 0:
        raise ValueError(f"data file {str(p)!r} has no rows")
    if builder == "csv" and len(dataset) != len(lines):  # our row count disagrees with pandas'
        where = _row
    return Table(p, dataset.to_list(), list(dataset.column_names), where)


# what `datasets.Dataset.save_to_disk` / `DatasetDict.save_to_disk` write into their directory
SAVED_DATASET_FILES = ("state.json", "dataset_dict.json")


def read_saved_dataset(p: Path, field: str) -> Table:
    """A directory written by `save_to_disk` (Arrow files, no code): a Dataset, or a
    DatasetDict's `train` split (the only split, when it has one)."""
    import datasets

    try:
        loaded = datasets.load_from_disk(str(p))
    except Exception as e:  # noqa: BLE001 - any failure of the library: one line naming the directory
        raise ValueError(f"config field `{field}`: {str(p)!r} is not a readable save_to_disk dataset: {e}") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = list(loaded)
        name = "train" if "train" in loaded else splits[0] if len(splits) == 1 else None
        if name is None:
            raise ValueError(f"config field `{field}`: the dataset in {str(p)!r} has splits {splits} and none is "
                             "'train'; point at one split's directory (…/<split>)")
        loaded = loaded[name]
    if len(loaded) == 0:
        raise ValueError(f"dataset {str(p)!r} has no rows")
    return Table(p, loaded.to_list(), list(loaded.column_names), _row)


def _row(i: int) -> str:
    return f"row {i} (0-based)"


row_where = _row  # for tables read elsewhere (grpo.tasks.hub)


def _read_utf8(p: Path) -> str:
    data = p.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ValueError(
            f"data file {str(p)!r} is not UTF-8 text: byte 0x{data[e.start]:02x} at byte offset "
            f"{e.start} (line {line}) is invalid ({e.reason}); re-encode the file as UTF-8"
        ) from None


def _check_jsonl(p: Path, text: str) -> list[int]:
    """1-based line number of every non-blank line; each must hold one JSON object."""
    lines = []
    for n, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"data file {str(p)!r} line {n}"
        obj = _parse_json(line, where, lambda e, where=where: f"{where}: invalid JSON ({e.msg}, column {e.colno})")
        if not isinstance(obj, dict):
            raise ValueError(
                f"data file {str(p)!r} line {n}: expected a JSON object per line, got {_kind(obj)}"
            )
        lines.append(n)
    if not lines:
        raise ValueError(f"data file {str(p)!r} has no rows")
    return lines


def _parse_json(text: str, where: str, syntax_error: Callable[[json.JSONDecodeError], str]) -> Any:
    """json.loads, with every way it can fail as a ValueError naming the file (`where`);
    syntax_error words the message for a JSON syntax error."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(syntax_error(e)) from None
    except RecursionError:
        raise ValueError(f"{where}: JSON nested too deeply to parse (arrays or objects thousands of "
                         "levels deep)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts (4300)
        raise ValueError(f"{where}: invalid JSON ({e})") from None


def shown(names: list[str], limit: int = 10) -> str:
    """Column names for a message, at most `limit` of them (a binary header is one huge name)."""
    short = [name if len(name) <= 40 else name[:40] + "…" for name in names[:limit]]
    return ", ".join(short) + (f", … ({len(names)} in all)" if len(names) > limit else "")


def _check_json(p: Path, text: str) -> None:
    data = _parse_json(text, f"data file {str(p)!r}",
                       lambda e: f"data file {str(p)!r} line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})")
    if not isinstance(data, list):
        raise ValueError(
            f"data file {str(p)!r}: expected a JSON array of objects (one per example) at the top "
            f"level, got {_kind(data)}; for one object per line use .jsonl"
        )
    if not data:
        raise ValueError(f"data file {str(p)!r} has no rows")
    for i, obj in enumerate(data):
        if not isinstance(obj, dict):
            raise ValueError(
                f"data file {str(p)!r} {_row(i)}: expected a JSON object, got {_kind(obj)}"
            )


def _check_csv(p: Path, text: str) -> tuple[list[str], list[int], bool]:
    """Header, the 1-based starting line of every data row, and whether a BOM leads."""
    bom = text.startswith("\ufeff")
    reader = csv.reader(io.StringIO(text[1:] if bom else text, newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise ValueError(f"data file {str(p)!r} is empty (no header row)")
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise ValueError(
                f"data file {str(p)!r} line 1: column name(s) repeated in the header: {shown(repeated)}"
            )
        lines, start = [], reader.line_num + 1
        for record in reader:
            if record and len(record) != len(header):
                raise ValueError(
                    f"data file {str(p)!r} line {start}: {len(record)} fields, but the header has "
                    f"{len(header)} ({shown(header)})"
                )
            if record:  # blank lines are skipped, as pandas does
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as e:
        raise ValueError(
            f"data file {str(p)!r} line {reader.line_num}: malformed CSV ({e})"
        ) from None
    if not lines:
        raise ValueError(f"data file {str(p)!r} has no rows (only a header: {shown(header)})")
    return header, lines, bom


def _csv_kwargs(header: list[str], bom: bool) -> dict[str, Any]:
    import datasets

    features = datasets.Features({name: datasets.Value("string") for name in header})
    # keep_default_na=False: an answer "None" or "NA" stays text instead of becoming missing.
    return {
        "features": features,
        "keep_default_na": False,
        "encoding": "utf-8-sig" if bom else "utf-8",
    }


def _check_parquet(p: Path) -> None:
    import pyarrow.parquet as pq

    try:
        num_rows = pq.read_metadata(p).num_rows
    except Exception as e:  # pyarrow raises several types for a non-Parquet file
        raise ValueError(f"data file {str(p)!r} is not a readable Parquet file ({e})") from None
    if num_rows == 0:  # datasets fails on it with "BatchSize must be greater than 0"
        raise ValueError(f"data file {str(p)!r} has no rows")


@contextmanager
def quiet_datasets():
    """No progress bars or log lines from datasets for the duration (we say what failed, once)."""
    import datasets

    bars_were_on = not datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # "Generating train split" bars are noise for a small file
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its "Failed to load" lines: we say it once
    try:
        yield
    finally:
        datasets.logging.set_verbosity(verbosity)
        if bars_were_on:
            datasets.enable_progress_bars()


def _load(p: Path, builder: str, kwargs: dict[str, Any], hint: str = "") -> Any:
    import datasets

    try:
        with quiet_datasets(), tempfile.TemporaryDirectory(prefix="grpo-datasets-") as cache_dir:
            return datasets.load_dataset(
                builder,
                data_files=str(p),
                split="train",
                cache_dir=cache_dir,
                keep_in_memory=True,
                **kwargs,
            )
    except Exception as e:  # datasets wraps parser errors in its own types
        cause = e.__cause__ or e
        raise ValueError(
            f"data file {str(p)!r} could not be loaded by datasets "
            f"({type(cause).__name__}: {cause}){hint}"
        ) from e


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string"}.get(
        type(value), type(value).__name__
    )
