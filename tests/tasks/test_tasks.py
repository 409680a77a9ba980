"""Tasks: reasoning-gym generators and local files -> disjoint, prompted examples.

Every test runs with sockets disabled, so a loader that reaches for the network fails here.
Data files are written into tmp_path; nothing is downloaded.
"""

from __future__ import annotations

import json
import re
import socket

import pytest

from grpo.config import TaskConfig
from grpo.tasks import DEFAULT_SYSTEM_PROMPT, Task, build_task
from grpo.tasks.base import question_key
from grpo.tasks.files import parse_answer
from grpo.tasks.procedural import reasoning_gym_entry

WORKED = re.compile(r"^<think> (.+) </think> <answer> (.+) </answer>$", re.S)
DEMO_PARAMS = {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def rg(**kw) -> TaskConfig:
    base = dict(
        source="reasoning_gym",
        name="chain_sum",
        params=DEMO_PARAMS,
        num_train=200,
        num_eval=50,
        seed=7,
    )
    return TaskConfig(**{**base, **kw})


def keys(examples) -> set[str]:
    return {question_key(ex.question) for ex in examples}


def assert_well_formed(
    task: Task, few_shot: int, system: str | None = DEFAULT_SYSTEM_PROMPT
) -> None:
    """Prompts: [system], (user, assistant) * few_shot, user question; shots in the layout."""
    head = 1 if system else 0
    for ex in task.train + task.eval:
        roles = [m["role"] for m in ex.prompt]
        assert roles == ["system"] * head + ["user", "assistant"] * few_shot + ["user"]
        if system:
            assert ex.prompt[0]["content"] == system
        assert ex.prompt[-1]["content"] == ex.question == ex.metadata["question"]
        assert ex.answer.strip() == ex.answer != ""
    assert len(task.few_shot) == few_shot
    for i, shot in enumerate(task.few_shot):
        user, assistant = task.train[0].prompt[head + 2 * i], task.train[0].prompt[head + 2 * i + 1]
        assert user["content"] == shot.question
        match = WORKED.match(assistant["content"])
        assert match, assistant["content"]
        assert match.group(2) == shot.answer


def assert_disjoint(task: Task) -> None:
    assert not keys(task.train) & keys(task.eval)
    assert not keys(task.few_shot) & (keys(task.train) | keys(task.eval))
    assert len(keys(task.eval)) == len(task.eval)  # held-out questions are distinct


# --------------------------------------------------------------------------- reasoning-gym


def test_chain_sum_demo_params_give_small_integer_sums():
    task = build_task(rg(few_shot=2))
    assert task.name == "chain_sum"
    assert (len(task.train), len(task.eval)) == (200, 50)
    for ex in task.train + task.eval:
        # "State the final answer to the following arithmetic problem: 3 + 45 ="
        match = re.search(r"((?:\d{1,2} [+-] ){1,2}\d{1,2}) =$", ex.question)
        assert match, ex.question
        assert int(ex.answer) == eval(match.group(1))  # answers are integers, and right
        assert ex.metadata["reasoning_gym"]["expression"] == match.group(1)
    assert_well_formed(task, few_shot=2)
    assert_disjoint(task)
    # chain_sum's worked example shows running sums: "4 + 9 = 13" or "3 + 4 = 7, 7 - 2 = 5".
    think = WORKED.match(task.train[0].prompt[2]["content"]).group(1)
    assert re.fullmatch(r"-?\d+ [+-] \d+ = -?\d+(, -?\d+ [+-] \d+ = -?\d+)?", think), think
    # every example's gold demonstration (algorithm.aux_losses gold_sft) is its own worked answer, in the layout
    for ex in task.train[:20] + task.eval[:20]:
        shown = WORKED.match(ex.demonstration).group(1)
        assert re.fullmatch(r"-?\d+ [+-] \d+ = -?\d+(, -?\d+ [+-] \d+ = -?\d+)?", shown), shown
        assert shown.split(" = ")[-1] == ex.answer and ex.demonstration.endswith(f"<answer> {ex.answer} </answer>")


def test_procedural_split_is_deterministic_and_seeded():
    a, b, c = (
        build_task(rg(few_shot=1)),
        build_task(rg(few_shot=1)),
        build_task(rg(few_shot=1, seed=8)),
    )
    assert [e.id for e in a.train] == [e.id for e in b.train]
    assert [e.prompt for e in a.eval] == [e.prompt for e in b.eval]
    assert [e.question for e in a.eval] != [e.question for e in c.eval]


def test_small_question_space_still_gives_disjoint_splits():
    # 2 terms of 1 digit: only 200 distinct questions, so the generator repeats itself a lot;
    # train may repeat a question, but never one that is held out or a worked example.
    params = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}
    task = build_task(rg(params=params, num_train=300, num_eval=60, few_shot=3))
    assert (len(task.train), len(task.eval), len(task.few_shot)) == (300, 60, 3)
    assert_disjoint(task)


