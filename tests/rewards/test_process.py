"""Process supervision (DeepSeekMath 4.1.3): step rewards, their tokens, per-token advantages."""

import json
import math
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForTokenClassification

from grpo import algorithm, rewards
from grpo.config import RewardSpec, load_config
from grpo.rewards.harness import score
from grpo.rewards.steps import as_steps, place_steps, step_ends, step_reward, step_tokens
from grpo.tasks.base import Example
from grpo.training.trainer import train
from tests.support import REWARDS_FILE
from tests.support.runs import tiny_config
from tests.support.tiny import make_tokenizer

EX = Example("e0", [{"role": "user", "content": "What is 2 + 3?"}], "5")
S3 = 1 / math.sqrt(3)


def close(t, expected):
    torch.testing.assert_close(t.float(), torch.tensor(expected, dtype=torch.float32), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- the advantages

def test_process_advantages_by_hand():
    # G = 2: row 0 has steps [1, 0] ending at tokens 1 and 3, row 1 one step [0] ending at token 2.
    # All three step rewards {1, 0, 0}: mean 1/3, std (Bessel) = sqrt((4/9 + 1/9 + 1/9) / 2) = 1/sqrt(3),
    # so 1 -> (2/3) sqrt(3) = 2/sqrt(3) = 1.1547 and 0 -> -(1/3) sqrt(3) = -1/sqrt(3) = -0.5774.
    # A token's advantage sums the normalized rewards of the steps ending at or after it:
    # row 0: tokens 0-1 see both steps (2/sqrt(3) - 1/sqrt(3) = 1/sqrt(3)), tokens 2-3 the second (-1/sqrt(3));
    # row 1: tokens 0-2 see its step (-1/sqrt(3)), token 3 comes after its last step (0).
    adv = algorithm.process_advantages(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 1]),
                                       torch.tensor([1, 3, 2]), num_rows=2, length=4, group_size=2, eps=0.0)
    close(adv, [[S3, S3, -S3, -S3], [-S3, -S3, -S3, 0.0]])


def test_process_advantages_scales_equal_groups_and_shared_tokens():
    rewards_, rows, tokens = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0, 0, 1]), torch.tensor([1, 3, 2])
    # scale none: centred only (1 - 1/3 = 2/3, 0 - 1/3 = -1/3)
    none = algorithm.process_advantages(rewards_, rows, tokens, 2, 4, 2, scale="none")
    close(none, [[1 / 3, 1 / 3, -1 / 3, -1 / 3], [-1 / 3, -1 / 3, -1 / 3, 0]])
    # two groups: group 1 (rows 2, 3) all equal -> zeros; group 0 as by hand; batch std over all 5 rewards
    r = torch.tensor([1.0, 0.0, 0.0, 0.5, 0.5])
    both = algorithm.process_advantages(r, torch.tensor([0, 0, 1, 2, 3]), torch.tensor([1, 3, 2, 0, 0]), 4, 4, 2,
                                        eps=0.0)
    assert both[2:].abs().max() == 0 and both[0, 0].item() == pytest.approx(S3, abs=1e-6)
    batch = algorithm.process_advantages(r, torch.tensor([0, 0, 1, 2, 3]), torch.tensor([1, 3, 2, 0, 0]), 4, 4, 2,
                                         scale="batch", eps=0.0)
    assert batch[0, 3].item() == pytest.approx((0 - 1 / 3) / r.std().item(), abs=1e-6)
    # two steps ending in the same token both count there; one step alone in its group: zeros
    same = algorithm.process_advantages(torch.tensor([1.0, 1.0, 0.0]), torch.tensor([0, 0, 1]),
                                        torch.tensor([2, 2, 2]), 2, 3, 2, scale="none")
    assert same[0].tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3]) and same[1].tolist() == pytest.approx([-2 / 3] * 3)
    alone = algorithm.process_advantages(torch.tensor([3.0]), torch.tensor([1]), torch.tensor([0]), 2, 2, 2)
    assert alone.abs().max() == 0


