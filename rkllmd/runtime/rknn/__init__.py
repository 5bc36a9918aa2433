"""The RKNN runtime (librknnrt.so) bound with ctypes, for vision encoders.

Not a runtime kind of its own: the RKLLM runtime runs a vision-language model's image encoder
through it. ``_abi.py`` holds the declarations (rknn_api.h 1.6.0 … 2.3.2), ``_lib.py`` finds,
identifies and loads the library, ``encoder.py`` is ``VisionEncoder``. Importing this package
loads nothing and imports neither Pillow nor pydantic.
"""
