"""Group sizes under a fixed budget: how many completions each prompt of a round gets.

    sizes = GROUP_POLICIES[name](pass_rates, budget, min_group_size, max_group_size, group_size)

Plain numbers in, a list of ints out (no tensors, no process group), so every rank that holds
the same estimates computes the same sizes.

A group teaches something only when its rewards differ. With pass rate p and G independent
completions that happens with probability

    f_p(G) = 1 - p^G - (1 - p)^G                    (not all solved, not all failed)

adaptive maximises the expected number of informative groups, sum_i f_{p_i}(G_i), subject to
sum_i G_i = budget and min_group_size <= G_i <= max_group_size. The marginal gain of one more
completion is

    d_p(G) = f_p(G + 1) - f_p(G) = p (1 - p) (p^(G-1) + (1 - p)^(G-1)),

which does not increase with G (both powers shrink; for p in {0, 1} it is 0 throughout), so
every f_p is concave in G and the objective is a separable concave sum over a box and one
budget constraint. For such a problem greedy marginal allocation is optimal (the classical
resource-allocation result: Gross 1956; Ibaraki & Katoh 1988): start every prompt at
min_group_size and give each next completion to the prompt whose d_p(G_i) is largest, up to
max_group_size, until the budget is spent. Ties go to the earlier prompt, which spreads the
budget round-robin among prompts of one pass rate, so equal estimates and budget = n G give
every prompt G (the fixed policy's sizes).

Hand-worked example: p = (0.5, 0.9, 0.99), budget 9, min 2, max 5.
    start (2, 2, 2), 3 completions to give.
    gains at G = 2: d(0.5) = 0.25 (0.5 + 0.5) = 0.25; d(0.9) = 0.09 (0.9 + 0.1) = 0.09;
                    d(0.99) = 0.0099 (0.99 + 0.01) = 0.0099
    1st -> prompt 0 (0.25); its gain at 3: 0.25 (0.25 + 0.25) = 0.125
    2nd -> prompt 0 (0.125 > 0.09); its gain at 4: 0.25 (0.125 + 0.125) = 0.0625
    3rd -> prompt 1 (0.09 > 0.0625)
    -> sizes (4, 3, 2): informative groups 0.875 + 0.27 + 0.0198 = 1.1648, the best of every
       split of 9 within [2, 5] (tests/algorithm/test_allocation.py checks it by brute force).

A budget of tokens instead of completions (Knapsack RL's form, arXiv 2509.25849): prompt i's
completion costs c_i expected tokens (its own mean completion length so far), and the constraint
is sum_i c_i G_i <= budget. Greedy then gives each next completion to the prompt with the largest
gain per token, d_p(G_i) / c_i, among those whose next completion still fits, and stops when none
does: a knapsack's greedy, optimal for the problem's continuous relaxation and within one
completion's gain of the integer optimum. Equal costs reduce it to the count budget's greedy.

Hand-worked example: p = (0.5, 0.5), costs (10, 40) tokens, budget 140, min 2, max 8.
    start (2, 2): 20 + 80 = 100 tokens, 40 left.
    gains per token at G = 2: 0.25 / 10 = 0.025 and 0.25 / 40 = 0.00625
    1st -> prompt 0 (110 tokens; gain at 3: 0.125 / 10 = 0.0125), 2nd -> prompt 0 (120; 0.00625),
    3rd: a tie at 0.00625, the earlier prompt 0 (130; next 0.003125), 4th -> prompt 1 costs 40 > 10
    left: no longer fits; prompt 0 (140) -> sizes (6, 2), 140 tokens.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable


def informative_probability(p: float, G: int) -> float:
    """f_p(G) = 1 - p^G - (1-p)^G: the chance that a group of G completions holds both a solved
    and a failed one. # p 0.5, G 2 -> 1 - 0.25 - 0.25 = 0.5"""
    return 1.0 - p**G - (1.0 - p) ** G


def marginal_gain(p: float, G: int) -> float:
    """d_p(G) = f_p(G + 1) - f_p(G) = p (1-p) (p^(G-1) + (1-p)^(G-1)), in the closed form (no
    cancellation of two nearly equal f's). # p 0.5, G 2 -> 0.25 (0.5 + 0.5) = 0.25"""
    return p * (1.0 - p) * (p ** (G - 1) + (1.0 - p) ** (G - 1))


def check_budget(num_prompts: int, budget: int, min_group_size: int, max_group_size: int) -> None:
    if not 1 <= min_group_size <= max_group_size:
        raise ValueError(f"group sizes need 1 <= min_group_size <= max_group_size, got {min_group_size} and "
                         f"{max_group_size}")
    if not num_prompts * min_group_size <= budget <= num_prompts * max_group_size:
        raise ValueError(f"a budget of {budget} completions cannot be split over {num_prompts} prompts of "
                         f"{min_group_size} to {max_group_size} completions each: expected "
                         f"{num_prompts * min_group_size} to {num_prompts * max_group_size}")


def adaptive_sizes(pass_rates: list[float], budget: float, min_group_size: int, max_group_size: int,
                   group_size: int = 0, costs: list[float] | None = None) -> list[int]:
    """Greedy marginal allocation of the budget over the prompts (module docstring).

    costs None: `budget` completions, maximising sum_i f_{p_i}(G_i) with min_group_size <= G_i <=
    max_group_size and sum_i G_i = budget exactly. costs (each prompt's expected tokens per completion,
    > 0): `budget` tokens, sum_i c_i G_i <= budget, each next completion to the largest gain per token
    that still fits; every prompt gets min_group_size even where that alone exceeds the budget.
    pass_rates: each prompt's estimated pass rate in [0, 1]; group_size: unused (the fixed policy's G).
    Deterministic: ties go to the earlier prompt.
    # p (0.5, 0.9, 0.99), budget 9, G in [2, 5] -> [4, 3, 2]
    # p (0.5, 0.5), costs (10, 40), budget 140, G in [2, 8] -> [6, 2]
    """
    if costs is None:
        check_budget(len(pass_rates), int(budget), min_group_size, max_group_size)
        costs = [1.0] * len(pass_rates)
    elif len(costs) != len(pass_rates) or not all(c > 0 for c in costs):
        raise ValueError(f"costs must be {len(pass_rates)} numbers > 0, got {costs}")
    sizes = [min_group_size] * len(pass_rates)
    left = budget - min_group_size * sum(costs)
    # a max-heap of (gain per unit of the next completion, prompt index): the earlier prompt wins a tie
    heap = [(-marginal_gain(p, min_group_size) / c, i) for i, (p, c) in enumerate(zip(pass_rates, costs, strict=True))
            if min_group_size < max_group_size]
    heapq.heapify(heap)
    while heap:
        _, i = heapq.heappop(heap)
        if costs[i] > left + 1e-9:  # this prompt's next completion no longer fits; cheaper ones may
            continue
        sizes[i] += 1
        left -= costs[i]
        if sizes[i] < max_group_size:
            heapq.heappush(heap, (-marginal_gain(pass_rates[i], sizes[i]) / costs[i], i))
    return sizes


def fixed_sizes(pass_rates: list[float], budget: float, min_group_size: int, max_group_size: int,
                group_size: int = 0, costs: list[float] | None = None) -> list[int]:
    """G = group_size for every prompt (the estimates, the budget and the costs are not read)."""
    return [group_size] * len(pass_rates)


# rollout.group_policy.name -> (pass rates, budget, min G, max G, fixed G, costs) -> each prompt's G
GROUP_POLICIES: dict[str, Callable[..., list[int]]] = {
    "fixed": fixed_sizes, "adaptive": adaptive_sizes}
