"""A failing site replies with an error code and one line; the traceback stays in its own log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, Metadata, RecordDict

from fedvlp.client.app import error_reason, make_client_app
from fedvlp.core.config import ConfigError, RunConfig
from fedvlp.core.models import build_model
from fedvlp.core.params import ARRAYS_KEY, CONFIG_KEY, ERROR_NO_DATA, ERROR_SITE_CONFIG, ERROR_TRAINING


def _train_message(state: dict[str, torch.Tensor]) -> Message:
    content = RecordDict({ARRAYS_KEY: ArrayRecord(state), CONFIG_KEY: ConfigRecord({"server-round": 1})})
    metadata = Metadata(
        run_id=1,
        message_id="m1",
        src_node_id=0,
        dst_node_id=5,
        reply_to_message_id="",
        group_id="1",
        created_at=0.0,
        ttl=60.0,
        message_type=MessageType.TRAIN,
    )
    return Message(content=content, metadata=metadata)


def _call(run: RunConfig, node_config: dict[str, str], state: dict[str, torch.Tensor]) -> Message:
    app = make_client_app(run.to_flat())
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config={})
    return app(_train_message(state), context)


def _assert_one_clean_line(reason: str) -> None:
    assert "\n" not in reason and "Traceback" not in reason and "/" not in reason and len(reason) <= 200, reason


def test_a_typo_in_the_site_file_is_error_1001_naming_the_key(
    tiny_run: RunConfig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    site = tmp_path / "secret_dir" / "site.yaml"
    site.parent.mkdir()
    site.write_text("name: x\nsources:\n  - manifest: m.csv\n    report_colum: report\n")
    with caplog.at_level(logging.ERROR, logger="fedvlp.client"):
        reply = _call(tiny_run, {"site-config": str(site)}, {})
    assert reply.has_error() and reply.error.code == ERROR_SITE_CONFIG
    assert reply.error.reason.startswith(
        "site config invalid: ConfigError (key 'sources[0].report_colum': expected one of"
    )
    _assert_one_clean_line(reply.error.reason)
    # the details, with the file path and the traceback, are in the site's own log
    assert "secret_dir" in caplog.text and "Traceback" in caplog.text


def test_a_site_without_usable_rows_is_error_1002(tiny_run: RunConfig, tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("id,image\na,missing_1.png\nb,missing_2.png\n")
    site = tmp_path / "site.yaml"
    site.write_text(
        "name: empty\nsources:\n  - manifest: m.csv\n    kind: images\n    id_column: id\n    image_column: image\n"
    )
    reply = _call(tiny_run, {"site-config": str(site)}, {})
    assert reply.has_error() and reply.error.code == ERROR_NO_DATA, reply.error
    assert reply.error.reason.startswith("no usable data: ConfigError")
    _assert_one_clean_line(reply.error.reason)


def test_a_training_failure_is_error_1003_without_traceback(demo_env: Path, tiny_run: RunConfig) -> None:
    state = {k: v.clone() for k, v in build_model(tiny_run).state_dict().items()}
    key = next(k for k, v in state.items() if v.is_floating_point() and v.dim() == 2)
    state[key] = torch.zeros(3, 3)  # a global model the site cannot load
    reply = _call(tiny_run, {"site-config": str(demo_env / "hospital_b.yaml")}, state)
    assert reply.has_error() and reply.error.code == ERROR_TRAINING
    assert reply.error.reason == "training failed: RuntimeError"


def test_error_reason_cuts_paths_and_lines() -> None:
    err = ConfigError("/srv/site.yaml", "sources[0].manifest", "an existing file such as /srv/data/m.csv\nsecond line")
    assert (
        error_reason(ERROR_SITE_CONFIG, err)
        == "site config invalid: ConfigError (key 'sources[0].manifest': expected an existing file such as <path>"
    )


def test_a_run_config_naming_a_file_outside_the_sites_pinned_folders_is_error_1001(
    demo_env: Path, tiny_run: RunConfig, tmp_path: Path
) -> None:
    from fedvlp.core.data.tokenizer import vocab_path

    pinned, elsewhere = tmp_path / "approved", tmp_path / "elsewhere"
    pinned.mkdir()
    elsewhere.mkdir()
    (elsewhere / "vocab.txt").write_bytes(vocab_path("demo").read_bytes())  # a real vocabulary, in the wrong place
    site = tmp_path / "site.yaml"
    site.write_text(
        (demo_env / "hospital_b.yaml").read_text() + "run_file_roots: [approved]\n"
    )  # manifest by $FEDVLP_DEMO_DATA
    reply = _call(tiny_run.replace(tokenizer=str(elsewhere)), {"site-config": str(site)}, {})
    assert reply.has_error() and reply.error.code == ERROR_SITE_CONFIG
    assert reply.error.reason.startswith(
        "site config invalid: ConfigError (key 'run_file_roots': expected run-config 'tokenizer' inside"
    )
    _assert_one_clean_line(reply.error.reason)
