"""rkllmd: local LLMs on Rockchip NPUs, served over MQTT."""

__version__ = "0.1.0"
