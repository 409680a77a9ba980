"""Under torchrun every rank holds the same pass-rate estimates (each sees only its share of the groups)
and so draws the same prompts: 2 processes on gloo (tests/compute/test_distributed.py's torchrun)."""

import json

from tests.compute.test_distributed import torchrun, train_args
from tests.support import SUPPORT
from tests.support.runs import LENGTH_REWARD

WORKER = SUPPORT / "dist_sampling_worker.py"


def test_two_ranks_hold_equal_estimates_and_draw_the_same_prompts(tmp_path, tiny_model_dir):
    out = tmp_path / "ranks"
    out.mkdir()
    args = train_args(tmp_path, tiny_model_dir, tmp_path / "run", 2, "task.sampler=difficulty_pool",
                      f"task.difficulty.success_reward='{LENGTH_REWARD}'", "task.difficulty.success_threshold=0.5",
                      "eval.num_examples=0")[3:]  # without `-m grpo train`
    torchrun(2, str(WORKER), str(out), *args)
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]
    counts, drawn = ranks[0]["state"]["counts"], ranks[0]["drawn"]
    # step 1: 4 unseen prompts, rank 0 generated for the first 2, rank 1 for the others: all 4 counted once, G = 4
    assert len(drawn) == 2 and len(set(drawn[0])) == 4
    assert all(key in counts for key in drawn[0])
    assert all(counts[key][1] == 4 for key in set(drawn[0]) - set(drawn[1]))
