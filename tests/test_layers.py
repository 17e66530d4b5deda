import pytest

from emojidiff.adapter.layers import block_key, layer_scale_dict, parse_layer_spec
from emojidiff.errors import AdapterError

BLOCKS = ["down.block_1.0", "down.block_1.1", "up.block_0.0", "up.block_0.1", "up.block_0.2", "mid"]


def test_block_key_names_match_diffusers_instantstyle_keys():
    assert block_key("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor") == "down.block_1.0"
    assert block_key("up_blocks.2.attentions.1.transformer_blocks.9.attn2.processor") == "up.block_2.1"
    assert block_key("mid_block.attentions.0.transformer_blocks.0.attn2.processor") == "mid"
    assert block_key("down_blocks.1.attentions.0.transformer_blocks.0.attn1.processor") is None


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", BLOCKS),
        (None, BLOCKS),
        ("none", []),
        ("up", ["up.block_0.0", "up.block_0.1", "up.block_0.2"]),
        ("up.block_0.1, mid", ["up.block_0.1", "mid"]),
        (["down.block_1", "mid"], ["down.block_1.0", "down.block_1.1", "mid"]),
    ],
)
def test_parse_layer_spec(spec, expected):
    assert parse_layer_spec(spec, BLOCKS) == expected


def test_parse_layer_spec_unknown_layer_names_it_and_the_choices():
    with pytest.raises(AdapterError, match=r"'up.block_3.0' does not exist.*down.block_1.0"):
        parse_layer_spec("up.block_3.0", BLOCKS)


def test_layer_scale_dict_is_zero_outside_the_map():
    d = layer_scale_dict(["up.block_0.1", "mid"], BLOCKS, 0.7)
    assert d == {"down": {"block_1": [0.0, 0.0]}, "up": {"block_0": [0.0, 0.7, 0.0]}, "mid": 0.7}