def test_advantage_sources_and_a_per_token_loss():
    outcome, process = torch.tensor([1.0, -1.0]), torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    close(algorithm.ADVANTAGE_SOURCES["sum"](outcome, process), [[1.5, 1.0], [-1.0, -1.0]])
    assert algorithm.ADVANTAGE_SOURCES["outcome"](outcome, process) is outcome
    assert algorithm.ADVANTAGE_SOURCES["process"](outcome, process) is process
    # ratio 1: the grpo loss is -mean over sequences of the mean token advantage
    logprobs = torch.zeros(2, 2, requires_grad=True)
    mask = torch.ones(2, 2)
    per_token = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    loss, _ = algorithm.policy_loss(logprobs, logprobs.detach(), per_token, mask)
    assert loss.item() == pytest.approx(-(1.0 + 1.0) / 2)
    loss.backward()  # d loss / d logprob_it = -A_it / (|o_i| * B)
    close(logprobs.grad, [[-0.5, 0.0], [-0.25, -0.25]])
    # a constant per-token advantage is the per-row one
    flat, _ = algorithm.policy_loss(logprobs, logprobs.detach(), torch.tensor([1.0, -2.0]), mask)
    wide, _ = algorithm.policy_loss(logprobs, logprobs.detach(), torch.tensor([[1.0, 1.0], [-2.0, -2.0]]), mask)
    assert flat.item() == pytest.approx(wide.item())


# --------------------------------------------------------------------------- steps and their tokens

def test_delimiter_splits():
    text = "First 2 + 2 = 4.\n\nThen 4 * 3 = 12! Done"
    assert step_ends(text, "newline") == [text.index("\n") + 1, len(text)]
    assert [text[:e].rsplit(maxsplit=1)[-1] for e in step_ends(text, "sentence")] == ["4.", "12!", "Done"]
    assert step_ends("a ки b ки c", "tag:ки") == [4, 9]


def test_step_outputs_are_checked():
    text = "one\ntwo\n"
    assert as_steps([0.5, 1], text, "newline") == [(4, 0.5), (8, 1.0)]
    assert as_steps([(8, 1), (3, 0)], text, "offsets") == [(3, 0.0), (8, 1.0)]  # sorted by end
    for bad, says in [([1.0], "1 scores for the 2 steps"), (0.5, "not a list"), ("12", "not a list"),
                      ([1.0, float("nan")], "not a finite number")]:
        with pytest.raises(ValueError, match=says):
            as_steps(bad, text, "newline")
    for bad, says in [([(0, 1.0)], "outside the completion"), ([(9, 1.0)], "outside"), ([1.0], "not an"),
                      ([(2, "x")], "not a finite")]:
        with pytest.raises(ValueError, match=says):
            as_steps(bad, text, "offsets")


def test_steps_that_end_inside_a_token_belong_to_it():
    tok = make_tokenizer()
    text = "What is 12 + 34? 12 + 34 = 46 </think>"
    ids = tok.encode(text, add_special_tokens=False)
    spans, at = [], 0  # each token's characters in the decoded text
    for k in range(len(ids)):
        n = len(tok.decode(ids[: k + 1]))
        spans.append((at, n))
        at = n
    multi = [k for k, (a, b) in enumerate(spans) if b - a >= 2]
    assert multi, "the tiny tokenizer should merge some characters"
    ends = [spans[k][0] + 1 for k in multi] + [spans[k][1] for k in multi] + [len(text)]  # inside, at the end
    tokens = step_tokens(tok, ids, text, "", ends)
    assert tokens == multi + multi + [len(ids) - 1]
    # with an assistant prefix (prompt tokens), offsets count from the prefix's start
    assert step_tokens(tok, ids, "<think>" + text, "<think>", [e + 7 for e in ends]) == tokens
    assert step_tokens(tok, ids, "<think>" + text, "<think>", [3]) == [0]  # inside the prefix: the first token
    # a multi-turn episode scores its last turn: found at the end of the decoded ids
    assert step_tokens(tok, ids, "46 </think>", "", [2]) == step_tokens(tok, ids, text, "", [len(text) - 9])
    assert step_tokens(tok, ids, "not in there", "", [3]) is None


def test_place_steps_collects_rows_and_counts_unplaced():
    tok = make_tokenizer()
    texts = ["2 + 3 = 5", "nothing here", "9 + 1 = 10"]
    encoded = [tok.encode(t, add_special_tokens=False) for t in texts]
    width = max(map(len, encoded))
    ids = torch.tensor([e + [0] * (width - len(e)) for e in encoded])
    mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in encoded])
    placed = place_steps(tok, ids, mask, ["2 + 3 = 5", "nothing here", "different text"],
                         [[(9, 1.0)], [], [(5, 0.0)]], "")
    assert placed.rows.tolist() == [0] and placed.tokens.tolist() == [len(encoded[0]) - 1] and placed.unplaced == 1


# --------------------------------------------------------------------------- arithmetic_steps

