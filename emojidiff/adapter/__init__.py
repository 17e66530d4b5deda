"""The E-Adapter: an identity branch and an expression branch on diffusers' IP-Adapter machinery."""

from .config import (
    CONFIG_NAME,
    EXPRESSION_WEIGHTS,
    IDENTITY_WEIGHTS,
    EmojiDiffConfig,
    UNetSignature,
)
from .core import (
    BUNDLED_ADAPTERS,
    BUNDLED_BASES,
    init_adapter,
    load_adapter_into,
    make_config,
    meta_unet,
    resolve_adapter,
    resolve_base,
)
from .layers import attention_blocks, layer_scale_dict, parse_layer_spec

__all__ = [
    "BUNDLED_ADAPTERS",
    "BUNDLED_BASES",
    "CONFIG_NAME",
    "EXPRESSION_WEIGHTS",
    "IDENTITY_WEIGHTS",
    "EmojiDiffConfig",
    "UNetSignature",
    "attention_blocks",
    "init_adapter",
    "layer_scale_dict",
    "load_adapter_into",
    "make_config",
    "meta_unet",
    "parse_layer_spec",
    "resolve_adapter",
    "resolve_base",
]
