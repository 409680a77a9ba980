"""Stop strings (rollout.stop): a completion ends at the token that completes one, like an EOS.

A stop string can span several tokens (`</answer>` is often `</`, `answer`, `>`), so stops are
found in decoded text, never by token id. Two questions, both asked of the same decode
(special tokens skipped, as the completions are decoded):
  - while sampling, `StopStrings.hits` decodes only the last few tokens of each row still
    generating (a window of max-stop-length + 1 tokens: every token decodes to at least one
    character), so a step costs the same however long the rows have grown;
  - once a row is done, `StopStrings.cut` finds the shortest prefix of its tokens whose text
    holds a stop (a binary search over decodes of prefixes) and the text through the end of
    that stop string. The token that completes a stop may carry characters after it
    (`>\\n`); those stay in the token ids (exactly as sampled) but not in the text, so the
    text equals the no-stop completion cut right after the stop string, in every engine.
"""

from __future__ import annotations

from typing import Any


class StopStrings:
    def __init__(self, tokenizer: Any, stops: tuple[str, ...]):
        assert stops and all(stops), "stop strings must be non-empty"
        self.tokenizer, self.stops = tokenizer, stops
        self.window = max(len(s) for s in stops) + 1  # tokens

    def text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def held(self, text: str) -> bool:
        return any(s in text for s in self.stops)

    def hits(self, tails: list[list[int]]) -> list[bool]:
        """For each row's last `window` token ids: does its text hold a stop string?"""
        return [self.held(t) for t in self.tokenizer.batch_decode(tails, skip_special_tokens=True)]

    def cut(self, ids: list[int]) -> tuple[int, str] | None:
        """(number of tokens to keep, text through the first stop string), or None when the
        row's text holds no stop string."""
        if not self.held(self.text(ids)):
            return None
        low, high = 1, len(ids)  # the shortest prefix holding a stop has `high` tokens
        while low < high:
            mid = (low + high) // 2
            if self.held(self.text(ids[:mid])):
                high = mid
            else:
                low = mid + 1
        text = self.text(ids[:high])
        end = min(text.index(s) + len(s) for s in self.stops if s in text)
        return high, text[:end]
