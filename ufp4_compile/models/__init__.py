"""Models the main job trains and the benchmarks time."""

from ufp4_compile.models.gpt import GPT, PRESETS, GPTConfig, get_config, preset_names

__all__ = ["GPT", "GPTConfig", "PRESETS", "get_config", "preset_names"]
