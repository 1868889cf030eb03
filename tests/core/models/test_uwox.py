"""The uwox / unit model: presets, stage shapes, patch positions, masking, groups, backbone, BERT init."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertModel

from fedvlp.core.config import ConfigError
from fedvlp.core.models.uwox import (
    UWOXBackboneSource,
    UWOXConfig,
    UWOXModel,
    _patchify,
    build_uwox_model,
    patch_positions,
    unpatchify,
)
from fedvlp.core.params import group_of

torch.set_num_threads(1)

VOCAB = 100
SPECIAL = [0, 1, 2, 3, 4]
ALL = {"mlm": 1.0, "mim": 1.0, "matching": 1.0}


def _build(
    fusion: bool = False, weights: dict[str, float] | None = None, image_size: int = 32, seed: int = 0
) -> UWOXModel:
    torch.manual_seed(seed)
    config = UWOXConfig.preset("tiny", image_size, VOCAB, fusion)
    return build_uwox_model(config, SPECIAL, 4, 0.15, ALL if weights is None else weights)


def _text(batch: int = 2, length: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(5, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 4:] = 0
    return ids, mask


def test_presets_and_their_checks() -> None:
    tiny, small, base = (
        UWOXConfig.preset("tiny", 32, VOCAB),
        UWOXConfig.preset("small", 64, VOCAB),
        UWOXConfig.preset("base", 224, VOCAB, fusion=True),
    )
    assert (tiny.hidden, tiny.layers, tiny.heads, tiny.patch, tiny.level_tokens) == (32, 1, 2, 8, (16, 4, 1))
    assert (small.hidden, small.layers, small.heads, small.patch, small.level_tokens) == (128, 2, 2, 16, (16, 4, 1))
    assert (base.hidden, base.layers, base.heads, base.intermediate, base.fusion) == (768, 12, 12, 3072, True)
    assert base.level_grids == (14, 7, 4)  # the 56 px level is padded to 4 x 4 patches
    with pytest.raises(ConfigError, match="image-size"):
        UWOXConfig.preset("small", 72, VOCAB)
    with pytest.raises(ConfigError, match="model-size"):
        UWOXConfig.preset("huge", 64, VOCAB)


def test_output_shapes_of_every_stage() -> None:
    model = _build().eval()
    images, (ids, mask) = torch.rand(2, 1, 32, 32), _text()
    assert model.text(ids).shape == (2, 7, 32)
    assert model.encode_text(ids, mask).shape == (2, 7, 32)
    assert [t.shape for t in model.image(images)] == [(2, 16, 32), (2, 4, 32), (2, 1, 32)]
    assert model.image.patchify(images).shape == (2, 16, 64)
    encoded = model.encode_image(images)
    assert encoded["tokens"].shape == (2, 21, 32)
    assert [t.shape for t in encoded["levels"]] == [(2, 16, 32), (2, 4, 32), (2, 1, 32)]
    assert [t.shape for t in encoded["shared"]] == [(2, 16, 32), (2, 4, 32), (2, 1, 32)]
    assert torch.equal(torch.cat(encoded["levels"], dim=1), encoded["tokens"])
    assert model.head["mim"].decoder(*encoded["levels"]).shape == (2, 16, 64)
    assert model.head["matching"].logits(model, model.encode_text(ids, mask), mask, encoded["tokens"]).shape == (2,)
    backbone = model.image_backbone()
    assert backbone(images).shape == (2, 32) and backbone.out_dim == 32


def test_six_value_positions_of_known_patches() -> None:
    # 32 px, 8 px patches: full level 4 x 4, row 1 col 2 is patch 6 (row-major).
    assert patch_positions(32, 8)[6].tolist() == [0.5, 0.25, 0.75, 0.5, 0.25, 0.25]
    # 1/2 level (16 px): 2 x 2 patches, row 1 col 0 is patch 2.
    assert patch_positions(16, 8)[2].tolist() == [0.0, 0.5, 0.5, 1.0, 0.5, 0.5]
    # 1/4 level (8 px): one patch, the whole image.
    assert patch_positions(8, 8).tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0, 1.0]]
    model = _build()
    assert torch.equal(model.image.positions(1), patch_positions(16, 8))


def test_a_partial_edge_patch_describes_only_real_pixels() -> None:
    # 48 px image: the 1/4 level is 12 px, cut into 2 x 2 patches of 8 px, the second one 4 px wide.
    positions = patch_positions(12, 8)
    assert positions.shape == (4, 6)
    assert torch.allclose(positions[1], torch.tensor([8 / 12, 0.0, 1.0, 8 / 12, 4 / 12, 8 / 12]))
    model = _build(image_size=48).eval()
    assert model.encode_image(torch.rand(1, 1, 48, 48))["tokens"].shape == (1, 36 + 9 + 4, 32)


def test_masked_pixels_are_invisible_at_every_level() -> None:
    model = _build().eval()
    images = torch.rand(1, 1, 32, 32)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 5] = True  # row 1, col 1: pixels 8..15 x 8..15
    changed = images.clone()
    changed[..., 8:16, 8:16] = torch.rand(8, 8)
    before, after = model.encode_image(images, mask), model.encode_image(changed, mask)
    for level in range(3):
        assert torch.allclose(before["shared"][level], after["shared"][level], atol=1e-6)
    visible = images.clone()
    visible[..., 0:8, 0:8] = 1.0 - visible[..., 0:8, 0:8]  # an unmasked patch does change the encoding
    assert not torch.allclose(model.encode_image(visible, mask)["tokens"], before["tokens"])


def test_state_dict_keys_all_belong_to_a_group() -> None:
    for fusion in (False, True):
        groups = {group_of(name) for name in _build(fusion).state_dict()}
        assert groups == {"image", "text", "joint", "head.mlm", "head.mim", "head.matching"}


def test_only_objectives_with_positive_weight_get_a_head() -> None:
    model = _build(weights={"mlm": 1.0, "mim": 0.0, "matching": 0.0, "contrastive": 0.0})
    assert [o.name for o in model.objectives] == ["mlm"]
    assert model.max_text_len == 48
    with pytest.raises(ValueError, match="contrastive"):
        _build(weights={"mlm": 1.0, "contrastive": 1.0})


def test_image_backbone_shares_parameters_and_mean_pools_all_levels() -> None:
    model = _build(fusion=True).eval()
    backbone = model.image_backbone()
    model_params = {id(p) for p in model.parameters()}
    assert all(id(p) in model_params for p in backbone.parameters())
    assert not any(name.startswith("joint.fusion") for name in backbone.state_dict())
    images = torch.rand(2, 1, 32, 32)
    assert torch.allclose(backbone(images), model.encode_image(images)["tokens"].mean(1))


def test_backbone_source_builds_a_standalone_backbone_that_loads_the_model_state() -> None:
    model = _build(fusion=True).eval()
    source = UWOXBackboneSource(model.config)
    standalone = source()
    state = {k: v for k, v in model.state_dict().items() if k in standalone.state_dict()}
    standalone.load_state_dict(state, strict=True)
    images = torch.rand(2, 1, 32, 32)
    assert torch.allclose(standalone.eval()(images), model.image_backbone()(images), atol=1e-6)
    assert source.description["encoder"] == "uwox" and source.description["hidden"] == 32


def test_unit_fusion_layer_exists_and_changes_the_matching_output() -> None:
    uwox, unit = _build(fusion=False).eval(), _build(fusion=True).eval()
    assert uwox.joint.fusion is None
    assert sum(p.numel() for p in unit.joint.fusion.parameters()) > 0
    ids, mask = _text()
    text, image = unit.encode_text(ids, mask), unit.encode_image(torch.rand(2, 1, 32, 32))["tokens"]
    head = unit.head["matching"]
    unfused = head.logits(SimpleNamespace(pair_states=lambda t, m, i: (t, i)), text, mask, image)
    fused = head.logits(unit, text, mask, image)
    f_img, f_txt = unit.joint.fusion(text, mask, image)
    assert f_img.shape == text.shape and f_txt.shape == image.shape
    assert not torch.allclose(fused, unfused)


def test_fusion_ignores_padded_report_tokens() -> None:
    unit = _build(fusion=True).eval()
    ids, mask = _text()
    text, image = unit.encode_text(ids, mask), unit.encode_image(torch.rand(2, 1, 32, 32))["tokens"]
    _, f_txt = unit.joint.fusion(text, mask, image)
    garbage = text.clone()
    garbage[0, 4:] = 100.0  # padding positions of row 0
    _, f_txt_garbage = unit.joint.fusion(garbage, mask, image)
    assert torch.allclose(f_txt, f_txt_garbage, atol=1e-5)


def _tiny_bert(layers: int = 2, hidden: int = 32) -> BertModel:
    torch.manual_seed(3)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    return BertModel(config, add_pooling_layer=False).eval()


def test_bert_layers_map_onto_the_shared_encoder_and_the_uwox_layer() -> None:
    bert = _tiny_bert(layers=2)
    state = copy.deepcopy(bert.state_dict())
    model = _build().eval()
    mapping = model.init_shared_from(state)
    assert mapping["joint.encoder.layer.0.attention.self.query.weight"] == "encoder.layer.0.attention.self.query.weight"
    assert mapping["joint.uwox.output.dense.weight"] == "encoder.layer.1.output.dense.weight"
    query = state["encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(model.joint.encoder.layer[0].attention.self.query.weight, query)
    assert torch.equal(model.joint.uwox.output.dense.weight, state["encoder.layer.1.output.dense.weight"])
    assert torch.equal(model.text.token.weight, state["embeddings.word_embeddings.weight"])
    assert torch.equal(model.text.position.weight, state["embeddings.position_embeddings.weight"][:48])
    # Same structure, same function: the shared stack computes what BERT's two layers compute.
    hidden = torch.randn(2, 5, 32)
    expected = bert.encoder.layer[1](bert.encoder.layer[0](hidden))
    assert torch.allclose(model.joint.top(model.joint.shared(hidden)), expected, atol=1e-5)


def test_bert_init_accepts_prefixed_keys_and_rejects_a_shallower_or_narrower_bert() -> None:
    model = _build()
    prefixed = {f"bert.{k}": v for k, v in _tiny_bert(layers=1).state_dict().items()}
    mapping = model.init_shared_from(prefixed, embeddings=False)
    assert set(mapping) == {k for k in model.state_dict() if k.startswith("joint.encoder.")}
    assert all(v.startswith("bert.encoder.layer.0.") for v in mapping.values())
    deeper = build_uwox_model(UWOXConfig(32, 3, 2, 64, 8, 32, 48, VOCAB), SPECIAL, 4, 0.15, ALL)
    with pytest.raises(ValueError, match="layers"):
        deeper.init_shared_from(_tiny_bert(layers=2).state_dict())
    with pytest.raises(ValueError, match="shape"):
        model.init_shared_from(_tiny_bert(layers=1, hidden=64).state_dict(), embeddings=False)


def test_reports_longer_than_max_len_are_rejected() -> None:
    model = _build()
    ids = torch.full((1, 49), 7)
    with pytest.raises(ValueError, match="max_len"):
        model.encode_text(ids, torch.ones_like(ids))
    with torch.no_grad():
        assert math.isfinite(float(model.encode_text(ids[:, :48], torch.ones(1, 48)).sum()))


def test_uwox_patches_are_put_back_where_they_came_from() -> None:
    images = torch.rand(2, 1, 32, 32)
    assert torch.equal(unpatchify(_patchify(images, 8), 8, 32), images)