def test_task_sources_are_a_table_the_config_lists():
    import typing

    from grpo import config, tasks

    assert typing.get_args(typing.get_type_hints(config.TaskConfig)["source"]) == tuple(tasks.SOURCES)
    assert tuple(tasks.SOURCES) == ("reasoning_gym", "file", "hub")
    with pytest.raises(ValueError, match=r"`task.source` = 'hf' is invalid; allowed: reasoning_gym, file, hub"):
        build_task(TaskConfig(source="hf"))


def test_too_few_distinct_questions_is_a_clear_error():
    params = {"min_terms": 1, "max_terms": 1, "min_digits": 1, "max_digits": 1}  # 10 questions
    with pytest.raises(ValueError, match=r"too few distinct questions.*task\.num_eval"):
        build_task(rg(params=params, num_train=5, num_eval=20))


@pytest.mark.parametrize("name", ["basic_arithmetic", "gsm_symbolic", "leg_counting", "countdown"])
def test_other_reasoning_gym_tasks_work_offline(name):
    task = build_task(TaskConfig(name=name, num_train=4, num_eval=3, few_shot=1, seed=3))
    assert (len(task.train), len(task.eval)) == (4, 3)
    assert_well_formed(task, few_shot=1)
    assert_disjoint(task)
    entry = reasoning_gym_entry(task.eval[0])
    assert entry["metadata"]["source_dataset"] == name


def test_reasoning_gym_scores_its_own_gold_answer():
    import reasoning_gym

    task = build_task(TaskConfig(name="countdown", num_train=1, num_eval=2, seed=3))
    score = reasoning_gym.get_score_answer_fn("countdown")
    assert all(score(ex.answer, reasoning_gym_entry(ex)) == 1.0 for ex in task.eval)


def test_system_prompt_override_and_none():
    task = build_task(rg(num_train=3, num_eval=2, few_shot=1, system_prompt="Be brief."))
    assert_well_formed(task, few_shot=1, system="Be brief.")
    task = build_task(rg(num_train=3, num_eval=2, few_shot=1, system_prompt=""))
    assert_well_formed(task, few_shot=1, system=None)


def test_unknown_reasoning_gym_name_lists_available():
    with pytest.raises(
        ValueError, match=r"task\.name.*'chain_summ'.*did you mean chain_sum.*available include"
    ):
        build_task(rg(name="chain_summ"))


@pytest.mark.parametrize(
    "params, pattern",
    [
        ({"max_term": 3}, r"task\.params.*max_term.*accepted: .*max_terms"),
        ({"min_terms": 4, "max_terms": 2}, r"task\.params.*max_terms must be >= min_terms"),
        ({"seed": 1}, r"task\.params.*task\.seed"),
    ],
)
def test_bad_reasoning_gym_params(params, pattern):
    with pytest.raises(ValueError, match=pattern):
        build_task(rg(params=params))


# --------------------------------------------------------------------------- local files

