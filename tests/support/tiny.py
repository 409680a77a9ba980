"""A tiny randomly initialized Llama model + tokenizer on disk, for fast offline tests.

    path = make_tiny_model_dir(tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(path); tok = AutoTokenizer.from_pretrained(path)

The tokenizer is a byte-level BPE trained here on a small corpus of arithmetic and tag text,
with the ChatML special tokens of SmolLM2 at the same ids (<|endoftext|> 0, <|im_start|> 1,
<|im_end|> 2): eos = <|im_end|>, pad = <|endoftext|> (unlike SmolLM2, pad != eos, so tests
see both cases between this model and the bundled one). Building it takes well under a second.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN, PAD_TOKEN, BOS_TOKEN = "<|im_end|>", "<|endoftext|>", "<|im_start|>"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = [
        "You are a helpful assistant. First think about the problem step by step inside "
        "<think> </think> tags, then give only the final answer inside <answer> </answer> tags.",
        "system user assistant What is the sum of the numbers? Answer: The answer is",
        "0 1 2 3 4 5 6 7 8 9 + - * / = ( ) . , ? ! : ; # \n",
    ]
    for _ in range(300):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        lines.append(f"What is {a} + {b}? <think> {a} + {b} = {a + b} </think> <answer> {a + b} </answer>")
    return lines


def make_tokenizer(vocab_size: int = 384, seed: int = 0) -> PreTrainedTokenizerFast:
    """Byte-level BPE over the arithmetic corpus, wrapped with ChatML special tokens."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        unk_token=None,
        padding_side="left",
        chat_template=CHATML_TEMPLATE,
    )
    assert wrapped.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2]
    return wrapped


def make_tiny_model_dir(path: str | Path, vocab_size: int = 384, hidden_size: int = 64, num_layers: int = 2,
                        seed: int = 0, initializer_range: float = 0.2) -> Path:
    """Write make_tiny_model's model + tokenizer into `path`."""
    path = Path(path)
    model, tokenizer = make_tiny_model(vocab_size, hidden_size, num_layers, seed, initializer_range)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def make_tiny_model(vocab_size: int = 384, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                    initializer_range: float = 0.2) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """A random tiny LlamaForCausalLM (tied embeddings, fp32) and its tokenizer, in memory.

    initializer_range 0.2 rather than HF's 0.02: at 0.02 attention barely moves the
    residual stream, the model is a near-uniform bigram model and a test could not tell
    whether padding is masked; at 0.2 the context matters and sampling stays diverse
    (mean next-token entropy ~4.9 nats, uniform would be ~5.9).
    """
    tokenizer = make_tokenizer(vocab_size, seed)
    eos_id, pad_id, bos_id = (tokenizer.convert_tokens_to_ids(t) for t in (EOS_TOKEN, PAD_TOKEN, BOS_TOKEN))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id)
    return model, tokenizer


def make_tiny_reward_model_dir(path: str | Path, seed: int = 0) -> Path:
    """A random one-logit LlamaForSequenceClassification + the tiny tokenizer (a reward model)."""
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    tok = make_tokenizer()
    torch.manual_seed(seed)
    LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=tok.pad_token_id, num_labels=1,
    )).save_pretrained(path)
    tok.save_pretrained(path)
    return path
