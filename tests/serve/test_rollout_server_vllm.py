"""The rollout server with vLLM behind it: after a push its greedy outputs follow the trainer's
weights. Marked `vllm` (make test-vllm); skipped where vllm is not installed."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grpo.rollout import SamplingParams, SharedPrefixEngine
from grpo.serve.rollout_server import build_service, make_app
from tests.support.servers import GREEDY, TOKEN, ServerThread, client, render
from tests.support.tiny import make_tiny_model_dir

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
pytest.importorskip("vllm")
pytestmark = pytest.mark.vllm


def test_after_a_push_vllm_greedy_outputs_equal_the_in_process_engine(tmp_path_factory):
    # head_dim 32: vLLM's CPU attention has no kernels for the default tiny model's 16
    model_dir = make_tiny_model_dir(tmp_path_factory.mktemp("tiny_vllm_server"), hidden_size=128)
    service = build_service(str(model_dir), engine="vllm", group_timeout=30, engine_options={"enforce_eager": True})
    server = ServerThread(make_app(service, TOKEN))
    try:
        model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)
        engine = client(server.url, model, tokenizer)
        prompts = render(tokenizer)
        before = engine.generate(prompts, GREEDY)
        with torch.no_grad():
            model.model.layers[0].mlp.down_proj.weight.mul_(-3.0)
        engine.sync_weights(model, 1)
        ours = engine.generate(prompts, GREEDY)
        local = SharedPrefixEngine(model, tokenizer).generate(prompts, GREEDY)
        # same weights, different kernels: float32 argmax ties aside, the tokens agree
        same = sum(a == b for a, b in zip(ours.completion_ids.tolist(), local.completion_ids.tolist(), strict=True))
        assert same >= len(prompts) - 1
        assert ours.completion_ids.tolist() != before.completion_ids.tolist()  # the push reached vLLM
        assert ours.policy_version.tolist() == [1] * len(prompts)
        sampled = engine.generate(prompts, SamplingParams(2, 1.0, 1.0, 0, 8, seed=0))
        assert torch.isfinite(sampled.sampler_logprobs).all() and (sampled.sampler_logprobs[sampled.loss_mask == 1] < 0).all()
    finally:
        server.stop()
        service.engine.close()