ROWS = [{"question": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(10)]


def write(path, rows, kind=None):
    kind = kind or path.suffix
    if kind == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    elif kind == ".json":
        path.write_text(json.dumps(rows), encoding="utf-8")
    elif kind == ".csv":
        import csv

        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return str(path)


def ft(path, **kw) -> TaskConfig:
    return TaskConfig(source="file", path=path, **{"num_eval": 3, **kw})


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".csv", ".parquet"])
def test_every_file_format_loads_and_splits(tmp_path, suffix):
    path = write(tmp_path / f"data{suffix}", ROWS)
    task = build_task(ft(path, few_shot=1))
    assert task.name == f"data{suffix}"
    assert (len(task.eval), len(task.few_shot), len(task.train)) == (3, 1, 6)
    assert_well_formed(task, few_shot=1)
    assert_disjoint(task)
    by_question = {r["question"]: r["answer"] for r in ROWS}
    for ex in task.train + task.eval:
        assert ex.answer == by_question[ex.question]
        assert ex.id == f"data{suffix}:{ex.metadata['row']}"
    # train keeps file order
    assert [ex.metadata["row"] for ex in task.train] == sorted(
        ex.metadata["row"] for ex in task.train
    )


def test_file_split_is_seeded(tmp_path):
    path = write(tmp_path / "d.jsonl", ROWS)
    a, b, c = (build_task(ft(path, seed=s)) for s in (1, 1, 2))
    assert [e.id for e in a.eval] == [e.id for e in b.eval] != [e.id for e in c.eval]


def test_gsm8k_answers_and_reasoning(tmp_path):
    rows = [
        {
            "question": "Natalia sold 48 clips in April and half as many in May. Total?",
            "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72\n#### 72",
        },
        {"question": "A big sum?", "answer": "1000 + 234 = <<1000+234=1234>>1234\n#### 1,234"},
        {"question": "Four?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"},
    ]
    path = write(tmp_path / "gsm.jsonl", rows)
    evalp = write(tmp_path / "test.jsonl", [{"question": "Plain?", "answer": "7"}])
    task = build_task(ft(path, eval_path=evalp, few_shot=1))
    examples = {ex.question: ex for ex in task.train + task.eval + task.few_shot}
    assert examples[rows[0]["question"]].answer == "72"
    assert examples[rows[0]["question"]].metadata["reasoning"] == (
        "In May she sold 48/2 = <<48/2=24>>24 clips.\n48+24 = <<48+24=72>>72"
    )
    assert examples[rows[1]["question"]].answer == "1234"
    assert examples["Plain?"].answer == "7" and "reasoning" not in examples["Plain?"].metadata
    # The worked example shows its own reasoning, calculator annotations removed.
    shot = task.few_shot[0]
    think = WORKED.match(task.train[0].prompt[2]["content"]).group(1)
    assert think == re.sub(r"<<[^>]*>>", "", shot.metadata["reasoning"])
    # gold demonstrations (gold_sft): a row's own reasoning and answer; a row without reasoning a generic sentence
    natalia = examples[rows[0]["question"]].demonstration
    assert natalia == "<think> In May she sold 48/2 = 24 clips.\n48+24 = 72 </think> <answer> 72 </answer>"
    assert examples["Plain?"].demonstration.endswith("the result is 7. </think> <answer> 7 </answer>")


def test_mixed_types_with_blank_lines_explains(tmp_path):
    # datasets itself fails here ("Expected object or value"); the message says what to try.
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"question": "a", "answer": 1}\n\n{"question": "b", "answer": "x"}\n')
    msg = error(ft(str(path), num_eval=1))
    assert "mixed.jsonl" in msg and "removing the blank lines" in msg


