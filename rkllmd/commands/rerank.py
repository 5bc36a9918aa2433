"""``rerank``: a query and documents in, each document's relevance out, best first
(docs/EMBEDDINGS.md, docs/PROTOCOL.md).

Admission (ingress thread) picks a model whose ``kind`` is "rerank", bounds the documents and
writes one prompt per document in the model's ``rerank_template`` (the Qwen3-Reranker recipe by
default); the job (inference thread) checks the tokens and runs ``Runtime.score`` (P(yes) from the
answer tokens' logits) as a watched, cancellable job on the one queue (commands/_vectors.py).
"""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.commands._vectors import bounded, model_for, run_job
from rkllmd.embedding import VectorInput, rerank_text
from rkllmd.errors import EmptyInput
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import Req, RerankRequest, rerank_data
from rkllmd.settings import Settings


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    """The model and one prompt per document (ingress thread)."""
    assert isinstance(req, RerankRequest)
    ex.model = model_for(settings, req.model or ex.topic_model, "rerank")
    # missing and empty are told apart: a client that named the field wrong learns which one
    if req.query is None:
        raise EmptyInput("query is required: the text the documents are scored against")
    if not req.query.strip():
        raise EmptyInput("query is empty")
    if req.documents is None:
        raise EmptyInput("documents is required: the texts to score")
    docs = list(req.documents)
    bounded(docs, settings, "documents")
    cfg = settings.models[ex.model]
    instruction = req.instruction if req.instruction is not None else cfg.rerank_instruction
    ex.vectors = VectorInput(
        tuple(rerank_text(cfg.rerank_template, instruction, req.query, d) for d in docs),
        documents=tuple(docs) if req.return_documents else None,
        top_n=req.top_n,
        max_tokens=settings.limits.max_embed_tokens,
    )


def run(job: Exchange, loop: Engine) -> Final:
    """Score every document, in one job (inference thread)."""
    assert job.vectors is not None
    texts = job.vectors.texts
    done = run_job(job, loop, "document", lambda rt, progress: rt.score(texts, progress))
    if isinstance(done, Final):
        return done
    res, tokens, timings = done
    docs = list(job.vectors.documents) if job.vectors.documents is not None else None
    loop.counters["rerank_documents"] = loop.counters.get("rerank_documents", 0) + len(res.scores)
    return Final(job, "ok", rerank_data(job.model, res.scores, docs, job.vectors.top_n, tokens, timings))


COMMAND = CommandSpec(
    "rerank",
    RerankRequest,
    cancellable=True,
    queued=True,
    model_topic=True,
    background=True,  # gives way to a voice request queued behind it (docs/EMBEDDINGS.md)
    admit=admit,
    run=run,
)
