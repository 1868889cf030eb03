"""The refers recipe's model: ViT shapes, view fusion, parameter groups, and that it learns."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedvlp.core.config import ConfigError
from fedvlp.core.data.synthetic import render_image, sample_case, write_report
from fedvlp.core.data.tokenizer import SPECIAL_TOKENS, load_tokenizer
from fedvlp.core.models.refers import REFERSModel, build_refers_model
from fedvlp.core.models.vit import ViTConfig, ViTEncoder, ViTSource
from fedvlp.core.objectives import BatchView
from fedvlp.core.objectives.study_contrastive import StudyContrastiveObjective, encode_views
from fedvlp.core.params import group_of, strip_group

torch.set_num_threads(1)


def _build(weights: dict[str, float] | None = None, seed: int = 0) -> REFERSModel:
    tok = load_tokenizer("demo")
    special = [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS]
    weights = {"contrastive": 1.0, "generation": 1.0} if weights is None else weights
    return build_refers_model(
        "tiny",
        32,
        len(tok),
        special,
        tok.pad_token_id,
        tok.cls_token_id,
        tok.sep_token_id,
        tau=0.1,
        lam=0.75,
        weights=weights,
        seed=seed,
    )


def _pairs_batch(count: int, size: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    """Synthetic radiographs and their reports, as a plain ``image`` batch."""
    rng = np.random.default_rng(seed)
    images, reports = [], []
    for _ in range(count):
        case = sample_case(rng)
        images.append(torch.from_numpy(render_image(case, rng, size)).float().div(255.0).unsqueeze(0))
        reports.append(write_report(case, rng))
    encoded = load_tokenizer("demo")(reports, padding=True, truncation=True, max_length=48, return_tensors="pt")
    return {
        "image": torch.stack(images),
        "input_ids": encoded["input_ids"],
        "attention_mask": encoded["attention_mask"],
    }


def test_vit_outputs_class_token_all_tokens_and_a_patch_map() -> None:
    vit = ViTEncoder(ViTConfig.preset("tiny", 32))
    images = torch.rand(2, 1, 32, 32)
    assert vit.out_dim == 32
    assert vit(images).shape == (2, 32)
    assert vit.forward_tokens(images).shape == (2, 1 + 16, 32)
    assert vit.forward_features(images).shape == (2, 32, 4, 4)
    assert torch.allclose(vit(images), vit.forward_tokens(images)[:, 0])


def test_vit_presets_and_their_checks() -> None:
    base = ViTConfig.preset("base", 224)
    assert (base.patch_size, base.dim, base.depth, base.heads, base.num_patches) == (16, 768, 12, 12, 196)
    assert ViTConfig.preset("small", 64).num_patches == 64
    with pytest.raises(ConfigError, match="image-size"):
        ViTConfig.preset("base", 40)
    with pytest.raises(ConfigError, match="model-size"):
        ViTConfig.preset("huge", 64)
    with pytest.raises(ValueError, match=r"\(B, 1, 32, 32\)"):
        ViTEncoder(ViTConfig.preset("tiny", 32))(torch.rand(1, 1, 64, 64))


def test_fusion_weights_are_a_distribution_over_the_three_views() -> None:
    torch.manual_seed(0)
    head = StudyContrastiveObjective(image_dim=8, text_dim=8, embed_dim=4)
    features = torch.randn(5, 3, 8)
    study, weights = head.fuse(features)
    assert study.shape == (5, 8) and weights.shape == (5, 3)
    assert torch.all(weights > 0)
    assert torch.allclose(weights.sum(dim=1), torch.ones(5))
    assert torch.allclose(study, (weights.unsqueeze(-1) * features).sum(1))


def test_three_identical_views_fuse_to_that_view() -> None:
    torch.manual_seed(0)
    head = StudyContrastiveObjective(image_dim=4, text_dim=4, embed_dim=4)
    view = torch.tensor([[1.0, -2.0, 0.5, 3.0]])
    study, _ = head.fuse(view.unsqueeze(1).expand(1, 3, 4))
    assert torch.allclose(study, view, atol=1e-6)


def test_an_image_batch_is_a_one_view_study_repeated_three_times() -> None:
    model = _build().eval()
    image = torch.rand(2, 1, 32, 32)
    tokens, mask = encode_views(BatchView(model, {"image": image}))
    assert tokens.shape == (2, 3, 17, 32)
    assert mask.tolist() == [[True, False, False]] * 2
    single = model.image.forward_tokens(image)
    for slot in range(3):
        assert torch.allclose(tokens[:, slot], single, atol=1e-5)


def test_placeholder_views_are_copies_of_real_views_whatever_their_pixels() -> None:
    model = _build().eval()
    views = torch.rand(1, 3, 1, 32, 32)
    mask = torch.tensor([[True, True, False]])
    tokens, _ = encode_views(BatchView(model, {"views": views, "view_mask": mask}))
    assert torch.allclose(tokens[:, 2], tokens[:, 0])
    assert torch.allclose(tokens[:, 1], model.image.forward_tokens(views[:, 1]), atol=1e-5)


def test_state_dict_keys_all_belong_to_a_group() -> None:
    groups = {group_of(name) for name in _build().state_dict()}
    assert groups == {"image", "text", "head.contrastive", "head.generation"}


def test_the_image_group_loads_into_a_bare_vit() -> None:
    model = _build()
    source = ViTSource(model.config.vit)
    encoder = source()
    encoder.load_state_dict(strip_group(model.state_dict(), "image"), strict=True)
    images = torch.rand(2, 1, 32, 32)
    assert torch.allclose(encoder.eval()(images), model.image_backbone().eval()(images))
    assert source.description["encoder"] == "vit" and source.description["dim"] == 32


def test_only_objectives_with_positive_weight_get_a_head() -> None:
    model = _build({"contrastive": 1.0, "generation": 0.0, "mlm": 0.0})
    assert [o.name for o in model.objectives] == ["contrastive"]
    assert model.image_backbone() is model.image
    with pytest.raises(ValueError, match="mlm"):
        _build({"contrastive": 1.0, "mlm": 1.0})


def test_thirty_steps_on_a_fixed_batch_lower_the_loss() -> None:
    model = _build(seed=1).train()
    batch = _pairs_batch(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        view = BatchView(model, batch)
        loss = sum(objective.loss(view) for objective in model.objectives)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.9 * np.mean(losses[:5])