@pytest.mark.parametrize(
    "raw, answer, reasoning",
    [
        ("So 3 * 4 = <<3*4=12>>12\n#### 12", "12", "So 3 * 4 = <<3*4=12>>12"),
        ("#### 1,000,000", "1000000", None),
        ("a #### b #### -3.5 ", "-3.5", "a #### b"),
        (" 1,2,3 ", "1,2,3", None),  # no ####: left as written
    ],
)
def test_parse_answer(raw, answer, reasoning):
    assert parse_answer(raw) == (answer, reasoning)


def test_eval_path_caps_and_dedupes(tmp_path):
    train = write(
        tmp_path / "train.jsonl", ROWS + [{"question": "held  out\tquestion", "answer": "1"}]
    )
    held = [{"question": "held out question", "answer": "1"}] + [
        {"question": f"eval {i}", "answer": str(i)} for i in range(5)
    ]
    evalp = write(tmp_path / "test.csv", held)
    task = build_task(ft(train, eval_path=evalp, num_eval=4))
    assert [ex.question for ex in task.eval] == ["held out question", "eval 0", "eval 1", "eval 2"]
    assert len(task.train) == 10  # the whitespace variant of a held-out question is dropped
    assert_disjoint(task)


def test_csv_keeps_answers_as_text(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"a, b?",007\nc?,None\nd?,NA\ne?,1.50\n', encoding="utf-8")
    task = build_task(ft(str(path), num_eval=0))
    assert [ex.answer for ex in task.train] == ["007", "None", "NA", "1.50"]
    assert task.train[0].question == "a, b?"


def test_numeric_json_answers_become_text_and_id_field(tmp_path):
    rows = [{"uid": f"q{i}", "question": f"q {i}", "answer": i} for i in range(4)]
    task = build_task(ft(write(tmp_path / "d.parquet", rows), num_eval=1, id_field="uid"))
    assert sorted(ex.id for ex in task.train + task.eval) == ["q0", "q1", "q2", "q3"]
    assert all(ex.answer == ex.id[1:] for ex in task.train + task.eval)


def test_custom_field_names_and_blank_lines(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(
        '{"problem": "p1", "solution": "1"}\n\n{"problem": "p2", "solution": "2"}\n',
        encoding="utf-8",
    )
    task = build_task(ft(str(path), num_eval=1, question_field="problem", answer_field="solution"))
    assert sorted(ex.answer for ex in task.train + task.eval) == ["1", "2"]


# --------------------------------------------------------------------------- file errors


def error(cfg: TaskConfig) -> str:
    with pytest.raises(ValueError) as info:
        build_task(cfg)
    return str(info.value)


def test_missing_file(tmp_path):
    msg = error(ft(str(tmp_path / "nope.jsonl")))
    assert "task.path" in msg and "nope.jsonl" in msg and "does not exist" in msg
    write(tmp_path / "t.jsonl", ROWS)
    msg = error(ft(str(tmp_path / "t.jsonl"), eval_path=str(tmp_path / "e.csv")))
    assert "task.eval_path" in msg and "e.csv" in msg


def test_unsupported_extension(tmp_path):
    (tmp_path / "d.txt").write_text("hello", encoding="utf-8")
    msg = error(ft(str(tmp_path / "d.txt")))
    assert "'.txt'" in msg and ".jsonl, .json, .csv, .parquet" in msg


def test_invalid_json_line_names_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(
        '{"question": "a", "answer": "1"}\n\n{"question": "b", answer: 2}\n', encoding="utf-8"
    )
    msg = error(ft(str(path)))
    assert "bad.jsonl" in msg and "line 3" in msg and "invalid JSON" in msg


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "a", "answer": "1"}\n[1, 2]\n', encoding="utf-8")
    msg = error(ft(str(path)))
    assert "line 2" in msg and "expected a JSON object" in msg and "an array" in msg


@pytest.mark.parametrize(
    "bad, state",
    [({"question": "b"}, "missing (null)"), ({"question": "b", "answer": " "}, "empty")],
)
def test_jsonl_missing_or_empty_field_names_line_and_columns(tmp_path, bad, state):
    path = tmp_path / "d.jsonl"
    path.write_text(
        "\n".join(json.dumps(r) for r in [ROWS[0], ROWS[1], bad]) + "\n", encoding="utf-8"
    )
    msg = error(ft(str(path)))
    assert f"'{path}' line 3: field 'answer' (task.answer_field) is {state}" in msg
    assert "columns: question, answer" in msg


def test_wrong_question_field_lists_columns(tmp_path):
    msg = error(ft(write(tmp_path / "d.csv", ROWS), question_field="prompt"))
    assert "d.csv" in msg and "row 0 (0-based, line 2)" in msg
    assert "'prompt'" in msg and "no such column" in msg and "columns: question, answer" in msg


def test_json_array_errors_name_rows(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([ROWS[0], {"question": "x", "answer": ""}]), encoding="utf-8")
    assert "row 1 (0-based): field 'answer'" in error(ft(str(path)))
    path.write_text('[\n  {"question": "x",\n   "answer": }\n]', encoding="utf-8")
    msg = error(ft(str(path)))
    assert "d.json" in msg and "line 3" in msg and "invalid JSON" in msg
    path.write_text(json.dumps({"data": ROWS}), encoding="utf-8")
    assert "expected a JSON array of objects" in error(ft(str(path)))
    path.write_text(json.dumps([ROWS[0], "oops"]), encoding="utf-8")
    assert "row 1 (0-based): expected a JSON object" in error(ft(str(path)))


def test_csv_errors_name_rows_and_lines(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("question,answer\na,1\nb,2,3\n", encoding="utf-8")
    msg = error(ft(str(path)))
    assert "d.csv" in msg and "line 3: 3 fields, but the header has 2" in msg
    path.write_text('question,answer\n"multi\nline",1\nb,\n', encoding="utf-8")
    assert "row 1 (0-based, line 4): field 'answer' (task.answer_field) is empty" in error(
        ft(str(path))
    )


def test_parquet_errors_name_rows(tmp_path):
    path = write(tmp_path / "d.parquet", [ROWS[0], {"question": None, "answer": "3"}])
    assert "row 1 (0-based): field 'question' (task.question_field) is missing (null)" in error(
        ft(path)
    )
    (tmp_path / "fake.parquet").write_bytes(b"not parquet at all")
    assert "fake.parquet" in error(ft(str(tmp_path / "fake.parquet")))


def test_not_utf8_names_byte_offset(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("question,answer\ncaf\xe9?,1\n".encode("latin-1"))
    msg = error(ft(str(path)))
    assert "latin.csv" in msg and "not UTF-8" in msg and "byte offset 19" in msg and "line 2" in msg


@pytest.mark.parametrize(
    "name, text",
    [("e.jsonl", "\n\n"), ("e.json", "[]"), ("e.csv", ""), ("h.csv", "question,answer\n")],
)
def test_empty_files(tmp_path, name, text):
    (tmp_path / name).write_text(text, encoding="utf-8")
    msg = error(ft(str(tmp_path / name)))
    assert name in msg and ("no rows" in msg or "empty" in msg)


def test_empty_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())}),
        tmp_path / "e.parquet",
    )
    assert "no rows" in error(ft(str(tmp_path / "e.parquet")))


def test_too_few_rows_for_the_split(tmp_path):
    msg = error(ft(write(tmp_path / "d.jsonl", ROWS[:3]), num_eval=3))
    assert "d.jsonl" in msg and "task.num_eval" in msg


def test_duplicate_ids_and_empty_gsm8k_answer(tmp_path):
    rows = [{"id": "a", **ROWS[0]}, {"id": "a", **ROWS[1]}]
    msg = error(ft(write(tmp_path / "d.jsonl", rows), id_field="id"))
    assert "line 2" in msg and "'a'" in msg and "line 1" in msg
    msg = error(ft(write(tmp_path / "g.jsonl", [{"question": "q", "answer": "so ####  "}])))
    assert "line 1" in msg and "nothing after '####'" in msg