@pytest.mark.parametrize("text, expected", [
    ("3 + 45 = 48, 48 - 2 = 46", [1.0, 1.0]),  # chain_sum's running sums
    ("3 + 45 = 49, 49 - 2 = 47", [0.0, 1.0]),  # a wrong step, then a right one from it
    ("3 + 4 = 7 + 1 = 8", [1.0, 1.0]),  # chained
    ("1,234 + 1,000 = 2,234", [1.0]),  # thousands separators
    ("5 \u2212 8 = \u22123 and \u22123 \u00d7 2 = -6", [1.0, 1.0]),  # unicode minus and times
    ("-2.5 * 2 = -5.0, 6 / 1.5 = 4, 7 / 2 = 3", [1.0, 1.0, 0.0]),  # decimals, negatives, exact division
    ("3 + = 5, = 7, x2 + 3 = 5, three plus four = 7", []),  # malformed: no steps
    ("1 / 0 = 1", [0.0]),  # division by zero is a wrong step, not an error
])
def test_arithmetic_steps_on_real_strings(text, expected):
    fn = rewards.get("arithmetic_steps")
    steps = fn(text, EX)
    assert [s for _, s in steps] == expected
    assert all(text[end - 1].isdigit() for end, _ in steps)  # each step ends at its result's last digit


def test_arithmetic_steps_options_and_harness():
    fn = rewards.get("arithmetic_steps", correct_score=1.0, wrong_score=-1.0)
    assert [s for _, s in fn("2 + 2 = 5 then 2 + 2 = 4", EX)] == [-1.0, 1.0]
    with pytest.raises(ValueError, match="wrong_score"):
        rewards.get("arithmetic_steps", wrong_score="no")
    built = rewards.build([RewardSpec("accuracy", 1.0), RewardSpec("arithmetic_steps", 0.5)])
    text = "<answer> 5 </answer> 2 + 3 = 5, 5 + 1 = 7"
    scores = score(built, [text, "no steps <answer> 4 </answer>"], [EX, EX])
    assert scores.total.tolist() == [1.0, 0.0]  # step rewards add nothing to the outcome total
    assert scores.steps[0] == [(text.index(","), 0.5), (len(text), 0.0)] and scores.steps[1] == []  # weighted
    assert scores.per_function["arithmetic_steps"][0].item() == 0.5  # mean step score, unweighted
    assert math.isnan(scores.per_function["arithmetic_steps"][1].item())


def test_a_user_step_reward_from_the_config_and_its_failures():
    def lines(completion, example):
        return [1.0 if "=" in line else 0.0 for line in completion.splitlines() if line.strip()]

    marked = step_reward("newline")(lambda c, e: [1.0] * len([ln for ln in c.splitlines() if ln.strip()]))
    name = rewards.register_function(lines)
    built = rewards.build([RewardSpec(name, 1.0, steps="newline")])
    assert not hasattr(lines, "steps")  # the config marks a wrapper, not the user's function
    scores = score(built + [("marked", 1.0, marked)], ["a = 1\nno\n", "x"], [EX, EX])
    assert scores.steps[0] == [(6, 1.0), (6, 1.0), (9, 0.0), (9, 1.0)] and scores.errors == {name: 0, "marked": 0}
    broken = rewards.build([RewardSpec(rewards.register_function(lambda c, e: [1.0, 2.0]), 1.0, steps="newline")])
    failed = score(broken, ["only one line"], [EX])
    assert failed.errors[broken[0].name] == 1 and failed.steps == [[]]


def test_step_reward_declares_a_reward_called_like_the_function(tmp_path):
    def lines(completion, example):
        return [1.0 for line in completion.splitlines() if line.strip()]

    marked = step_reward("newline")(lines)
    assert isinstance(marked, rewards.Reward) and marked.steps == "newline" and marked.fn is lines
    assert marked("a\nb", EX) == [1.0, 1.0] and not hasattr(lines, "steps")
    # given to grpo.train as an object, it keeps the name of the function it holds
    assert rewards.register_function(marked).startswith(f"python:{lines.__qualname__} ({__file__}:")
    # from a user file, decorated there: the signature checked is the function's
    path = tmp_path / "user_steps.py"
    path.write_text("from grpo.steps import step_reward\n\n@step_reward('newline')\n"
                    "def per_line(completion, example):\n    return [0.5] * len(completion.splitlines())\n")
    built = rewards.build([RewardSpec(f"{path}:per_line", 2.0)])
    assert built[0].fn.steps == "newline"
    assert score(built, ["x\ny"], [EX]).steps == [[(2, 1.0), (3, 1.0)]]


def test_config_names_the_steps_field_and_the_advantages_field():
    with pytest.raises(ValueError, match=r"rewards\[1\]\.steps.*newline, sentence, tag:<text>"):
        load_config(None, ["rewards=[{name: format}, {name: accuracy, steps: lines}]"])
    with pytest.raises(ValueError, match="algorithm.advantages"):
        load_config(None, ["algorithm.advantages=both"])


