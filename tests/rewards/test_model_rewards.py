"""Model-based rewards on tiny random local models (built here, nothing downloaded)."""

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForSequenceClassification,
    PhiConfig,
    PhiForCausalLM,
)

from grpo import rewards
from grpo.cli import main
from grpo.config import RewardSpec
from grpo.rewards import WeightedReward, answers, score
from grpo.rewards.model_rewards import JUDGE_TEMPLATE
from grpo.tasks.base import Example
from tests.support.tiny import make_tokenizer

EXAMPLES = [
    Example("rm-0", [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2 + 3?"}], "5"),
    Example("rm-1", [{"role": "user", "content": "What is 40 + 2?"}], "42"),
]
COMPLETIONS = ["<think> 2 + 3 = 5 </think> <answer> 5 </answer>",
               "<think> 40 + 2 = 42, so the answer is clearly 42 </think> <answer> 41 </answer>"]


def _llama_config(tok, **kw):
    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, **kw)


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A random one-logit LlamaForSequenceClassification + the tiny ChatML tokenizer."""
    path = tmp_path_factory.mktemp("reward_model")
    tok = make_tokenizer()
    torch.manual_seed(0)
    LlamaForSequenceClassification(_llama_config(tok, num_labels=1)).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _direct_scores(path, completions, examples, label=0):
    """What the reward should be: the model's logit on each rendered text, one at a time."""
    tok = make_tokenizer()
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    out = []
    for c, ex in zip(completions, examples, strict=True):
        text = tok.apply_chat_template([*ex.prompt, {"role": "assistant", "content": c}], tokenize=False)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out.append(model(**ids).logits[0, label].item())
    return out


def test_reward_model_scores_prompt_plus_completion(reward_model_dir):
    fn = rewards.get("reward_model", path=str(reward_model_dir))
    expected = _direct_scores(reward_model_dir, COMPLETIONS, EXAMPLES)
    assert expected[0] != pytest.approx(expected[1])
    # one at a time, batched (rows of different lengths, padded), and in micro-batches of 1
    assert [fn(c, ex) for c, ex in zip(COMPLETIONS, EXAMPLES, strict=True)] == pytest.approx(expected, abs=1e-5)
    assert fn.batch(COMPLETIONS, EXAMPLES) == pytest.approx(expected, abs=1e-5)
    small = rewards.get("reward_model", path=str(reward_model_dir), batch_size=1)
    assert small.batch(COMPLETIONS, EXAMPLES) == pytest.approx(expected, abs=1e-5)
    # through build + the harness, which takes the batched path
    built = rewards.build([RewardSpec("reward_model", 2.0, {"path": str(reward_model_dir)})])
    scores = score(built, COMPLETIONS, EXAMPLES)
    assert scores.per_function["reward_model"].tolist() == pytest.approx(expected, abs=1e-5)
    assert scores.total.tolist() == pytest.approx([2 * e for e in expected], abs=1e-5)


def test_reward_model_label_option(tmp_path):
    tok = make_tokenizer()
    torch.manual_seed(1)
    LlamaForSequenceClassification(_llama_config(tok, num_labels=3)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="has 3 labels; set option `label`"):
        rewards.build([RewardSpec("reward_model", 1.0, {"path": str(tmp_path)})])
    with pytest.raises(ValueError, match="option `label` = 3 is invalid"):
        rewards.build([RewardSpec("reward_model", 1.0, {"path": str(tmp_path), "label": 3})])
    fn = rewards.get("reward_model", path=str(tmp_path), label=2)
    expected = _direct_scores(tmp_path, COMPLETIONS, EXAMPLES, label=2)
    assert fn.batch(COMPLETIONS, EXAMPLES) == pytest.approx(expected, abs=1e-5)


def test_model_rewards_check_their_options(tmp_path, reward_model_dir):
    for name in ("reward_model", "judge"):
        with pytest.raises(ValueError, match=f"reward `{name}` needs option `path`"):
            rewards.get(name)
        with pytest.raises(ValueError, match=f"reward `{name}` option `path` = .* a local model directory"):
            rewards.get(name, path=str(tmp_path / "missing"))
        with pytest.raises(ValueError, match=f"reward `{name}` option `batch_size` = 0"):
            rewards.get(name, path=str(reward_model_dir), batch_size=0)
        with pytest.raises(ValueError, match=f"reward `{name}` option `device` = 'tpu'"):
            rewards.get(name, path=str(reward_model_dir), device="tpu")
        with pytest.raises(ValueError, match=f"reward `{name}` has no option `lable`"):
            rewards.get(name, path=str(reward_model_dir), lable=1)
    with pytest.raises(ValueError, match="option `template`"):
        rewards.get("judge", path=str(reward_model_dir), template="no placeholders")
    with pytest.raises(ValueError, match="option `template` is invalid"):
        rewards.get("judge", path=str(reward_model_dir), template="{answer} {gold} {oops}")


# --------------------------------------------------------------------------- judge


@pytest.fixture(scope="module")
def phi_judge(tmp_path_factory):
    """A Phi model (its lm_head has a bias) whose last hidden state is zeroed by its final
    LayerNorm, so its next-token logits are exactly lm_head.bias whatever the prompt: we
    decide what it answers. Returns (path, write) where write(favour) re-saves it."""
    path = tmp_path_factory.mktemp("judge")
    tok = make_tokenizer()
    tok.save_pretrained(path)
    config = PhiConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=4, max_position_embeddings=512, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    model = PhiForCausalLM(config)
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]

    def write(favour: str):
        with torch.no_grad():
            model.model.final_layernorm.weight.zero_()
            model.model.final_layernorm.bias.zero_()
            model.lm_head.bias.zero_()
            model.lm_head.bias[yes if favour == "yes" else no] = 5.0
        model.save_pretrained(path)
        return str(path)

    return write


