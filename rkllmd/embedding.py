"""Embeddings and reranking as data and arithmetic: what a runtime returns, and how a model's
hidden states and logits become vectors and scores (docs/EMBEDDINGS.md).

Pure functions and plain data, no numpy (the base install has none) and nothing of rkllmd: the
runtimes (in the worker process too), the configuration and the commands import it. A runtime
hands back full-length L2-normalised vectors; shortening them (``dimensions``) is the command's.

Reranking follows the Qwen3-Reranker recipe: the query and the document go into one prompt that
asks for "yes" or "no", and the score is the probability of "yes" against "no" from the logits of
the last position, ``sigmoid(logit_yes - logit_no)``, which is the two-way softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

QWEN3_RERANK_TEMPLATE = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and "
    'the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n'
    "<|im_start|>user\n<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {document}<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n\n</think>\n\n"
)
QWEN3_RERANK_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

# One character per input done, sent to a run's progress sink (a TokenSink, so that it crosses
# the worker pipe as tokens do): the watchdog's deadlines see the run move, cancel lands between
# inputs. The job counts characters, not calls: the pipe may join several into one delta.
PROGRESS_MARK = "."

Progress = Callable[[str, int | None], None]


@dataclass(frozen=True)
class VectorInput:
    """What an embed or rerank job runs (on its Exchange, built at admission): ``texts`` as the
    model reads them (embed: the inputs in its ``input_template``; rerank: each document in its
    ``rerank_template`` with the query), and what shapes the reply."""

    texts: tuple[str, ...]
    dimensions: int | None = None  # embed: Matryoshka truncation
    encoding: str = "float"  # embed: "float" or "base64"
    documents: tuple[str, ...] | None = None  # rerank: returned with the results when asked
    top_n: int | None = None  # rerank
    max_tokens: int = 16384  # the job's bound on all its tokens (limits.max_embed_tokens)
    truncate: bool = False  # embed: cut a text longer than the context to fit, rather than refuse
    inputs: tuple[str, ...] = ()  # embed with truncate: the texts as given, before the template
    template: str = "{text}"  # embed with truncate: the model's input_template


@dataclass
class EmbedResult:
    """Vectors of a run, in input order, each L2-normalised; ``aborted`` when abort() cut it short
    (then ``vectors`` holds the inputs done so far)."""

    vectors: list[list[float]]
    prompt_tokens: int | None = None
    aborted: bool = False


@dataclass
class RerankResult:
    """A score in [0, 1] per document, in the order given; ``aborted`` as for EmbedResult."""

    scores: list[float]
    prompt_tokens: int | None = None
    aborted: bool = False


def normalized(vec: Sequence[float]) -> list[float]:
    """``vec`` scaled to length 1 (a zero vector stays zero: there is no direction to keep)."""
    norm = math.sqrt(math.fsum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else [float(x) for x in vec]


def pooled(rows: Sequence[Sequence[float]], pooling: str) -> list[float]:
    """One vector from per-token hidden states: the last row, or the mean of all rows."""
    if not rows:
        raise ValueError("no hidden states to pool")
    if pooling == "last":
        return [float(x) for x in rows[-1]]
    n = len(rows)
    return [math.fsum(col) / n for col in zip(*rows, strict=True)]


def truncated(vec: Sequence[float], dimensions: int | None) -> list[float]:
    """A Matryoshka vector cut to its first ``dimensions`` values and normalised again."""
    if dimensions is None or dimensions >= len(vec):
        return list(vec)
    return normalized(vec[:dimensions])


def yes_no_score(logit_yes: float, logit_no: float) -> float:
    """P(yes) of the two-way softmax over the answer tokens' logits: sigmoid(yes - no)."""
    d = logit_yes - logit_no
    if d >= 0:
        return 1.0 / (1.0 + math.exp(-d))
    e = math.exp(d)
    return e / (1.0 + e)


def cut_to_fit(text: str, template: str, count: Callable[[str], int | None], limit: int) -> str | None:
    """The longest start of ``text`` that, put in ``template``, is at most ``limit`` tokens by the
    model's tokenizer ``count`` (Ollama's ``truncate``: the end of an input is cut off); None when
    the tokenizer cannot count. A binary search over characters, so about log2(len(text))
    tokenizations; the cut lands where a token-exact cut would, give or take the last token's
    characters, and never past ``limit``. An empty start when the template alone is too long."""
    lo, hi = 0, len(text)  # the longest start that fits is in [lo, hi]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = count(template.replace("{text}", text[:mid]))
        if n is None:
            return None
        if n <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def embed_text(template: str, text: str) -> str:
    """One input as the model reads it (a model's ``input_template``); replace, not format, so
    braces in the template or the text are kept as they are."""
    return template.replace("{text}", text)


def rerank_text(template: str, instruction: str, query: str, document: str) -> str:
    """The prompt one (query, document) pair is scored with (a model's ``rerank_template``).

    The slots are filled in one pass, so a query holding "{document}" stays as written."""
    values = {"{instruction}": instruction, "{query}": query, "{document}": document}
    out, i = [], 0
    while i < len(template):
        for slot, value in values.items():
            if template.startswith(slot, i):
                out.append(value)
                i += len(slot)
                break
        else:
            out.append(template[i])
            i += 1
    return "".join(out)