# --------------------------------------------------------------------------- process reward models

def _tiny(cls, tok, **kw):
    torch.manual_seed(0)
    return cls(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                           pad_token_id=tok.pad_token_id, **kw)).eval()


def test_process_reward_model_reads_the_good_token_at_each_step_tag(tmp_path):
    tok = make_tokenizer()
    model = _tiny(LlamaForCausalLM, tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fn = rewards.get("process_reward_model", path=str(tmp_path), step_tag="#", good_token="+", bad_token="-",
                     batch_size=2)
    completions = ["2 + 3 = 5\nso 5\n", "4 + 4 = 8\n", "no"]
    got = fn.batch(completions, [EX] * 3)
    # by hand for the first: question, then each step stripped + " " + the tag, tokenized piece by piece
    ids = tok.encode("What is 2 + 3? ", add_special_tokens=False)
    at = []
    for step in ("2 + 3 = 5", "so 5"):
        ids += tok.encode(step + " ", add_special_tokens=False) + tok.encode("#", add_special_tokens=False)
        at.append(len(ids) - 1)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
    good, bad = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
    expected = [torch.softmax(logits[p, [good, bad]], -1)[0].item() for p in at]
    assert [e for e, _ in got[0]] == [10, 15] and [s for _, s in got[0]] == pytest.approx(expected, abs=1e-5)
    assert len(got[1]) == 1 and got[2] == [(2, got[2][0][1])]
    one = fn(completions[1], EX)  # a batch of one scores the same
    assert one[0][1] == pytest.approx(got[1][0][1], abs=1e-5)
    # through the harness: steps placed, nothing failed; an input over max_length fails alone
    tight = rewards.get("process_reward_model", path=str(tmp_path), step_tag="#", max_length=12)
    scores = score([("prm", 1.0, fn), ("tight", 1.0, tight)], completions, [EX] * 3)
    assert scores.errors["prm"] == 0 and scores.errors["tight"] >= 1
    with pytest.raises(ValueError, match="good_token"):
        rewards.build([RewardSpec("process_reward_model", 1.0, {"path": str(tmp_path), "good_token": "good!"})])


def test_process_reward_model_token_classification(tmp_path):
    tok = make_tokenizer()
    model = _tiny(LlamaForTokenClassification, tok, num_labels=2)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    fn = rewards.get("process_reward_model", path=str(tmp_path), mode="token_classification", split="sentence")
    steps = fn("2 + 3 = 5. So 5.", EX)
    ids = tok.encode("What is 2 + 3? ", add_special_tokens=False)
    at = []
    for step in ("2 + 3 = 5.", "So 5."):
        ids += tok.encode(step + " ", add_special_tokens=False)
        at.append(len(ids) - 1)
    with torch.no_grad():
        probs = model(torch.tensor([ids])).logits[0, at].softmax(-1)[:, 1]
    assert [e for e, _ in steps] == [10, 16] and [s for _, s in steps] == pytest.approx(probs.tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="mode"):
        rewards.get("process_reward_model", path=str(tmp_path), mode="value_head")


# --------------------------------------------------------------------------- in the loop

def test_training_with_step_rewards(tmp_path, tiny_model_dir, data_file):
    steps = f"{REWARDS_FILE}:character_steps"
    cfg = tiny_config(tmp_path, tiny_model_dir, data_file, "rewards=[{name: format}, {name: arithmetic_steps}, "
                      f"{{name: '{steps}', steps: offsets}}]", "rollout.max_new_tokens=12", "checkpoint.every=0")
    train(cfg)
    lines = [json.loads(line) for line in (Path(cfg.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert all(m["process/steps"] > 0 and m["process/unplaced"] == 0 for m in lines)
    assert all(m[f"reward/{steps}/errors"] == 0 and m[f"reward/{steps}/mean"] > 0 for m in lines)
    samples = [json.loads(line) for line in (Path(cfg.output_dir) / "samples.jsonl").read_text().splitlines()]
    assert samples and all(isinstance(s["steps"], list) for s in samples)
    assert any(s["advantage"] != 0 for s in samples)  # the per-token advantages reached the records
    evals = [json.loads(line) for line in (Path(cfg.output_dir) / "eval.jsonl").read_text().splitlines()]
    last = evals[-1]
    assert 0 <= last[f"step_score/{steps}"] <= 1 and last[f"steps/{steps}"] > 0  # held-out step scores
    assert "step_score/arithmetic_steps" in last and "sampled_step_score/arithmetic_steps" not in last  # pass_k 1
