"""The native parameter structs of the RKLLM runtime, filled from a model's settings.

``make_param`` fills RKLLMParam for rkllm_init, ``sampling_param`` a run's sampling parameters
(1.3+), ``raise_nofile`` the open-files limit the runtime needs. The settings are a pydantic
model or, in a worker process, a Table of the same names (read as attributes only). Inference
thread.
"""

from __future__ import annotations

import resource
from ctypes import Structure
from typing import TYPE_CHECKING

from rkllmd import logface
from rkllmd.errors import ModelLoadError
from rkllmd.generation import GenerateInput

if TYPE_CHECKING:
    from rkllmd.runtime.rkllm._lib import RkllmLibrary
    from rkllmd.runtime.rkllm.settings import RkllmModelSettings

# The runtime's own logger: these lines are the runtime's, as before they had a module.
log = logface.get_logger("rkllmd.runtime.rkllm.runtime")

NOFILE_WANTED = 102400  # what the vendor demos set before rkllm_init (one fd per NPU buffer)


def raise_nofile() -> None:
    """Raise the open-files limit to what the runtime wants before rkllm_init, as far as allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft >= NOFILE_WANTED:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE_WANTED, max(hard, NOFILE_WANTED)))
    except (ValueError, OSError):
        try:  # no privilege to raise the hard limit: go as far as it allows
            cap = NOFILE_WANTED if hard == resource.RLIM_INFINITY else min(hard, NOFILE_WANTED)
            resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, cap), hard))
        except (ValueError, OSError) as exc:
            log.warning("rkllm_nofile_not_raised", soft=soft, hard=hard, error=str(exc))


# The sampling options (rkllmd.generation.SAMPLING_OPTIONS) this runtime honours: fields of the
# same names in RKLLMParam (the model's, at load) and RKLLMSamplingParam (1.3+, a request's per run).
SAMPLING = ("top_k", "top_p", "temperature", "repeat_penalty", "frequency_penalty", "presence_penalty")


def make_param(lib: RkllmLibrary, cfg: RkllmModelSettings, model: str) -> Structure:
    """RKLLMParam for rkllm_init from the model's settings; ModelLoadError for a bad CPU list."""
    mask = 0
    for cpu in cfg.enabled_cpus:
        if not 0 <= cpu < 32:
            raise ModelLoadError(f"enabled_cpus: CPU {cpu} is out of range 0..31", model=model)
        mask |= 1 << cpu
    if mask == 0:
        raise ModelLoadError("enabled_cpus must name at least one CPU", model=model)
    p = lib.spec.Param()  # ctypes zero-fills: every reserved byte and padding is 0
    p.model_path = str(cfg.path).encode()
    p.max_context_len = cfg.max_context_len
    p.max_new_tokens = cfg.max_new_tokens or -1
    for name in SAMPLING:  # the model's values; 1.3+ takes a request's per run (sampling_param)
        setattr(p, name, getattr(cfg, name))
    p.n_keep = cfg.n_keep
    p.mirostat, p.mirostat_tau, p.mirostat_eta = 0, 5.0, 0.1
    p.skip_special_token = cfg.skip_special_token
    p.is_async = False
    fields = {f[0] for f in lib.spec.Param._fields_}
    if "img_start" in fields:  # 1.2.x: non-NULL empty tags, as the runtime's own defaults
        p.img_start = p.img_end = p.img_content = b""
    x = p.extend_param
    x.base_domain_id = cfg.base_domain_id
    x.embed_flash = int(cfg.embed_flash)
    x.enabled_cpus_num = len(set(cfg.enabled_cpus))
    x.enabled_cpus_mask = mask
    if "n_batch" in {f[0] for f in lib.spec.ExtendParam._fields_}:
        x.n_batch = 1  # a zeroed struct would ask for 0 batches
        x.use_cross_attn = 0
    return p


def sampling_param(cls: type[Structure], cfg: RkllmModelSettings, inp: GenerateInput) -> Structure:
    """A run's sampling parameters (1.3+): the request's overrides, else the model's settings."""
    sp = cls()
    for name in SAMPLING:
        setattr(sp, name, inp.sampling.value(name, cfg))
    sp.mirostat, sp.mirostat_tau, sp.mirostat_eta = 0, 5.0, 0.1
    return sp
