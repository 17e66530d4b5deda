"""Expression-sensitive layers (``emojidiff probe-layers``); the method and the selection rule: see :mod:`.core`."""

from .core import (
    BlockScore,
    ProbePair,
    ProbeResult,
    choose_layers,
    format_table,
    plot_probe,
    probe_layers,
    probe_pairs,
    write_layer_map,
)

__all__ = [
    "BlockScore",
    "ProbePair",
    "ProbeResult",
    "choose_layers",
    "format_table",
    "plot_probe",
    "probe_layers",
    "probe_pairs",
    "write_layer_map",
]
