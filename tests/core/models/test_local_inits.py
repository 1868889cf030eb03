"""``image-init`` / ``text-init`` from local files: torchvision ResNet state dicts and Hugging
Face BERT folders, built here from randomly initialised torchvision / transformers models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from transformers import BertConfig, BertForMaskedLM, BertModel, BertTokenizerFast

from fedvlp.core.config import ConfigError, ImageEncoderConfig, RunConfig, project_root
from fedvlp.core.data.tokenizer import load_tokenizer as load_tokenizer_of
from fedvlp.core.data.tokenizer import vocab_path
from fedvlp.core.models import build_model
from fedvlp.core.models.image import ResNetEncoder
from fedvlp.core.models.pretrained import _state_mismatch, write_vocab_txt

DEMO_TOKENS = [t for t in vocab_path("demo").read_text(encoding="utf-8").splitlines() if t]


def _run(**changes: object) -> RunConfig:
    return RunConfig(model_size="tiny", image_size=32, sites=str(project_root() / "sites" / "demo"), **changes)  # type: ignore[arg-type]


def _bert_folder(
    folder: Path, hidden: int = 32, vocab: list[str] | None = None, masked_lm: bool = True, **config: object
) -> torch.nn.Module:
    """A random tiny BERT saved with save_pretrained, its tokenizer and vocab.txt."""
    tokens = vocab or DEMO_TOKENS
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        **config,
    )
    model = BertForMaskedLM(cfg) if masked_lm else BertModel(cfg)
    model.save_pretrained(str(folder))
    BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True).save_pretrained(str(folder))
    write_vocab_txt(folder)  # transformers 5 writes tokenizer.json only
    return model


# ------------------------------------------------------------------------------ image side
def test_torchvision_resnet18_file_lands_in_the_image_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(_run(image_init=str(tmp_path / "resnet18.pth")))
    assert model.image.config == ImageEncoderConfig("basic", (2, 2, 2, 2), (64, 128, 256, 512), 1, 32)
    assert torch.equal(model.image.stages[3][1].conv2.weight, resnet.layer4[1].conv2.weight)
    assert torch.equal(model.image.stages[1][0].downsample[1].running_var, resnet.layer2[0].downsample[1].running_var)
    assert model.head["contrastive"].image_proj[0].in_features == 512  # heads follow the loaded width


def test_imagenet_stem_becomes_a_grey_stem_for_fedvlp_normalisation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None).eval()
    resnet.bn1.running_mean.normal_(0, 0.5)
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    model = build_model(_run(image_init=str(tmp_path / "resnet18.pth"))).eval()
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    # z_c = (x - m_c) / s_c = (0.25 / s_c) z + (0.5 - m_c) / s_c with fedvlp's z = (x - 0.5) / 0.25
    weight = resnet.conv1.weight.detach()
    assert torch.allclose(model.image.stem[0].weight, (weight * 0.25 / std).sum(dim=1, keepdim=True))
    assert torch.allclose(
        model.image.stem[1].running_mean,
        resnet.bn1.running_mean - (weight * (0.5 - mean) / std).sum(dim=(1, 2, 3)),
        atol=1e-6,
    )
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model.image.stem[1](model.image.stem[0]((grey - 0.5) / 0.25))
        theirs = resnet.bn1(resnet.conv1((grey.expand(-1, 3, -1, -1) - mean) / std))
    # equal away from the 7x7 stem's zero padding (2 output pixels at stride 2)
    assert torch.allclose(ours[..., 2:-2, 2:-2], theirs[..., 2:-2, 2:-2], atol=1e-5)
    assert not torch.allclose(ours[..., 0, :], theirs[..., 0, :], atol=1e-3)  # the border is where they differ


def test_torchvision_resnet50_safetensors_gives_convirt_a_bottleneck_encoder(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet50(weights=None)
    save_file(resnet.state_dict(), str(tmp_path / "resnet50.safetensors"))
    model = build_model(_run(recipe="convirt", image_init=str(tmp_path / "resnet50.safetensors")))
    assert (model.image.config.block, model.image.config.layers, model.image.out_dim) == (
        "bottleneck",
        (3, 4, 6, 3),
        2048,
    )
    assert torch.equal(model.image.stages[2][5].conv3.weight, resnet.layer3[5].conv3.weight)


def test_wrapped_checkpoint_with_module_prefix_is_unwrapped(tmp_path: Path) -> None:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None)
    torch.save(
        {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet.state_dict().items()}}, tmp_path / "ckpt.pth"
    )
    model = build_model(_run(image_init=str(tmp_path / "ckpt.pth")))
    assert torch.equal(model.image.stages[0][0].bn1.weight, resnet.layer1[0].bn1.weight)


def test_fedvlp_export_is_an_image_init_with_the_same_weights(tmp_path: Path) -> None:
    from fedvlp.core.export import export_image_encoder

    torch.manual_seed(0)
    encoder = ResNetEncoder(ImageEncoderConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), image_size=32))
    export_image_encoder(encoder, tmp_path, 32)
    model = build_model(_run(image_init=str(tmp_path / "image_encoder.safetensors")))
    theirs = model.image.state_dict()
    assert set(theirs) == set(encoder.state_dict())
    for key, value in encoder.state_dict().items():  # the stem went through / 3 and back through the sum
        assert torch.allclose(theirs[key], value, atol=1e-7, rtol=0), key


def test_vit_file_as_resnet_image_init_is_refused_naming_the_file(tmp_path: Path) -> None:
    save_file(
        {"patch_embed.proj.weight": torch.zeros(8, 3, 8, 8), "cls_token": torch.zeros(1, 1, 8)},
        str(tmp_path / "vit.safetensors"),
    )
    with pytest.raises(
        ConfigError,
        match=r"vit\.safetensors: key 'image-init': expected a torchvision ResNet state dict .* \(a timm ViT: it "
        r"fits recipe refers\)",
    ):
        build_model(_run(image_init=str(tmp_path / "vit.safetensors")))


def test_group_norm_resnet_file_is_refused_with_its_missing_statistics(tmp_path: Path) -> None:
    from fedvlp.core.export import torchvision_resnet_state

    encoder = ResNetEncoder(
        ImageEncoderConfig(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), image_size=32), norm="group"
    )
    save_file(torchvision_resnet_state(encoder), str(tmp_path / "gn.safetensors"))
    with pytest.raises(
        ConfigError,
        match=r"gn\.safetensors: key 'image-init': expected a torchvision ResNet with BatchNorm .*missing "
        r"\['stages\.0\.0\.bn1\.num_batches_tracked'",
    ):
        build_model(_run(image_init=str(tmp_path / "gn.safetensors")))


def test_image_init_path_that_does_not_exist_fails_at_config(tmp_path: Path) -> None:
    with pytest.raises(
        ConfigError,
        match=r"key 'image-init': expected one of \('', 'efficientnet-lite0'\) or a torchvision ResNet state dict "
        r"file, got '.*nope\.pth'",
    ):
        _run(image_init=str(tmp_path / "nope.pth")).validate()


def test_resnet_file_with_refers_is_refused_naming_what_the_vit_needs(tmp_path: Path) -> None:
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(
        ConfigError,
        match=r"resnet18\.pth: key 'image-init': expected a timm VisionTransformer with class token, width 32",
    ):
        build_model(_run(recipe="refers", image_init=str(tmp_path / "resnet18.pth")))


def test_packaged_image_init_with_refers_is_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"key 'image-init': expected '' with recipe 'refers'"):
        build_model(_run(recipe="refers", image_init="efficientnet-lite0"))


# ------------------------------------------------------------------------------- text side
def test_bert_folder_lands_in_the_text_encoder(tmp_path: Path) -> None:
    bert = _bert_folder(tmp_path / "bert")
    model = build_model(_run(text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))
    assert model.text.out_dim == 32 and len(model.text.bert.encoder.layer) == 2
    assert torch.equal(
        model.text.bert.encoder.layer[1].attention.self.query.weight,
        bert.bert.encoder.layer[1].attention.self.query.weight,
    )
    # the tiny preset's 48 positions and token type 0 of the file's tables
    assert torch.equal(
        model.text.bert.embeddings.position_embeddings.weight, bert.bert.embeddings.position_embeddings.weight[:48]
    )
    assert torch.equal(
        model.text.bert.embeddings.token_type_embeddings.weight, bert.bert.embeddings.token_type_embeddings.weight[:1]
    )


def test_plain_bert_model_folder_loads_too(tmp_path: Path) -> None:
    bert = _bert_folder(tmp_path / "bert", masked_lm=False)
    model = build_model(_run(recipe="timnet", text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))
    assert torch.equal(model.text.bert.embeddings.word_embeddings.weight, bert.embeddings.word_embeddings.weight)


def test_text_init_folder_refuses_another_vocabulary_as_tokenizer(tmp_path: Path) -> None:
    _bert_folder(tmp_path / "bert")
    (tmp_path / "other").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"key 'tokenizer': expected the text-init folder '.*bert' \(its vocab\.txt fits its embeddings\), got "
        r"'.*other'",
    ):
        build_model(_run(text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "other")))


def test_text_init_folder_brings_its_vocabulary_when_tokenizer_is_left_at_its_default(tmp_path: Path) -> None:
    from fedvlp.core.data.tokenizer import load_run_tokenizer

    _bert_folder(tmp_path / "bert")
    run = _run(text_init=str(tmp_path / "bert"))
    build_model(run)
    assert load_run_tokenizer(run).vocab == load_tokenizer_of(tmp_path / "bert").vocab


def test_non_bert_model_type_is_refused_naming_config_json(tmp_path: Path) -> None:
    _bert_folder(tmp_path / "bert")
    config = json.loads((tmp_path / "bert" / "config.json").read_text())
    (tmp_path / "bert" / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(
        ConfigError,
        match=r"bert/config\.json: key 'model_type': expected 'bert' \(a BERT-family model\), got 'roberta'",
    ):
        build_model(_run(text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))


def test_vocabulary_of_another_size_is_refused_naming_vocab_txt(tmp_path: Path) -> None:
    _bert_folder(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").write_text("".join(f"{t}\n" for t in DEMO_TOKENS[:-1]))
    with pytest.raises(
        ConfigError,
        match=rf"bert/vocab\.txt: key '\(vocabulary\)': expected {len(DEMO_TOKENS)} tokens \(config.json "
        rf"vocab_size\), got {len(DEMO_TOKENS) - 1}",
    ):
        build_model(_run(text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))


def test_folder_without_vocab_txt_says_how_to_write_it(tmp_path: Path) -> None:
    _bert_folder(tmp_path / "bert")
    (tmp_path / "bert" / "vocab.txt").unlink()
    with pytest.raises(
        ConfigError, match=r"to write vocab\.txt from tokenizer\.json run: .*write_vocab_txt\(.*got \['vocab\.txt'\]"
    ):
        build_model(_run(text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))


def test_text_init_folder_with_uwox_points_to_bert_init(tmp_path: Path) -> None:
    _bert_folder(tmp_path / "bert")
    with pytest.raises(
        ConfigError, match=r"key 'text-init': expected '' with recipe 'uwox' .*starts from a BERT folder with bert-init"
    ):
        build_model(_run(recipe="uwox", text_init=str(tmp_path / "bert"), tokenizer=str(tmp_path / "bert")))


def test_exported_text_folder_is_a_text_init(tmp_path: Path) -> None:
    from fedvlp.core.data.tokenizer import load_tokenizer
    from fedvlp.core.export import export_text_encoder

    source = build_model(_run())
    export_text_encoder(source.text, load_tokenizer("demo"), tmp_path)
    folder = str(tmp_path / "text_encoder")
    model = build_model(_run(text_init=folder, tokenizer=folder, seed=5))
    for key, value in source.text.bert.state_dict().items():
        assert torch.equal(model.text.bert.state_dict()[key], value), key


# ------------------------------------------------------------------------- refers' ViT
def _timm_vit_file(path: Path, image_size: int, **changes: object) -> torch.nn.Module:
    """A random ViT saved under timm's VisionTransformer names (what ``fedvlp export`` writes
    and ``timm.create_model(...).state_dict()`` holds), with a 3-channel patch embedding and a head."""
    from dataclasses import replace

    from fedvlp.core.export import timm_vit_state
    from fedvlp.core.models.vit import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    vit = ViTEncoder(replace(ViTConfig.preset("tiny", image_size), **changes))
    state = timm_vit_state(vit)
    state["head.weight"], state["head.bias"] = (
        torch.zeros(10, vit.config.dim),
        torch.zeros(10),
    )  # an ImageNet-style classifier
    save_file(
        state, str(path), metadata={"input_mean": "[0.5, 0.5, 0.5]", "input_std": "[0.25, 0.25, 0.25]"}
    )  # as fedvlp export writes
    return vit


def test_timm_vit_file_lands_in_refers_image_encoder(tmp_path: Path) -> None:
    vit = _timm_vit_file(tmp_path / "vit.safetensors", 32)
    model = build_model(_run(recipe="refers", image_init=str(tmp_path / "vit.safetensors")))
    theirs = model.image.state_dict()
    for key, value in vit.state_dict().items():  # patch embedding: / 3 on export, summed back here
        assert torch.allclose(theirs[key], value, atol=1e-7, rtol=0), key


def test_timm_vit_positions_are_resampled_to_the_run_image_size(tmp_path: Path) -> None:
    vit = _timm_vit_file(tmp_path / "vit.safetensors", 64)  # 8 x 8 patches + class token
    model = build_model(_run(recipe="refers", image_init=str(tmp_path / "vit.safetensors")))
    assert model.image.pos_embed.shape == (1, 1 + 4 * 4, 32)
    assert torch.equal(model.image.pos_embed[:, 0], vit.pos_embed[:, 0])  # the class token's position is kept
    assert torch.equal(model.image.blocks[1].attn.qkv.weight, vit.blocks[1].attn.qkv.weight)


def test_timm_vit_of_another_width_names_what_the_preset_needs(tmp_path: Path) -> None:
    _timm_vit_file(tmp_path / "vit.safetensors", 32, dim=64)
    with pytest.raises(
        ConfigError,
        match=r"vit\.safetensors: key 'image-init': expected a timm VisionTransformer with class token, width 32, "
        r"depth 2, patch 8 \(refers model-size 'tiny'\), got .*other shape",
    ):
        build_model(_run(recipe="refers", image_init=str(tmp_path / "vit.safetensors")))


def test_imagenet_vit_gives_the_features_of_imagenet_normalised_rgb(tmp_path: Path) -> None:
    from dataclasses import replace

    from fedvlp.core.export import timm_vit_state
    from fedvlp.core.models.vit import ViTConfig, ViTEncoder

    torch.manual_seed(0)
    rgb = ViTEncoder(replace(ViTConfig.preset("tiny", 32), in_chans=3)).eval()
    save_file(timm_vit_state(rgb), str(tmp_path / "vit.safetensors"))  # no metadata: ImageNet's mean/std assumed
    model = build_model(_run(recipe="refers", image_init=str(tmp_path / "vit.safetensors"))).eval()
    grey = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    imagenet = (grey.expand(-1, 3, -1, -1) - mean) / std
    with torch.no_grad():  # rgb normalises (x - 0.5) / 0.25 inside: feed it x' whose normalisation is `imagenet`
        assert torch.allclose(model.image(grey), rgb(imagenet * 0.25 + 0.5), atol=1e-5)


def test_state_mismatch_names_missing_unexpected_and_reshaped_keys() -> None:
    ours = {"a": torch.zeros(2), "b": torch.zeros(3), "c": torch.zeros(1)}
    theirs = {"a": torch.zeros(2), "b": torch.zeros(4), "d": torch.zeros(1)}
    assert _state_mismatch(ours, theirs) == "missing ['c']; unexpected ['d']; other shape ['b']"
    assert _state_mismatch(ours, dict(ours)) == ""
