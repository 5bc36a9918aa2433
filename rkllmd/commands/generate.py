"""``generate``: a prompt or a conversation in, a streamed answer out (docs/PROTOCOL.md).

Admission (ingress thread) resolves the model and max_tokens and builds the runtime's input; the
job (inference thread) loads the model and runs the generation, the context checked first
(rkllmd/jobs.py: the tool-call parser and direct stream in front of the token sink, the final
reply); the loop's watchdog and crash rules apply around it.
"""

from __future__ import annotations

from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.errors import ImagesUnsupported, RequestError, WrongModelKind
from rkllmd.exchange import Exchange, Final, resolve
from rkllmd.jobs import final_of, run_generation
from rkllmd.outcome import check_output, final_data
from rkllmd.protocol import GenerateRequest, Req
from rkllmd.settings import Settings
from rkllmd.thinking import with_model_thinking


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    """The model, max_tokens (under ``limits.max_tokens_cap``) and the runtime input (ingress thread)."""
    assert isinstance(req, GenerateRequest) and ex.address is not None
    target = resolve(settings, req.model, ex.topic_model, req.max_tokens)
    kind = settings.models[target.model].kind
    if kind != "chat":
        command = "embed" if kind == "embedding" else kind
        raise WrongModelKind(f"model {target.model!r} serves {kind} requests, not chat: use {command}")
    cap = settings.limits.max_tokens_cap
    if target.max_tokens > cap:
        raise RequestError(f"max_tokens {target.max_tokens} is over the limit of {cap}")
    _admit_images(req, target.model, settings)
    images = settings.images
    inp = req.to_input(target.max_tokens, image_folder=images.folder, max_image_bytes=images.max_bytes)
    ex.model, ex.inp = target.model, with_model_thinking(inp, settings.models[target.model])
    # what only changes what is published: not for a plugin's request, which MQTT never sees
    ex.stream = req.stream and not ex.address.local
    ex.sentences = req.sentences and not ex.address.local


def _admit_images(req: GenerateRequest, model: str, settings: Settings) -> None:
    """Images only for a model configured with an image encoder, at most its ``max_images``;
    refused here, before any image is decoded or the model loaded (the runtime checks again)."""
    count = len(req.images or ()) + sum(len(m.images or ()) for m in req.messages or ())
    if not count:
        return
    cfg = settings.models[model]
    if not cfg.takes_images:
        key = "mmproj" if cfg.runtime == "llamacpp" else "vision_encoder"
        raise ImagesUnsupported(
            f"model {model!r} does not take images: it has no {key} (docs/VISION.md)", model=model
        )
    if count > cfg.max_images:
        raise RequestError(f"{count} images, model {model!r} takes at most {cfg.max_images}")


def run(job: Exchange, loop: Engine) -> Final:
    """Load the model and run the generation to its final reply (inference thread)."""
    assert job.inp is not None
    rt = loop.load(job.model or loop.default_model)
    job.model = loop.loaded_model
    if job.run.abort_reason is not None:  # cancelled between dequeue and start
        return Final(job, "ok", final_data(job, "cancelled"))
    loop.begin(job)
    result = loop.survive(job, lambda: run_generation(job, rt, loop.emit, loop.direct))
    if result.finish_reason != "aborted":
        check_output(job)
    return final_of(job, result, loop.limits, loop.counters)


COMMAND = CommandSpec(
    "generate", GenerateRequest, plain_field="prompt", generates=True, queued=True, admit=admit, run=run
)
