"""A seeded mutation fuzz of both servers' request decoders: flipped bytes, truncations, every
numeric field NaN / inf / negative / huge / of the wrong JSON type, wrong dtypes and shapes.
Each decoder must return or raise a 4xx BadRequest, never anything else; the servers answer a
sample of the same bodies with no 5xx and still serve a valid request afterwards. Bounded:
fixed seeds and counts, no clock."""

import json
import random
import re

import pytest
import torch
from safetensors.torch import save

from grpo.rollout import SamplingParams
from grpo.serve.common import BadRequest
from grpo.serve.protocol import LOGPROBS_PATH, Limits, decode_request, encode_request
from grpo.serve.rollout_protocol import (
    GENERATE_PATH,
    decode_generate,
    decode_session,
    decode_weights,
    encode_generate,
)
from grpo.trajectory import TokenSequences
from tests.serve.test_rollout_server import post
from tests.support.servers import TOKEN, ServerThread

VOCAB = 300
LIMITS = Limits(max_body_bytes=64 * 1024, max_rows=16, max_tokens=256)
BAD_NUMBERS = [float("nan"), float("inf"), float("-inf"), -1, -(2**70), 2**70, 1e300, 0.5, True, "1", None, [], {}]
FIELDS = ("group_size", "temperature", "top_p", "top_k", "max_new_tokens", "seed", "stop", "min_version")


def generate_body(request=None, ids=None, lengths=None) -> bytes:
    base = json.loads(json.dumps({"group_size": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                  "max_new_tokens": 4, "seed": 1, "stop": [], "min_version": 0}))
    tensors = {"prompt_ids": torch.tensor([5, 6, 7]) if ids is None else ids,
               "prompt_lengths": torch.tensor([3]) if lengths is None else lengths}
    return save(tensors, metadata={"request": json.dumps(base if request is None else request)})


def logprobs_body(**replace) -> bytes:
    batch = TokenSequences(torch.tensor([[0, 5, 6]]), torch.tensor([[0, 1, 1]]), torch.tensor([[7, 8]]),
                           torch.tensor([[1, 0]]))
    tensors = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
               "completion_ids": batch.completion_ids, "completion_mask": batch.completion_mask,
               "temperature": torch.tensor([0.7], dtype=torch.float64)}
    return save({**tensors, **replace})


def byte_mutations(body: bytes, rng: random.Random, n: int) -> list[bytes]:
    out = []
    for _ in range(n):
        b = bytearray(body)
        kind = rng.randrange(4)
        if kind == 0:  # flip a few bytes, often in the header
            for _ in range(rng.randint(1, 4)):
                i = rng.randrange(min(len(b), 200) if rng.random() < 0.7 else len(b))
                b[i] ^= 1 << rng.randrange(8)
        elif kind == 1:
            b = b[: rng.randrange(len(b))]  # truncated
        elif kind == 2:  # a different header length
            b[:8] = rng.choice([0, 1, 7, len(b), 2**63, 2**64 - 1, rng.randrange(2**16)]).to_bytes(8, "little")
        else:
            b += bytes(rng.randrange(1, 64))  # trailing bytes
        out.append(bytes(b))
    return out


