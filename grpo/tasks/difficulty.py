"""Per-prompt difficulty, as plain numbers: pass-rate estimates, bands, batch allocation, curriculum.

No model, no tensors, no process group: grpo.tasks.sampling keeps the state (which prompt has
which counts, the curriculum's window), gathers the counts over ranks and draws with a seeded
generator; this module only says what those numbers mean.

The estimate is the mean of a Beta posterior over a prompt's chance to be solved: with prior
Beta(a, b) and s successes in n completions, (a + s) / (a + b + n). Chosen over the raw pass
rate s / n (prime-rl's difficulty pool reads the last group's mean reward) because
  - a prompt never seen has an estimate, a / (a + b) (0.5 under Beta(1, 1): learnable, so
    every prompt is visited before the pool judges it);
  - one group of G = 4 moves it far but not to the end: 4/4 gives 5/6, so the prompt is easy,
    but a later group can bring it back; s / n would say 1.0 after any lucky group;
  - the counts are sums, so ranks add theirs exactly (integers) and every rank holds the same
    estimate whatever the world size.
The policy changes between visits, so old counts fade: each visit multiplies the prompt's
counts by `decay` before adding the new ones (decay 0: only the last visit counts, as in
prime-rl; 1: every visit counts alike).
"""

from __future__ import annotations

BANDS = ("easy", "learnable", "hard")  # the pools of task.sampler=difficulty_pool, in this order


def pass_rate(successes: float, trials: float, prior: tuple[float, float]) -> float:
    """Beta posterior mean (a + s) / (a + b + n).

    successes, trials: a prompt's (decayed) counts; prior: (a, b) > 0.
    Example, prior (1, 1): unseen 1/2; 4 of 4 -> 5/6; 0 of 4 -> 1/6; 3 of 4 -> 4/6.
    """
    a, b = prior
    return (a + successes) / (a + b + trials)


def decayed(old: tuple[float, float], new: tuple[float, float], decay: float) -> tuple[float, float]:
    """One visit: (s, n) <- (decay * s + s_new, decay * n + n_new).

    Example, decay 0.5: (4, 4) then a visit with 2 of 4 -> (0.5*4 + 2, 0.5*4 + 4) = (4, 6),
    estimate under prior (1, 1) (1 + 4) / (2 + 6) = 5/8.
    """
    return decay * old[0] + new[0], decay * old[1] + new[1]


def band(rate: float, hard_below: float, easy_above: float) -> str:
    """easy if rate > easy_above, hard if rate < hard_below, else learnable (edges inclusive
    on the learnable side: prime-rl's "more than" / "less than" borders)."""
    if rate > easy_above:
        return "easy"
    if rate < hard_below:
        return "hard"
    return "learnable"


def allocate(n: int, weights: list[float], sizes: list[int]) -> list[int]:
    """How many of n draws each pool gets: n * w_k / sum(w) over the pools that have prompts,
    rounded by largest remainder (ties: the earlier pool), no pool given more than its size;
    what a full pool cannot take goes to the others by their weights, and where every pool is
    used up the draws start over (a batch may repeat a prompt only when it holds more draws
    than there are prompts with weight). Pools of weight 0 are never drawn from.

    Example: n = 8, weights (0.1, 0.8, 0.1), sizes (5, 30, 0): the hard pool is empty, so
    shares 8 * (1/9, 8/9) = (0.89, 7.11) -> floors (0, 7), the largest remainder (0.89) gets
    the last draw -> [1, 7, 0]. With sizes (5, 3, 0): [1, 7] caps the learnable pool at 3, its
    4 left over go to the easy pool -> [5, 3, 0].
    """
    if not any(w > 0 and s > 0 for w, s in zip(weights, sizes, strict=True)):
        raise ValueError("no pool with a positive weight holds a prompt")
    counts = [0] * len(sizes)
    left = n
    while left > 0:
        room = [s - c for s, c in zip(sizes, counts, strict=True)]
        open_ = [k for k, (w, r) in enumerate(zip(weights, room, strict=True)) if w > 0 and r > 0]
        if not open_:  # every weighted prompt is in the batch once: start another pass
            counts_pass = allocate(left, weights, sizes)
            return [c + p for c, p in zip(counts, counts_pass, strict=True)]
        total = sum(weights[k] for k in open_)
        shares = {k: left * weights[k] / total for k in open_}
        take = {k: min(int(shares[k]), room[k]) for k in open_}
        rest = left - sum(take.values())
        for k in sorted(open_, key=lambda k: (-(shares[k] - int(shares[k])), k)):
            if rest == 0:
                break
            if take[k] < room[k]:
                take[k] += 1
                rest -= 1
        for k in open_:
            counts[k] += take[k]
        left -= sum(take.values())
    return counts


def next_level(level: int, max_level: int, window: list[tuple[int, int]], size: int, threshold: float) -> int:
    """The curriculum's level after a step: one up when the last `size` steps at this level
    (window: their (successes, completions)) solved at least `threshold` of their completions
    together, and the level is not the last; else unchanged.

    Example, size 2, threshold 0.75: window [(3, 4), (4, 4)] -> 7/8 >= 0.75 -> level + 1;
    [(2, 4), (4, 4)] -> 6/8 -> level + 1; [(2, 4), (3, 4)] -> 5/8 -> unchanged; [(4, 4)]
    alone (one step, the window not yet full) -> unchanged.
    """
    if level >= max_level or len(window) < size:
        return level
    recent = window[-size:]
    solved, trials = sum(s for s, _ in recent), sum(n for _, n in recent)
    return level + 1 if trials and solved / trials >= threshold else level
