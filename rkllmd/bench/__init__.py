"""``rkllmd bench``: measure models directly and through the daemon, write reports, compare runs.

Modules: ``suite`` (prompt files), ``direct`` and ``mqttpath`` (the two measured paths),
``runner`` (the loop, progress and Ctrl-C), ``report``/``charts`` (markdown, JSON, PNG),
``compare`` (regressions between two JSON reports), ``relay`` (the daemon's own cost with the C
double). Nothing is imported here, so ``import rkllmd.bench`` costs nothing.
"""