def generate_cases(rng: random.Random) -> list[bytes]:
    good = generate_body()
    request = json.loads(json.dumps({"group_size": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                     "max_new_tokens": 4, "seed": 1, "stop": [], "min_version": 0}))
    cases = byte_mutations(good, rng, 300)
    for field in FIELDS:
        for value in BAD_NUMBERS + [[""], [1], ["x"] * 1000, "x" * 300]:
            cases.append(generate_body({**request, field: value}))
        cases.append(generate_body({k: v for k, v in request.items() if k != field}))
    for ids, lengths in [(torch.tensor([5.0, 6.0]), torch.tensor([2])), (torch.tensor([[5, 6]]), torch.tensor([2])),
                         (torch.tensor([5, 6]), torch.tensor([2 ** 62, 2 ** 62, -(2 ** 63) + 2])),
                         (torch.tensor([5, 6]), torch.tensor([3, -1])), (torch.tensor([-1, 6]), torch.tensor([2])),
                         (torch.tensor([5, VOCAB]), torch.tensor([2])), (torch.tensor([], dtype=torch.int64),
                                                                          torch.tensor([], dtype=torch.int64)),
                         (torch.tensor([5, 6], dtype=torch.int32), torch.tensor([2], dtype=torch.int32))]:
        cases.append(generate_body(ids=ids, lengths=lengths))
    cases += [generate_body(v) for v in ([1, 2], "x", None, 3)] + [save({"x": torch.ones(1)})]
    for value in BAD_NUMBERS + [[2, 2], [0], [2**30], [True], ["2"], [2.0], [1] * 20]:  # one prompt: one size
        cases.append(generate_body({**request, "group_sizes": value}))
    return cases


def logprobs_cases(rng: random.Random) -> list[bytes]:
    cases = byte_mutations(logprobs_body(), rng, 300)
    for value in (float("nan"), float("inf"), float("-inf"), -1.0, 0.0, 1e308):
        cases.append(logprobs_body(temperature=torch.tensor([value], dtype=torch.float64)))
    for name in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "temperature"):
        for t in (torch.tensor([[1.0, 1.0]]), torch.ones(2, 2, 2, dtype=torch.int64), torch.empty(0, 3, dtype=torch.int64),
                  torch.tensor([[-1, 2**62, 1]]), torch.tensor([[2, 2]]), torch.tensor([0.7], dtype=torch.float32),
                  torch.ones(2, dtype=torch.float64)):
            cases.append(logprobs_body(**{name: t}))
    return cases


def json_cases(rng: random.Random, good: dict) -> list[bytes]:
    cases = byte_mutations(json.dumps(good).encode(), rng, 100)
    for field in good:
        for value in BAD_NUMBERS + ["../x", "a" * 100]:
            cases.append(json.dumps({**good, field: value}).encode())
    return cases + [b"[]", b"null", b"\xff\xfe", b""]


def assert_4xx_or_fine(decode, body) -> None:
    try:
        decode(body)
    except BadRequest as e:
        assert 400 <= e.status < 500, (e.status, str(e), body[:200])


def test_the_decoders_answer_every_mutation_with_a_4xx_or_a_valid_request():
    rng = random.Random(0)
    for body in generate_cases(rng):
        assert_4xx_or_fine(lambda b: decode_generate(b, LIMITS, VOCAB), body)
    for body in logprobs_cases(rng):
        assert_4xx_or_fine(lambda b: decode_request(b, LIMITS, VOCAB), body)
    for body in json_cases(rng, {"session": "abc123"}):
        assert_4xx_or_fine(decode_session, body)
    announcement = {"session": "abc", "version": 1, "tensors": [{"name": "w", "shape": [2, 3], "dtype": "float32"}]}
    for body in json_cases(rng, announcement):
        assert_4xx_or_fine(decode_weights, body)
    from grpo.serve.nccl import decode_store

    for body in json_cases(rng, {"op": "set", "key": "k", "value": "AAE=", "amount": 1, "expected": "AA=="}):
        assert_4xx_or_fine(decode_store, body)


def test_temperature_nan_is_a_400_naming_the_field():
    body = generate_body({"group_size": 2, "temperature": float("nan"), "top_p": 1.0, "top_k": 0,
                          "max_new_tokens": 4, "seed": 1, "stop": [], "min_version": 0})
    with pytest.raises(BadRequest, match="temperature") as e:
        decode_generate(body, LIMITS, VOCAB)
    assert e.value.status == 400


