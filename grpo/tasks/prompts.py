"""How an example's messages become the text the model continues (task.template) and what
starts the model's answer (task.assistant_prefix).

`chat` renders the messages with the tokenizer's chat template, as instruct models expect.
A plain-text template is for base models (DeepSeek-R1-Zero trains one with no chat template
at all): a string with `{system}` and `{question}` placeholders, e.g. the `r1_zero` preset

    {system} User: {question} Assistant:

The part from the end of `{system}` on is one *turn*: a worked example (task.few_shot) is its
turn with the example's question followed by its worked answer (after a space, unless the
turn ends in whitespace), one line per example, before the question's own turn.

The assistant prefix (e.g. `<think>`) is appended verbatim to the rendered prompt: its tokens
are prompt tokens (never sampled, never trained). What the rewards, evaluation, samples and
report see is prefix + completion (`PromptFormat.sample`), so a layout check such as the
`format` reward still sees the whole `<think> ... </think> <answer> ... </answer>`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from grpo.config import TaskConfig
from grpo.config.values import CHAT
from grpo.tasks.base import DEFAULT_SYSTEM_PROMPT, Example

if TYPE_CHECKING:
    from grpo.trajectory import Trajectory

R1_ZERO_SYSTEM = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
    "The Assistant first thinks about the reasoning process in the mind and then provides the user with "
    "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> "
    "</answer> tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here "
    "</answer>."
)
# name -> (template text, the system text used when task.system_prompt is null); task.template
# allows chat, these names (grpo.config.values.TEMPLATE_PRESETS) or a plain-text template
# (grpo.config.checks.template_error)
TEMPLATES: dict[str, tuple[str, str]] = {
    "r1_zero": ("{system} User: {question} Assistant:", R1_ZERO_SYSTEM),
}


# How a tool's reply enters the token stream (`PromptFormat.continuation` renders both):
#   hermes: a `tool` turn of the chat template, then a new assistant turn;
#   inline: `<tool_response> ... </tool_response>` inside the same assistant turn, the layout
#           of tool-integrated reasoning papers (easier for small models, any template).
TOOL_FORMATS = ("hermes", "inline")
TOOLS_SECTION = (
    "# Tools\n\nYou may call tools to help you. Their signatures, as JSON schemas, are inside <tools></tools>:\n"
    "<tools>\n{schemas}\n</tools>\n\nTo call a tool, write <tool_call>{{\"name\": <tool name>, \"arguments\": "
    "<JSON object of its arguments>}}</tool_call>; its result comes back inside <tool_response></tool_response>."
)


def with_tools_section(messages: list[dict], tools: list[dict]) -> list[dict]:
    """The messages with TOOLS_SECTION appended to the system prompt (one added if there is none)."""
    section = TOOLS_SECTION.format(schemas="\n".join(json.dumps(t) for t in tools))
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + section}, *messages[1:]]
    return [{"role": "system", "content": section}, *messages]


def _renders_tools(tokenizer: Any, tools: list[dict]) -> bool:
    """Does the chat template show `tools=` to the model (many ignore it silently)?"""
    probe = [{"role": "user", "content": "?"}]
    plain = tokenizer.apply_chat_template(probe, tokenize=False, add_generation_prompt=True)
    return tokenizer.apply_chat_template(probe, tools=tools, tokenize=False, add_generation_prompt=True) != plain


def default_system_prompt(cfg: TaskConfig) -> str:
    """task.system_prompt, or when it is null the template's own (the default asks for <think>/<answer>)."""
    if cfg.system_prompt is not None:
        return cfg.system_prompt
    return TEMPLATES[cfg.template][1] if cfg.template in TEMPLATES else DEFAULT_SYSTEM_PROMPT


