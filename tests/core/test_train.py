"""Local training: the right objectives per batch, gradients only where data reaches."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch

from fedvlp.core.config import ConfigError, RunConfig, load_site
from fedvlp.core.models import build_model
from fedvlp.core.params import group_of
from fedvlp.core.train import LocalTrainer, load_site_datasets

CPU = torch.device("cpu")


def _trainer(site_file: Path, run: RunConfig) -> LocalTrainer:
    model = build_model(run)
    return LocalTrainer(model, load_site_datasets(load_site(site_file), run, model.max_text_len), run, CPU)


def _changed_groups(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {group_of(k) for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize(
    ("site", "groups"),
    [
        ("hospital_a.yaml", {"image", "text", "head.contrastive", "head.matching", "head.mlm", "head.mim"}),
        ("hospital_b.yaml", {"image", "head.mim"}),
        ("hospital_c.yaml", {"text", "head.mlm"}),
    ],
)
def test_a_site_changes_exactly_the_groups_its_data_reaches(
    demo_env: Path, tiny_run: RunConfig, site: str, groups: set[str]
) -> None:
    trainer = _trainer(demo_env / site, tiny_run)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(steps=2)
    assert _changed_groups(before, trainer.model.state_dict()) == groups
    assert set(result.group_counts) == groups


def test_group_counts_are_the_usable_rows_of_the_site(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run)
    rows = len(pd.read_csv(trainer.datasets[0].rows.source.manifest))
    assert trainer.group_counts() == {"image": rows, "head.mim": rows}


def test_same_seed_gives_identical_weights(demo_env: Path, tiny_run: RunConfig) -> None:
    states = []
    for _ in range(2):
        trainer = _trainer(demo_env / "hospital_a.yaml", tiny_run)
        trainer.train(steps=2, seed=5)
        states.append(trainer.model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_thirty_steps_lower_the_loss_on_the_demo_world(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_a.yaml", tiny_run.replace(lr=2e-3))
    first = trainer.train(steps=3, seed=0).metrics["loss/total"]
    trainer.train(steps=30, seed=1)
    last = trainer.train(steps=3, seed=0).metrics["loss/total"]
    assert last < first


def _broken_site(tmp_path: Path, world: Path) -> Path:
    source = pd.read_csv(world / "hospital_a" / "manifest.csv")
    rows = source.head(12).copy()
    rows["image"] = [str(world / "hospital_a" / p) for p in rows["image"]]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    rows.loc[0, "image"] = str(tmp_path / "corrupt.png")
    rows.loc[1, "image"] = str(tmp_path / "missing.png")
    rows.loc[2, "report"] = ""
    rows.loc[3, "id"] = rows.loc[4, "id"]
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    site = tmp_path / "site.yaml"
    # the rows name the world's images by absolute path: that folder is an image root of the site
    site.write_text(
        f"name: broken\nimage_roots: [{world / 'hospital_a'}]\nsources:\n  - manifest: manifest.csv\n    kind: pairs\n"
    )
    return site


def test_bad_rows_are_skipped_and_counted(tmp_path: Path, world: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(_broken_site(tmp_path, world), tiny_run.replace(batch_size=12))
    result = trainer.train(steps=2)
    assert result.skipped == {"image_corrupt": 1, "image_missing": 1, "empty_report": 1, "duplicate_id": 1}
    assert result.metrics["skipped/image_corrupt"] == 1.0 and result.metrics["skipped/image_missing"] == 1.0
    assert any("corrupt.png" in p for p in trainer.problems)


def test_image_only_augment_changes_the_views_of_sources_without_text_only(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(image_only_augment="strong")
    images_only = load_site_datasets(load_site(demo_env / "hospital_b.yaml"), run, 48)
    pairs = load_site_datasets(load_site(demo_env / "hospital_a.yaml"), run, 48)
    assert [d.profile for d in images_only] == ["strong"]
    assert [d.profile for d in pairs] == ["light"]  # a flip would contradict "left" in a report
    assert [d.profile for d in load_site_datasets(load_site(demo_env / "hospital_b.yaml"), tiny_run, 48)] == ["light"]


def test_a_site_with_no_usable_row_fails_clearly(tmp_path: Path, tiny_run: RunConfig) -> None:
    (tmp_path / "m.csv").write_text("id,report\na,\nb,\n")
    site = tmp_path / "site.yaml"
    site.write_text("name: empty\nsources:\n  - manifest: m.csv\n    kind: reports\n")
    with pytest.raises(ConfigError, match="site.yaml.*all rows were skipped"):
        load_site_datasets(load_site(site), tiny_run, 48)


def test_missing_manifest_column_names_file_and_column(tmp_path: Path, tiny_run: RunConfig) -> None:
    (tmp_path / "m.csv").write_text("id,text\na,hello\n")
    site = tmp_path / "site.yaml"
    site.write_text("name: c\nsources:\n  - manifest: m.csv\n    kind: reports\n")
    with pytest.raises(ConfigError, match=r"m.csv: key 'report'"):
        load_site_datasets(load_site(site), tiny_run, 48)


@pytest.mark.parametrize("recipe", ["mixed", "convirt", "timnet", "refers", "uwox", "unit"])
def test_thirty_steps_lower_each_recipes_loss_on_the_pair_site(
    demo_env: Path, tiny_run: RunConfig, recipe: str
) -> None:
    run = tiny_run.replace(recipe=recipe, batch_size=16)
    trainer = _trainer(demo_env / "hospital_a.yaml", run)
    first = trainer.train(steps=5, seed=0).metrics["loss/total"]
    trainer.train(steps=30, seed=1)
    last = trainer.train(steps=5, seed=0).metrics["loss/total"]
    assert last < first


@pytest.mark.parametrize("recipe", ["convirt", "timnet", "refers"])
def test_pair_only_recipes_train_nothing_at_an_image_only_site(
    demo_env: Path, tiny_run: RunConfig, recipe: str
) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run.replace(recipe=recipe))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(steps=2)
    assert result.group_counts == {}
    assert _changed_groups(before, trainer.model.state_dict()) == set()


@pytest.mark.parametrize(
    ("recipe", "site", "groups"),
    [
        ("uwox", "hospital_b.yaml", {"image", "joint", "head.mim"}),
        ("uwox", "hospital_c.yaml", {"text", "joint", "head.mlm"}),
        ("unit", "hospital_b.yaml", {"image", "joint", "head.mim"}),
    ],
)
def test_shared_encoder_recipes_train_joint_from_either_modality(
    demo_env: Path, tiny_run: RunConfig, recipe: str, site: str, groups: set[str]
) -> None:
    trainer = _trainer(demo_env / site, tiny_run.replace(recipe=recipe))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    result = trainer.train(steps=2)
    assert _changed_groups(before, trainer.model.state_dict()) == groups == set(result.group_counts)


def test_unit_fusion_layer_gets_no_gradient_without_pairs(demo_env: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(demo_env / "hospital_b.yaml", tiny_run.replace(recipe="unit"))
    result = trainer.train(steps=2)
    fusion = {n for n, _ in trainer.model.named_parameters() if n.startswith("joint.fusion.")}
    assert fusion and not fusion & result.touched


def _pooled_site(tmp_path: Path, world: Path) -> Path:
    """hospital_b's images with hospital_c's reports as a public unpaired text pool."""
    site = tmp_path / "pooled.yaml"
    site.write_text(
        "name: pooled\nsources:\n"
        f"  - manifest: {world / 'hospital_b' / 'manifest.csv'}\n    kind: images\n"
        f"    unpaired_text_pool: {world / 'hospital_c' / 'manifest.csv'}\n"
    )
    return site


def test_an_unpaired_text_pool_lets_an_image_site_train_uwox_matching(
    tmp_path: Path, world: Path, tiny_run: RunConfig
) -> None:
    trainer = _trainer(_pooled_site(tmp_path, world), tiny_run.replace(recipe="uwox"))
    batch = trainer._next_batch(0)
    assert batch["paired"].eq(0).all() and "input_ids" in batch  # images coupled with pool reports
    result = trainer.train(steps=2)
    assert "loss/matching" in result.metrics and "head.matching" in result.group_counts


def test_unpaired_tuples_never_train_pair_objectives(tmp_path: Path, world: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(_pooled_site(tmp_path, world), tiny_run)  # mixed: contrastive and matching need true pairs
    result = trainer.train(steps=2)
    assert "loss/contrastive" not in result.metrics and "loss/matching" not in result.metrics
    assert {"head.contrastive", "head.matching"}.isdisjoint(result.group_counts)


def test_unpaired_text_pool_is_only_for_image_sources(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,image,report\n")
    site = tmp_path / "site.yaml"
    site.write_text("name: x\nsources:\n  - manifest: m.csv\n    kind: pairs\n    unpaired_text_pool: m.csv\n")
    with pytest.raises(ConfigError, match="only on an image-only source"):
        load_site(site)


def test_bert_init_starts_the_uwox_shared_encoder_from_bert(tmp_path: Path, tiny_run: RunConfig) -> None:
    from transformers import BertConfig, BertModel

    from fedvlp.core.models.uwox import UWOXConfig

    preset = UWOXConfig.preset("tiny", 32, 10)
    bert = BertModel(
        BertConfig(
            vocab_size=30,
            hidden_size=preset.hidden,
            num_hidden_layers=2,
            num_attention_heads=preset.heads,
            intermediate_size=preset.intermediate,
        )
    )
    bert.save_pretrained(tmp_path / "bert")
    model = build_model(tiny_run.replace(recipe="uwox", bert_init=str(tmp_path / "bert")))
    ours = model.state_dict()["joint.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(ours, bert.state_dict()["encoder.layer.0.attention.self.query.weight"])


def test_a_missing_bert_init_is_a_clear_error(tmp_path: Path, tiny_run: RunConfig) -> None:
    with pytest.raises(ConfigError, match="bert-init"):
        build_model(tiny_run.replace(recipe="uwox", bert_init=str(tmp_path / "nothing")))


def _site_with_unreadable_images(tmp_path: Path, world: Path) -> Path:
    """50 image rows of the world's hospital_b; 11 of them point at real unreadable files."""
    rows = pd.read_csv(world / "hospital_b" / "manifest.csv").head(50).copy()
    rows["image"] = [str(world / "hospital_b" / p) for p in rows["image"]]
    good = (world / "hospital_b" / rows.loc[0, "image"]).read_bytes()
    for k in range(11):
        bad = tmp_path / f"bad{k}.png"
        # garbage, a PNG cut after its header, an empty file: corrupt or truncated, never decodable
        bad.write_bytes([b"not an image at all", good[:60], b""][k % 3])
        rows.loc[4 * k + 1, "image"] = str(bad)
    rows.to_csv(tmp_path / "manifest.csv", index=False)
    site = tmp_path / "site.yaml"
    site.write_text(
        f"name: unreadable\nimage_roots: [{world / 'hospital_b'}]\nsources:\n  - manifest: manifest.csv\n    kind: "
        "images\n"
    )
    return site


def test_counts_sent_are_the_samples_that_trained(tmp_path: Path, world: Path, tiny_run: RunConfig) -> None:
    trainer = _trainer(_site_with_unreadable_images(tmp_path, world), tiny_run.replace(batch_size=50))
    result = trainer.train(steps=1)  # one batch of 50: every row is drawn once
    assert sum(result.skipped.values()) == 11
    assert result.group_counts == {"image": 39, "head.mim": 39}


def test_a_cuda_device_without_a_gpu_is_a_config_error_naming_its_origin() -> None:
    from fedvlp.core.config import ConfigError
    from fedvlp.core.train import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"^sites/h\.yaml: key 'device': expected 'auto' or 'cpu' on this machine"):
        resolve_device("cuda:1", "sites/h.yaml")
