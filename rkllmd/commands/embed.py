"""``embed``: texts in, one L2-normalised vector each out (docs/EMBEDDINGS.md, docs/PROTOCOL.md).

Admission (ingress thread) picks a model whose ``kind`` is "embedding", bounds the number of
texts and puts each in the model's ``input_template``; the job (inference thread) cuts a text
longer than the context to fit when the request says ``truncate`` (Ollama's default), checks the
tokens, runs ``Runtime.embed`` as a watched, cancellable job on the one queue (commands/_vectors.py)
and cuts the vectors to ``dimensions`` where the model is a Matryoshka one.
"""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.commands._vectors import bounded, model_for, run_job
from rkllmd.embedding import EmbedResult, Progress, VectorInput, embed_text, truncated
from rkllmd.errors import EmptyInput, RequestError
from rkllmd.exchange import Exchange, Final
from rkllmd.protocol import EmbedRequest, Req, embedding_data
from rkllmd.runtime.base import Runtime
from rkllmd.settings import Settings


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    """The model, the texts as it reads them, and what shapes the reply (ingress thread)."""
    assert isinstance(req, EmbedRequest)
    ex.model = model_for(settings, req.model or ex.topic_model, "embedding")
    if req.input is None:
        raise EmptyInput("input is required: the text or texts to embed")
    if isinstance(req.input, str) and not req.input.strip():
        raise EmptyInput("input is empty: nothing to embed")
    texts = [req.input] if isinstance(req.input, str) else list(req.input)
    bounded(texts, settings, "input")
    cfg = settings.models[ex.model]
    if req.dimensions is not None and not cfg.matryoshka:
        raise RequestError(
            f"dimensions {req.dimensions} is refused: model {ex.model!r} does not take dimensions, its "
            "vectors are not trained to be cut short (matryoshka = true in its [models] table says they are)"
        )
    ex.vectors = VectorInput(
        tuple(embed_text(cfg.input_template, t) for t in texts),
        dimensions=req.dimensions,
        encoding=req.encoding,
        max_tokens=settings.limits.max_embed_tokens,
        truncate=req.truncate,
        inputs=tuple(texts) if req.truncate else (),
        template=cfg.input_template,
    )


def run(job: Exchange, loop: Engine) -> Final:
    """Embed the texts, in one job (inference thread)."""
    assert job.vectors is not None

    def call(rt: Runtime, progress: Progress) -> EmbedResult:
        assert job.vectors is not None  # the texts as run_job fitted them (truncate)
        return rt.embed(job.vectors.texts, progress)

    done = run_job(job, loop, "input", call)
    if isinstance(done, Final):
        return done
    res, tokens, timings = done
    dims = job.vectors.dimensions
    size = len(res.vectors[0]) if res.vectors else 0
    if dims is not None and dims > size:
        raise RequestError(f"dimensions {dims} is more than model {job.model!r} gives ({size})")
    vectors = [truncated(v, dims) for v in res.vectors]
    loop.counters["embed_inputs"] = loop.counters.get("embed_inputs", 0) + len(vectors)
    return Final(job, "ok", embedding_data(job.model, vectors, job.vectors.encoding, tokens, timings))


COMMAND = CommandSpec(
    "embed",
    EmbedRequest,
    plain_field="input",
    cancellable=True,
    queued=True,
    model_topic=True,
    background=True,  # a batch gives way to a voice request queued behind it (docs/EMBEDDINGS.md)
    admit=admit,
    run=run,
)
