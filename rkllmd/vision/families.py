"""What each vision-language model family expects of an image, with where each value comes from.

The encoder's real input size is read from the ``.rknn`` file (``rknn_query``); ``input_size`` here
is the size the vendor's conversion scripts use by default, for documentation and for a runtime
with no encoder to ask. ``mean``/``std`` are the normalisation the vendor bakes into the ``.rknn``
at conversion (airockchip/rknn-llm examples/multimodal_model_demo/export/export_vision_rknn.py:
CLIP's for Qwen2/Qwen2.5-VL, ImageNet's for InternVL3, 0.5 for the rest), so an encoder fed
uint8 pixels (as the demo does) needs no normalising here; the mean is still the colour a
non-square image is padded with, so the padding normalises to zero. The image tags
(``img_start``/``img_end``/``img_content``) are what RKLLM wraps around the image's tokens; the
vendor demo gives only Qwen's and DeepSeek-OCR's, the others come from the models' own processors
(``source`` says which). Pure data; no import of Pillow.
"""

from __future__ import annotations

from dataclasses import dataclass

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)

DEMO = "airockchip/rknn-llm multimodal demo (main.cpp, export scripts)"
PROCESSOR = "the model's own processor on Hugging Face (the vendor demo does not name its tags)"


@dataclass(frozen=True)
class VisionFamily:
    """One family's image settings."""

    name: str
    img_start: str
    img_end: str
    img_content: str
    input_size: int  # square side the vendor's conversion uses by default
    mean: tuple[float, float, float]  # per RGB channel, on the 0..1 scale
    std: tuple[float, float, float]
    tags_source: str

    @property
    def background(self) -> tuple[int, int, int]:
        """The mean as an RGB colour: what a non-square image is padded with."""
        r, g, b = (round(m * 255) for m in self.mean)
        return (r, g, b)


_QWEN_TAGS = ("<|vision_start|>", "<|vision_end|>", "<|image_pad|>")

FAMILIES: dict[str, VisionFamily] = {
    f.name: f
    for f in (
        # The demo's README converts Qwen2-VL at 392x392; the rest default to 448.
        VisionFamily("qwen2-vl", *_QWEN_TAGS, 392, CLIP_MEAN, CLIP_STD, DEMO),
        VisionFamily("qwen2.5-vl", *_QWEN_TAGS, 448, CLIP_MEAN, CLIP_STD, DEMO),
        VisionFamily("qwen3-vl", *_QWEN_TAGS, 448, HALF, HALF, DEMO),
        VisionFamily("qwen3.5", *_QWEN_TAGS, 448, HALF, HALF, DEMO),
        VisionFamily("minicpm-v", "<image>", "</image>", "<unk>", 448, HALF, HALF, PROCESSOR),
        VisionFamily(
            "internvl3", "<img>", "</img>", "<IMG_CONTEXT>", 448, IMAGENET_MEAN, IMAGENET_STD, PROCESSOR
        ),
        VisionFamily(
            "smolvlm",
            "<fake_token_around_image><global-img>",
            "<fake_token_around_image>",
            "<image>",
            448,
            HALF,
            HALF,
            PROCESSOR,
        ),
        # The demo's commented DeepSeek-OCR block: no start/end tags, a full-width pad token.
        VisionFamily("deepseek-ocr", "", "", "<\uff5c\u2581pad\u2581\uff5c>", 448, HALF, HALF, DEMO),
    )
}

# Spellings a config may use for the same family.
ALIASES: dict[str, str] = {
    "qwen2vl": "qwen2-vl",
    "qwen2.5vl": "qwen2.5-vl",
    "qwen2_5-vl": "qwen2.5-vl",
    "qwen3vl": "qwen3-vl",
    "minicpm-v-2_6": "minicpm-v",
    "minicpmv": "minicpm-v",
    "internvl3-1b": "internvl3",
    "internvl": "internvl3",
    "smolvlm2": "smolvlm",
    "deepseekocr": "deepseek-ocr",
}


def family(name: str) -> VisionFamily:
    """The family called ``name`` (or an alias); ValueError naming the known ones otherwise."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    try:
        return FAMILIES[key]
    except KeyError:
        raise ValueError(f"unknown vision family {name!r}; known: {', '.join(FAMILIES)}") from None
