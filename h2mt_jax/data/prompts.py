"""Prompt templates (the one home of this concept) and their split around `{context}`.

LongBench's official templates and generation lengths live in LongBench's
`config/dataset2prompt.json` and `config/dataset2maxlen.json`; this project does not ship copies.
`load_templates` finds them (an explicit path, `$H2MT_LONGBENCH_CONFIG`, the directory of the
LongBench jsonl being evaluated, or `../shared/data/longbench` beside this checkout) and falls
back to `GENERIC_TEMPLATE` (our wording) with a warning naming the dataset when none is found.
Templates use `{context}` and `{input}` placeholders.
"""

from __future__ import annotations

import functools
import json
import os
import warnings
from pathlib import Path

GENERIC_TEMPLATE = ("Read the document below and answer the question. Give only the answer, "
                    "with no other words.\n\nDocument:\n{context}\n\nQuestion: {input}\nAnswer:")
# The synthetic manuals task (ours).
SYNTHETIC_TEMPLATE = ("Answer the question about the manual. Give only the answer, with no "
                      "other words.\n\nManual:\n{context}\n\nQuestion: {input}\nAnswer:")
DEFAULT_MAX_NEW_TOKENS = 32
_SENTINEL = "\u2063CONTEXT\u2063"  # an invisible separator that tokenizers keep apart


def _candidates(extra_dirs) -> list[Path]:
    dirs = [Path(d) for d in extra_dirs if d]
    if os.environ.get("H2MT_LONGBENCH_CONFIG"):
        dirs.append(Path(os.environ["H2MT_LONGBENCH_CONFIG"]))
    dirs.append(Path(__file__).resolve().parents[3] / "shared" / "data" / "longbench")
    return dirs


@functools.lru_cache(maxsize=32)
def _load_json(name: str, extra_dirs: tuple) -> dict | None:
    for d in _candidates(extra_dirs):
        p = d / name if d.is_dir() else d
        if p.is_file() and p.name == name:
            with open(p) as f:
                return json.load(f)
    return None


def load_templates(*extra_dirs) -> dict[str, str]:
    """LongBench's dataset -> template map plus the synthetic task's, or {} when not found."""
    found = _load_json("dataset2prompt.json", tuple(map(str, extra_dirs))) or {}
    return {**found, "synthetic": SYNTHETIC_TEMPLATE}


def load_max_new_tokens(*extra_dirs) -> dict[str, int]:
    found = _load_json("dataset2maxlen.json", tuple(map(str, extra_dirs))) or {}
    return {**found, "synthetic": 16}


def template_for(dataset: str, *extra_dirs) -> str:
    """The dataset's template; the generic one (with a warning) when LongBench's is not found."""
    templates = load_templates(*extra_dirs)
    if dataset in templates:
        return templates[dataset]
    warnings.warn(f"no prompt template for dataset {dataset!r} (LongBench's dataset2prompt.json "
                  "was not found or lacks it); using the generic template", stacklevel=2)
    return GENERIC_TEMPLATE


def render(template: str, context: str, question: str) -> str:
    if "{context}" not in template or "{input}" not in template:
        raise ValueError("a prompt template needs {context} and {input} placeholders")
    return template.replace("{input}", question).replace("{context}", context)


def split_prompt(tokenizer, template: str, question: str, chat: bool = True
                 ) -> tuple[list[int], list[int]]:
    """Token ids before and after `{context}` of the (chat-formatted) prompt, so that memory
    vectors or retrieved text can be placed between them."""
    text = render(template, _SENTINEL, question)
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        special = False
    else:
        special = True
    before, after = text.split(_SENTINEL)
    pre = tokenizer(before, add_special_tokens=special)["input_ids"]
    post = tokenizer(after, add_special_tokens=False)["input_ids"]
    return pre, post


def template_prefix(tokenizer, template: str, question: str, ids: list[int]) -> int:
    """How many of the prompt `ids` are the template's opening (`split_prompt`'s `pre`: the chat
    preamble and the template's text before the context), the part that prompts of one task
    share and whose keys and values `LM.generate_ids(prefix=...)` keeps; 0 when `ids` do not
    start with it (a cut or a merged token at the boundary)."""
    pre = split_prompt(tokenizer, template, question)[0]
    return len(pre) if len(pre) < len(ids) and list(ids[:len(pre)]) == pre else 0


def chat_preamble(tokenizer) -> list[int]:
    """Token ids that every chat-formatted prompt of this tokenizer starts with: the template's
    system turn and the opening of the user turn (SmolLM2: 24 tokens), the same whatever the
    task template; for a tokenizer without a chat template, its special start tokens (BOS) or
    none. H²MT computes the leaves' stored KV caches after these tokens (`kv_prefix`), so that a
    leaf read back from its cache attends to the same sink it would in a text prompt."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": _SENTINEL}],
                                             tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text.split(_SENTINEL)[0], add_special_tokens=False)["input_ids"])
    return list(tokenizer("", add_special_tokens=True)["input_ids"])


def prompt_ids(tokenizer, template: str, context: str, question: str, chat: bool = True,
               max_tokens: int | None = None) -> list[int]:
    """Token ids of the full prompt with a text context.

    With `max_tokens`, a longer prompt is cut in the middle as LongBench does (the first and the
    last halves of the rendered prompt are kept, before the chat template); the cut leaves room
    for the chat template's tokens, so the returned ids never exceed `max_tokens`."""
    text = render(template, context, question)
    budget = max_tokens
    for _ in range(4):
        ids = _finish(tokenizer, _cut(tokenizer, text, budget), chat)
        if max_tokens is None or len(ids) <= max_tokens:
            return ids
        budget -= len(ids) - max_tokens  # the template's tokens and re-tokenization drift
        if budget <= 0:
            break
    raise ValueError(f"the prompt cannot be cut to {max_tokens} tokens (the template alone is "
                     f"longer)")


def _cut(tokenizer, text: str, budget: int | None) -> str:
    if budget is None:
        return text
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= budget:
        return text
    half = budget // 2
    return (tokenizer.decode(ids[:half], skip_special_tokens=True)
            + tokenizer.decode(ids[len(ids) - (budget - half):], skip_special_tokens=True))


def _finish(tokenizer, text: str, chat: bool) -> list[int]:
    if chat and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]
