"""Data and config files that break the parsing library itself end in one line, exit 2.

Malformed rows are tests/e2e/test_bad_input.py's; here the files attack the parsers: nesting
deeper than Python's recursion limit, integers of thousands of digits, enormous lines, NUL
bytes and binary junk behind a valid extension, Parquet files with the right name and the
wrong schema, and a few dozen seeded mutations (truncations, flipped bytes) of a valid file
of each format. Each goes through the real CLI (`grpo check --no-model`, which reads the
data first): either the file still loads, or exactly one `grpo check:` line names it, exit 2.
"""

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from grpo.tasks.readers import read_table
from tests.support.cli_runs import run_cli

ROWS = [{"question": f"What is {a} + {b}?", "answer": str(a + b)} for a in range(4) for b in range(4)]
DEEP = "[" * 100_000 + "]" * 100_000
HUGE_INT = "9" * 5000  # past Python's 4300-digit limit for int(str)


def valid_bytes(fmt):
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in ROWS).encode()
    if fmt == "json":
        return json.dumps(ROWS, indent=1).encode()
    if fmt == "csv":
        return ("question,answer\n" + "".join(f"{r['question']},{r['answer']}\n" for r in ROWS)).encode()
    return None  # parquet: written by pyarrow


def write_parquet(path, table):
    pq.write_table(table, path)
    return path.read_bytes()


# (file name, content: bytes, or a pyarrow table for .parquet; a fragment of the one error line)
BREAKERS = [
    ("deep.jsonl", f'{{"question": {DEEP}, "answer": "1"}}\n', "line 1: JSON nested too deeply"),
    ("deep_object.jsonl", '{"question": "a", "answer": ' + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}\n",
     "line 1: JSON nested too deeply"),
    ("deep.json", DEEP, "JSON nested too deeply"),
    ("deep_row.json", f'[{{"question": {"[" * 5000 + "]" * 5000}, "answer": "1"}}]', "JSON nested too deeply"),
    ("huge_int.jsonl", f'{{"question": "a", "answer": {HUGE_INT}}}\n', "line 1: invalid JSON (Exceeds the limit"),
    ("huge_int.json", f'[{{"question": "a", "answer": {HUGE_INT}}}]', "invalid JSON (Exceeds the limit"),
    ("enormous_line.jsonl", '{"question": "' + "x" * 20_000_000, "line 1: invalid JSON"),
    ("enormous_field.csv", "question,answer\n" + "x" * 200_000 + ",1\n", "line 2: malformed CSV (field larger"),
    ("nul.jsonl", "\x00" * 64, "line 1: invalid JSON"),
    ("nul.json", "\x00" * 64, "invalid JSON"),
    ("binary.jsonl", random.Random(0).randbytes(4096), "is not UTF-8 text"),
    ("binary.json", bytes(128 + b % 128 for b in random.Random(1).randbytes(4096)), "is not UTF-8 text"),
    ("binary.csv", random.Random(2).randbytes(4096), "is not UTF-8 text"),
    ("binary.parquet", random.Random(3).randbytes(4096), "not a readable Parquet file"),
    ("text.parquet", valid_bytes("jsonl"), "not a readable Parquet file"),
    ("wrong_schema.parquet", pa.table({"foo": [1, 2], "bar": ["a", "b"]}), "'question' (task.question_field) is missing"),
    ("list_column.parquet", pa.table({"question": [["a"], ["b"]], "answer": ["1", "2"]}), "holds a list"),
    ("struct_column.parquet", pa.table({"question": [{"a": 1}, {"a": 2}], "answer": ["1", "2"]}),
     "holds an object"),
    ("binary_column.parquet", pa.table({"question": pa.array([b"\xff\x00", b"a"]), "answer": ["1", "2"]}),
     "holds binary data"),
    ("map_column.parquet", pa.table({"question": pa.array([[("a", 1)], [("b", 2)]], pa.map_(pa.string(), pa.int64())),
                                     "answer": ["1", "2"]}), "could not be loaded"),
    ("no_columns.parquet", pa.table({}), "has no rows"),
    ("object_answer.jsonl", '{"question": "a", "answer": 1}\n{"question": "b", "answer": {"x": 1}}\n',
     "line 2: field 'answer' (task.answer_field) holds an object"),
    ("repeated_key.jsonl", '{"question": "a", "question": "b", "answer": 1}\n', "could not be loaded"),
    ("thousand_columns.csv", ",".join(f"c{i}" for i in range(1000)) + "\n" + ",".join("1" * 1000) + "\n",
     "c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, … (1000 in all)"),
]