def test_group_sizes_travel_and_bad_ones_are_a_400_naming_the_field():
    request = {"group_size": 2, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 4, "seed": 1,
               "stop": [], "min_version": 0}
    prompts, params, _ = decode_generate(generate_body({**request, "group_sizes": [5]}), LIMITS, VOCAB)
    assert params.group_sizes == (5,) and params.sizes(1) == [5]
    assert decode_generate(generate_body(request), LIMITS, VOCAB)[1].group_sizes is None  # left out: G each
    for value, message in (([0], "`group_sizes` = [0] is invalid"), ([2, 2], "holds 2 sizes for 1 prompts"),
                           ([17], "17 rows")):  # LIMITS.max_rows = 16
        with pytest.raises(BadRequest, match=re.escape(message)):
            decode_generate(generate_body({**request, "group_sizes": value}), LIMITS, VOCAB)


def push_cases(rng: random.Random, params: dict) -> list[bytes]:
    from grpo.serve.weights import TensorSpec, encode_header

    specs = [TensorSpec(name, tuple(p.shape), "float32") for name, p in params.items()]
    good = encode_header(specs, 3) + bytes(sum(s.num_bytes for s in specs))
    cases = byte_mutations(good[:4000], rng, 150) + byte_mutations(good, rng, 20)
    header = json.loads(good[8 : 8 + int.from_bytes(good[:8], "little")])
    first = next(k for k in header if k != "__metadata__")
    for key, values in (("dtype", ["I64", "F8", None, 3]), ("shape", [[-1], [2**70], [1] * 20, "x", [True], [0.5]]),
                        ("data_offsets", [[0], [5, 2], [-1, 3], [0, 2**70], "x", [0.0, 4.0]])):
        for v in values:
            h = json.loads(json.dumps(header))
            h[first][key] = v
            raw = json.dumps(h).encode()
            cases.append(len(raw).to_bytes(8, "little") + raw)
    for v in ["-1", "x", 3, None, "9" * 30]:
        h = {**header, "__metadata__": {"version": v}}
        raw = json.dumps(h).encode()
        cases.append(len(raw).to_bytes(8, "little") + raw)
    return cases


@pytest.fixture(scope="module")
def servers(tiny_model_dir):
    from grpo.compute.models import load_frozen
    from grpo.config import ModelConfig
    from grpo.serve import rollout_server, server

    service = rollout_server.build_service(str(tiny_model_dir), engine="shared_prefix", group_timeout=5)
    rollout = ServerThread(rollout_server.make_app(service, TOKEN, LIMITS))
    reference = ServerThread(server.make_app(load_frozen(ModelConfig(path=str(tiny_model_dir))), TOKEN, LIMITS))
    yield rollout, reference, service
    rollout.stop()
    reference.stop()


def test_the_servers_never_answer_5xx_and_keep_serving(servers):
    from grpo.serve.rollout_protocol import WEIGHTS_PATH

    rollout, reference, service = servers
    rng = random.Random(1)
    sample = lambda cases, n: rng.sample(cases, min(n, len(cases)))  # noqa: E731
    for body in sample(generate_cases(rng), 60):
        assert post(rollout.port, GENERATE_PATH, body)[0] < 500
    for body in push_cases(rng, service.params):
        status, reply = post(rollout.port, WEIGHTS_PATH, body)
        assert 400 <= status < 500, (status, reply[:200])
    assert service.version == 0 and service.pending == -1  # no push went through or stayed pending
    for body in sample(logprobs_cases(rng), 60):
        assert post(reference.port, LOGPROBS_PATH, body)[0] < 500
    valid = encode_generate([[5, 6, 7]], SamplingParams(2, 1.0, 1.0, 0, 4, seed=0), 0)
    assert post(rollout.port, GENERATE_PATH, valid)[0] == 200
    batch = TokenSequences(torch.tensor([[5, 6]]), torch.tensor([[1, 1]]), torch.tensor([[7]]), torch.tensor([[1]]))
    assert post(reference.port, LOGPROBS_PATH, encode_request(batch, 0.7), token=TOKEN)[0] == 200
