"""``generate``: a prompt or a conversation in, a streamed answer out (docs/PROTOCOL.md).

Admission (ingress thread) resolves the model and max_tokens and builds the runtime's input; the
job (inference thread) loads the model and runs the generation, the context checked first
(rkllmd/jobs.py: the tool-call parser and direct stream in front of the token sink, the final
reply); the loop's watchdog and crash rules apply around it.
"""

from __future__ import annotations

from rkllmd import logface
from rkllmd.commands._base import CommandSpec, Engine
from rkllmd.errors import ImagesUnsupported, RequestError, TooManyImages, WrongModelKind
from rkllmd.exchange import Exchange, Final, resolve
from rkllmd.jobs import final_of, run_generation
from rkllmd.outcome import check_output, final_data
from rkllmd.protocol import GenerateRequest, Req, use_for
from rkllmd.settings import Settings
from rkllmd.thinking import with_model_thinking
from rkllmd.vision import history

log = logface.get_logger("rkllmd.commands.generate")


def admit(req: Req, ex: Exchange, settings: Settings) -> None:
    """The model, max_tokens (under ``limits.max_tokens_cap``) and the runtime input (ingress thread)."""
    assert isinstance(req, GenerateRequest) and ex.address is not None
    target = resolve(settings, req.model, ex.topic_model, req.max_tokens)
    kind = settings.models[target.model].kind
    if kind != "chat":
        raise WrongModelKind(f"model {target.model!r} serves {kind} requests, not chat: {use_for(kind)}")
    cap = settings.limits.max_tokens_cap
    if target.max_tokens > cap:
        raise RequestError(f"max_tokens {target.max_tokens} is over the limit of {cap}")
    budget = _admit_images(req, target.model, settings)
    images, dropped = settings.images, list[str]()
    inp = req.to_input(
        target.max_tokens,
        image_folder=images.folder,
        max_image_bytes=images.max_bytes,
        max_images=budget,
        dropped=dropped,
    )
    if dropped:  # once per request: a chat client resends its history's images on every turn
        log.info("earlier_images_left_out", model=target.model, count=len(dropped), why=dropped)
    ex.model, ex.inp = target.model, with_model_thinking(inp, settings.models[target.model])
    # what only changes what is published: not for a plugin's request, which MQTT never sees
    ex.stream = req.stream and not ex.address.local
    ex.sentences = req.sentences and not ex.address.local


def _admit_images(req: GenerateRequest, model: str, settings: Settings) -> int:
    """How many images the model takes (0 for a text-only one). The current turn's images (the
    last user message's) are refused here, before any is decoded or the model loaded, on a model
    without an image encoder or over its ``max_images``; earlier turns' images are never refused,
    only left out (rkllmd.vision.history; the runtime checks again)."""
    cfg = settings.models[model]
    budget = cfg.max_images if cfg.takes_images else 0
    if req.messages is None:
        count, field = len(req.images or ()), "images"
    else:
        current = history.current_turn([m.role for m in req.messages])
        count = len(req.messages[current].images or ()) if current >= 0 else 0
        field = f"messages[{current}].images"
    if not count:
        return budget
    if not cfg.takes_images:
        key = "mmproj" if cfg.runtime == "llamacpp" else "vision_encoder"
        raise ImagesUnsupported(
            f"model {model!r} does not take images: it has no {key} (docs/VISION.md)", model=model
        )
    if count > cfg.max_images:
        # the first image over the bound named, as a bad image is: an interface maps it to its own
        raise TooManyImages(
            f"{count} images, model {model!r} takes at most {cfg.max_images} "
            f"({field}[{cfg.max_images}] is one too many)"
        )
    return budget


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
    "generate",
    GenerateRequest,
    plain_field="prompt",
    generates=True,
    model_topic=True,
    queued=True,
    admit=admit,
    run=run,
)
