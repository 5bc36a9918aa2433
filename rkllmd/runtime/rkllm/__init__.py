"""The RKLLM runtime (Rockchip NPU) bound with ctypes.

Nothing is imported or loaded here: ``rkllmd.runtime.rkllm.runtime.RkllmRuntime`` finds and
loads librkllmrt.so only when a model is opened.
"""