@dataclass(frozen=True)
class PromptFormat:
    """template: None = the tokenizer's chat template, else plain text with {system}/{question};
    assistant_prefix: text that starts the model's answer (part of the prompt)."""

    template: str | None = None
    assistant_prefix: str = ""

    @classmethod
    def from_config(cls, cfg: TaskConfig) -> PromptFormat:
        text = TEMPLATES[cfg.template][0] if cfg.template in TEMPLATES else cfg.template
        return cls(None if cfg.template == CHAT else text, cfg.assistant_prefix)

    def check(self, tokenizer: Any) -> None:
        """A chat-template format needs a tokenizer that has one (base models often do not)."""
        if self.template is None and not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                "config field `task.template` = 'chat' needs a chat template, and this model's tokenizer has "
                f"none (a base model?): set task.template to a plain-text template, e.g. {next(iter(TEMPLATES))}")

    def render(self, tokenizer: Any, example: Example) -> str:
        """The prompt text the model continues: template (chat or plain), then the assistant prefix."""
        return self.render_messages(tokenizer, example.prompt)

    def render_messages(self, tokenizer: Any, messages: list[dict], tools: list[dict] | None = None) -> str:
        """`render` for any messages; `tools` (JSON schemas) reach the model through the chat
        template where it renders them, else through a system-prompt section (TOOLS_SECTION)."""
        self.check(tokenizer)
        if tools and not (self.template is None and _renders_tools(tokenizer, tools)):
            messages = with_tools_section(messages, tools)
            tools = None
        if self.template is None:
            native = {"tools": tools} if tools else {}  # the template renders them itself
            text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **native)
        else:
            text = self._render_plain(messages)
        return text + self.assistant_prefix

    def continuation(self, tokenizer: Any, messages: list[dict], tool_format: str, after_eos: bool) -> str:
        """The text inserted after a model turn for an environment's `messages`: inline, each
        reply on its own lines inside the same turn (tool replies in <tool_response> tags);
        hermes (chat templates), the template's end of turn, the replies' turns and a new
        assistant turn, exactly as the template renders them after an assistant message.
        after_eos: the turn ended with the model's own EOS, which the template would repeat."""
        if tool_format == "inline" or self.template is not None:
            return "".join(f"\n<tool_response>\n{m['content']}\n</tool_response>\n" if m["role"] == "tool"
                           else f"\n{m['content']}\n" for m in messages)
        mark = "\u2063grpo-turn\u2063"  # invisible separators: text no model turn contains
        turns = [{"role": "user", "content": "?"}, {"role": "assistant", "content": mark}]
        turns += [{k: m[k] for k in ("role", "content", "name") if k in m} for m in messages]
        full = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        text = full[full.index(mark) + len(mark):]
        eos = tokenizer.eos_token or ""
        return text[len(eos):] if after_eos and eos and text.startswith(eos) else text

    def sample(self, engine: Any, tokenizer: Any, examples: list[Example], params: Any) -> Trajectory:
        """engine.generate on the rendered prompts; completions become prefix + completion text."""
        trajectory = engine.generate([self.render(tokenizer, ex) for ex in examples], params)
        if self.assistant_prefix:
            trajectory.completions = [self.assistant_prefix + c for c in trajectory.completions]
        return trajectory

    def _render_plain(self, messages: list[dict[str, str]]) -> str:
        """system, then one line per worked example (its turn + answer), then the question's turn."""
        assert self.template is not None
        head, marker, turn = self.template.partition("{system}")
        if not marker:  # no {system}: the whole template is the turn and no system text is shown
            head, turn = "", self.template
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        body = messages[1:] if messages and messages[0]["role"] == "system" else messages
        lines = []
        for user, assistant in zip(body[:-1:2], body[1:-1:2], strict=True):  # worked examples
            shot = turn.format(question=user["content"]).lstrip()
            lines.append(shot + ("" if shot[-1:].isspace() else " ") + assistant["content"])
        question = turn.format(question=body[-1]["content"])
        if lines:  # the turn's leading whitespace once, then every turn on its own line
            question = turn[: len(turn) - len(turn.lstrip())] + "\n".join(lines) + "\n" + question.lstrip()
        return head.format() + (system if marker else "") + question