def test_judge_reads_the_next_token_probability_of_yes_vs_no(phi_judge):
    fn = rewards.get("judge", path=phi_judge("yes"))
    assert fn(COMPLETIONS[1], EXAMPLES[1]) == 1.0  # the judge is fooled: it only says Yes
    assert fn.batch(COMPLETIONS, EXAMPLES) == [1.0, 1.0]
    assert fn("I don't know", EXAMPLES[0]) == 0.0  # no answer to judge: not asked
    fn = rewards.get("judge", path=phi_judge("no"))
    assert fn(COMPLETIONS[0], EXAMPLES[0]) == 0.0
    assert fn.batch(COMPLETIONS, EXAMPLES) == [0.0, 0.0]


def test_judge_batches_like_single_calls(tiny_model_dir):
    """On a random Llama: each batched (left-padded) verdict equals an unpadded forward of its
    own prompt; soft=True exposes the probability so the comparison is not just 0/1."""
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    # " Yes" and " No" start with the same byte-level token "Ġ": only "Yes" / "No" tell them apart
    yes, no = tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]
    completions = ["<answer>5</answer>", "<answer>\\frac{84}{2}</answer>", "\\boxed{7}", "it is 40 + 2 = 42"]
    examples = [EXAMPLES[0], EXAMPLES[1], EXAMPLES[0], EXAMPLES[1]]
    expected = []
    for c, ex in zip(completions, examples, strict=True):
        text = JUDGE_TEMPLATE.format(question=ex.question, gold=ex.answer, answer=answers.extract_answer(c))
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                         add_generation_prompt=True)
        with torch.no_grad():
            logits = model(**tok(prompt, add_special_tokens=False, return_tensors="pt")).logits[0, -1]
        expected.append(torch.sigmoid(logits[yes] - logits[no]).item())  # P(Yes) / (P(Yes) + P(No))
    assert max(expected) - min(expected) > 1e-4  # the prompts do differ
    soft = rewards.get("judge", path=str(tiny_model_dir), soft=True, batch_size=3)
    assert soft.batch(completions, examples) == pytest.approx(expected, abs=1e-5)
    assert [soft(c, ex) for c, ex in zip(completions, examples, strict=True)] == pytest.approx(expected, abs=1e-5)
    hard = rewards.get("judge", path=str(tiny_model_dir), batch_size=3)
    verdicts = [1.0 if p > 0.5 else 0.0 for p in expected]
    assert hard.batch(completions, examples) == verdicts
    # and through the harness
    scores = score([WeightedReward("judge", 1.0, hard)], completions, examples)
    assert scores.per_function["judge"].tolist() == verdicts and scores.errors == {"judge": 0}


# --------------------------------------------------------------------------- timeouts


@pytest.mark.parametrize("name", ["judge", "reward_model"])
def test_model_rewards_are_not_limited_by_reward_timeout(tiny_model_dir, reward_model_dir, name):
    # A 1 ns reward_timeout fails any user function; a model reward's forward is not cut by it
    path = str(tiny_model_dir if name == "judge" else reward_model_dir)
    completions, examples = COMPLETIONS * 2, EXAMPLES * 2
    fn = rewards.get(name, path=path, batch_size=3)
    unlimited = score([WeightedReward(name, 1.0, fn)], completions, examples, timeout=None)
    scores = score([WeightedReward(name, 1.0, fn)], completions, examples, timeout=1e-9)
    assert scores.errors == {name: 0}
    assert scores.per_function[name].tolist() == unlimited.per_function[name].tolist()
    # its own option `timeout` does apply (the abandoned batch finishes and frees the model)
    limited = rewards.get(name, path=path, timeout=1e-9)
    limited.load()  # as rewards.build does: loading in the abandoned thread would race the next load
    assert score([WeightedReward(name, 1.0, limited)], completions, examples).errors == {name: 4}
    with pytest.raises(ValueError, match=f"reward `{name}` option `timeout` = 0 is invalid"):
        rewards.get(name, path=path, timeout=0)


def test_grpo_check_with_the_judge_is_not_cut_by_reward_timeout(capsys, tiny_model_dir, data_file):
    status = main(["check", "--no-model", f"model.path={tiny_model_dir}", "task.source=file",
                   f"task.path={data_file}", "task.num_eval=2", "reward_timeout=0.000001",
                   f"rewards=[{{name: format}}, {{name: judge, options: {{path: '{tiny_model_dir}'}}}}]"])
    err = capsys.readouterr().err
    assert status in (0, 1) and "Traceback" not in err, err  # 1: a random judge cannot tell right from wrong
    assert "timed out" not in err and "failed on" not in err, err