def mutations(fmt, count=24, seed=0):
    """Seeded truncations, byte flips and junk insertions of a valid file of `fmt`."""
    rng = random.Random(seed)
    for k in range(count):
        data = bytearray(BASE[fmt])
        kind = k % 3
        if kind == 0:
            data = data[: rng.randrange(1, len(data))]
        elif kind == 1:
            for _ in range(rng.choice([1, 4, 32])):
                data[rng.randrange(len(data))] = rng.randrange(256)
        else:
            at = rng.randrange(len(data))
            data[at:at] = rng.randbytes(rng.randrange(1, 64))
        yield f"mutation{k:02d}.{fmt}", bytes(data)


def check(capsys, path):
    """`grpo check --no-model` on this file: (status, the one `grpo check:` line or None)."""
    status, lines, err = run_cli(capsys, "check", "--no-model", "task.source=file", f"task.path={path}",
                                 "task.num_eval=1", "rewards=[{name: format}]")
    capsys.readouterr()
    if status == 2:
        assert len(lines) == 1 and str(path) in lines[0], err
        return status, lines[0]
    assert status in (0, 1), err  # it loaded: the check itself ran (1: format alone cannot tell right from wrong)
    return status, None


BASE = {fmt: valid_bytes(fmt) for fmt in ("jsonl", "json", "csv")}


@pytest.fixture(scope="module", autouse=True)
def _parquet_base(tmp_path_factory):
    BASE["parquet"] = write_parquet(tmp_path_factory.mktemp("base") / "rows.parquet", pa.Table.from_pylist(ROWS))


@pytest.mark.parametrize("name, content, says", BREAKERS, ids=[b[0] for b in BREAKERS])
def test_files_that_break_the_parser_end_in_one_line(capsys, tmp_path, name, content, says):
    path = tmp_path / name
    if isinstance(content, pa.Table):
        write_parquet(path, content)
    else:
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    status, line = check(capsys, path)
    assert status == 2 and says in line, line


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_mutated_files_load_or_end_in_one_line(capsys, tmp_path, fmt):
    outcomes = []
    for name, data in mutations(fmt):
        path = tmp_path / name
        path.write_bytes(data)
        outcomes.append(check(capsys, path)[0])
    assert 2 in outcomes  # the mutations do break files


def test_an_enormous_valid_line_loads(tmp_path):
    path = tmp_path / "enormous.jsonl"
    path.write_text(json.dumps({"question": "x" * 20_000_000, "answer": "1"}) + "\n" + valid_bytes("jsonl").decode())
    table = read_table(str(path), "task.path")
    assert len(table.rows) == len(ROWS) + 1 and len(table.rows[0]["question"]) == 20_000_000


@pytest.mark.parametrize("content, says", [
    ("train:\n  num_steps: " + DEEP + "\n", "nested too deeply"),
    ("train: " + "{a: " * 20_000 + "1" + "}" * 20_000 + "\n", "nested too deeply"),
    ("\x00\x01\x02 binary", "is not valid YAML"),
])
def test_config_files_that_break_the_yaml_parser_end_in_one_line(capsys, tmp_path, content, says):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    status, lines, err = run_cli(capsys, "train", str(path))
    assert status == 2 and len(lines) == 1 and str(path) in lines[0] and says in lines[0], err
