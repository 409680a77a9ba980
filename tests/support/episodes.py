"""Episodes on the tiny model: example questions, an episode sampler, the echo environment."""

from grpo.episodes.environment import environment_factory
from grpo.episodes.turns import EpisodeSampler, EpisodeSettings
from grpo.tasks import Example, PromptFormat
from tests.support import ENVIRONMENTS_FILE

EXAMPLES = [Example(f"q{i}", [{"role": "user", "content": q}], "7")
            for i, q in enumerate(["What is 3 + 4?", "What is 12 + 30 + 7? Think."])]

def sampler(engine, make_env, max_turns=3, budget=64, tool_format="hermes", prefix=""):
    return EpisodeSampler(engine, engine.tokenizer, PromptFormat(None, prefix), make_env,
                          EpisodeSettings(max_turns, budget, tool_format))


def echo(**options):
    return environment_factory(f"{ENVIRONMENTS_FILE}:Echo", options)


