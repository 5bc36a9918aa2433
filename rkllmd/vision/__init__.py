"""Images for vision-language models: decoding and preprocessing (images.py) and the per-family
defaults (families.py). Pure Python over Pillow; the encoder itself is rkllmd.runtime.rknn."""
