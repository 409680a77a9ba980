"""Groups of rows: which consecutive rows of a batch are the completions of one prompt.

    groups = Groups.of(4, num_rows=8)          # two groups of G = 4 (every group the same size)
    groups = Groups.of([2, 3], num_rows=5)     # unequal groups (rollout.group_policy = adaptive)
    groups.mean(rewards)                       # [B]: each group's mean over its own size
    groups.spread(values)                      # [B] -> [N]: each row gets its group's value

Every group-wise reduction of the code goes through here, so unequal groups work wherever
equal ones do. Rows are ordered group by group (rows 0..sizes[0]-1 are prompt 0's). Where
every group has the same size the reductions reshape to [B, G] as the code always did, so a
fixed group size gives bit-identical results to the [B, G] code; unequal groups reduce by
segment (index_add / scatter_reduce over each row's group id). Pure: tensors in, tensors out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Groups:
    """sizes: the number of rows of each group, in row order (every size >= 1)."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if any(s < 1 for s in self.sizes):
            raise ValueError(f"group sizes must be >= 1, got {list(self.sizes)}")

    @classmethod
    def of(cls, group_size: int | Sequence[int] | Groups, num_rows: int) -> Groups:
        """The groups of a batch of num_rows rows: G rows each (an int), or the given sizes."""
        if isinstance(group_size, Groups):
            groups = group_size
        elif isinstance(group_size, int):
            if group_size < 1 or num_rows % group_size:
                raise ValueError(f"rewards must be 1-D with a length divisible by group_size={group_size}, "
                                 f"got {num_rows} rows")
            groups = cls((group_size,) * (num_rows // group_size))
        else:
            groups = cls(tuple(int(s) for s in group_size))
        if groups.num_rows != num_rows:
            raise ValueError(f"group sizes {list(groups.sizes)} add up to {groups.num_rows} rows, not {num_rows}")
        return groups

    @classmethod
    def cat(cls, parts: Sequence[Groups]) -> Groups:
        """The groups of batches joined in order (rounds of dynamic sampling, ranks)."""
        return cls(tuple(s for part in parts for s in part.sizes))

    @property
    def num_groups(self) -> int:
        return len(self.sizes)

    @property
    def num_rows(self) -> int:
        return sum(self.sizes)

    @cached_property
    def uniform(self) -> int | None:
        """G where every group has G rows (the [B, G] reshape applies), else None."""
        if not self.sizes:
            return 1  # no rows: any reshape of an empty tensor is empty
        return self.sizes[0] if all(s == self.sizes[0] for s in self.sizes) else None

    @cached_property
    def ids(self) -> torch.Tensor:
        """[N] long: each row's group. # sizes (2, 3) -> [0, 0, 1, 1, 1]"""
        return torch.repeat_interleave(torch.arange(self.num_groups), torch.tensor(self.sizes, dtype=torch.long))

    @cached_property
    def starts(self) -> list[int]:
        """Each group's first row. # sizes (2, 3) -> [0, 2]"""
        out, at = [], 0
        for s in self.sizes:
            out.append(at)
            at += s
        return out

    def rows(self, groups: Sequence[int]) -> list[int]:
        """The rows of some groups, in the order given. # sizes (2, 3), groups [1] -> [2, 3, 4]"""
        return [self.starts[g] + i for g in groups for i in range(self.sizes[g])]

    def per_row(self, items: Sequence[T]) -> list[T]:
        """One item per group -> one per row. # sizes (2, 1), items [a, b] -> [a, a, b]"""
        assert len(items) == self.num_groups, f"{len(items)} items for {self.num_groups} groups"
        return [item for item, n in zip(items, self.sizes, strict=True) for _ in range(n)]

    def select(self, groups: Sequence[int]) -> Groups:
        return Groups(tuple(self.sizes[g] for g in groups))

    def spread(self, values: torch.Tensor) -> torch.Tensor:
        """[B] -> [N]: row i gets its group's value."""
        if self.uniform is not None:
            return values.repeat_interleave(self.uniform)
        return values[self.ids.to(values.device)]

    def _sum(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(self.num_groups, dtype=x.dtype, device=x.device).index_add_(0, self.ids.to(x.device), x)

    def _counts(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.sizes, dtype=x.dtype, device=x.device)

    def mean(self, x: torch.Tensor) -> torch.Tensor:
        """[N] float -> [B]: each group's mean over its own rows."""
        if self.uniform is not None:
            return x.view(-1, self.uniform).mean(1)
        return self._sum(x) / self._counts(x)

    def std(self, x: torch.Tensor) -> torch.Tensor:
        """[N] float -> [B]: each group's Bessel-corrected std, sqrt(sum (x - mean)^2 / (n - 1)) over
        its own n rows (NaN for a group of one row, as torch.std). # [1, 0 | 1, 1, 0] -> [0.7071, 0.5774]"""
        if self.uniform is not None:
            return x.view(-1, self.uniform).std(1)
        centred = x - self.spread(self.mean(x))
        return (self._sum(centred.pow(2)) / (self._counts(x) - 1)).sqrt()

    def amax(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [B]: each group's largest value."""
        if self.uniform is not None:
            return x.view(-1, self.uniform).amax(1)
        init = torch.zeros(self.num_groups, dtype=x.dtype, device=x.device)  # not read: include_self=False
        return init.scatter_reduce(0, self.ids.to(x.device), x, "amax", include_self=False)

    def amin(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [B]: each group's smallest value."""
        return -self.amax(-x)

    def first_true(self, flags: torch.Tensor) -> torch.Tensor:
        """[N] bool -> [B] long: the row of each group's first True (N for a group with none).
        # sizes (2, 3), flags [F, T | F, T, T] -> [1, 3]"""
        rows = torch.arange(flags.numel(), device=flags.device)
        return self.amin(torch.where(flags.bool(), rows, flags.numel()))

    def constant(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [B] bool: every row of the group equals its first row (exactly)."""
        if self.uniform is not None:
            grouped = x.view(-1, self.uniform)
            return (grouped == grouped[:, :1]).all(1)
        return self.all(x == self.first(x))

    def first(self, x: torch.Tensor) -> torch.Tensor:
        """[N] -> [N]: each row gets its group's first row's value."""
        return self.spread(x[torch.tensor(self.starts, dtype=torch.long, device=x.device)])

    def all(self, flags: torch.Tensor) -> torch.Tensor:
        """[N] bool -> [B] bool: every row of the group is True."""
        if self.uniform is not None:
            return flags.view(-1, self.uniform).all(1)
        return self._sum((~flags.bool()).long()) == 0

    def any(self, flags: torch.Tensor) -> torch.Tensor:
        """[N] bool -> [B] bool: some row of the group is True."""
        if self.uniform is not None:
            return flags.view(-1, self.uniform).any(1)
        return self._sum(flags.bool().long()) > 0
