"""A site's compression state: int8 replies from real training, residuals that live and die with
the site's cached trainer, and delta downloads decoded against the base the site kept."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedvlp.client import app as client_app
from fedvlp.core.compression import SCALE_SUFFIX, MissingBase, encode_download
from fedvlp.core.config import RunConfig, list_site_files, load_site
from fedvlp.core.params import ARRAYS_KEY, CONFIG_KEY
from tests.conftest import record_arrays


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    client_app._TRAINERS.clear()
    client_app._WIRE.clear()
    yield
    client_app._TRAINERS.clear()
    client_app._WIRE.clear()


def test_int8_reply_from_real_training_keeps_the_residual(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(upload_compression="int8")
    site = load_site(list_site_files(run.sites)[2])  # hospital_c: reports only
    trainer = client_app._trainer(site, run)
    wire = client_app._wire_state(site, run)
    global_state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    reply = client_app.train_round(site, run, global_state, 1, wire)
    arrays = record_arrays(reply.array_records[ARRAYS_KEY])
    floats = [k for k in arrays if not k.endswith(SCALE_SUFFIX) and global_state[k].is_floating_point()]
    assert floats and all(arrays[k].dtype == "int8" and arrays[k + SCALE_SUFFIX].dtype == "float32" for k in floats)
    assert sorted(wire.pending) == sorted(floats)
    # the residual is what rounding lost: at most half a step of each row's scale
    key = max(floats, key=lambda k: global_state[k].numel())
    scale = torch.from_numpy(arrays[key + SCALE_SUFFIX])
    rows = (
        wire.pending[key].reshape(scale.shape[0], -1)
        if wire.pending[key].dim() >= 2
        else wire.pending[key].reshape(1, -1)
    )
    assert bool((rows.abs().amax(dim=1) <= scale / 2 * (1 + 1e-5)).all())


def test_the_residual_goes_when_the_cache_evicts_the_site(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(upload_compression="int8", trainer_cache_size=1)
    first, second = (load_site(f) for f in list_site_files(run.sites)[1:])
    client_app._trainer(first, run)
    client_app._wire_state(first, run).pending["text.x"] = torch.ones(1)
    client_app._trainer(second, run)  # evicts the first site
    assert client_app._wire_state(second, run).pending == {}
    assert list(client_app._WIRE) == [(str(second.path), run.config_hash())]
    client_app._trainer(first, run)
    assert client_app._wire_state(first, run).pending == {}  # rebuilt: no residual


def _message_content(encoding: str, arrays: dict[str, np.ndarray], base_round: int, round_: int) -> RecordDict:
    config = ConfigRecord({"server-round": round_, "weights-encoding": encoding, "base-round": base_round})
    return RecordDict({ARRAYS_KEY: ArrayRecord({k: Array(v) for k, v in arrays.items()}), CONFIG_KEY: config})


class _Msg:
    def __init__(self, content: RecordDict) -> None:
        self.content = content


def test_a_delta_download_applies_to_the_kept_base_and_fails_without_it(demo_env: Path, tiny_run: RunConfig) -> None:
    run = tiny_run.replace(download_compression="delta-bf16")
    site = load_site(list_site_files(run.sites)[2])
    model = client_app._trainer(site, run).model
    wire = client_app._wire_state(site, run)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    encoding, arrays = encode_download("delta-bf16", state, None)  # round 1: no base, the whole model in bf16
    held = client_app.received_state(_Msg(_message_content(encoding, arrays, -1, 1)), run, model, wire, 1)  # type: ignore[arg-type]
    assert wire.base_round == 1 and wire.base is held
    moved = {k: v + 0.5 if v.is_floating_point() else v for k, v in held.items()}
    encoding, arrays = encode_download("delta-bf16", moved, held)
    now = client_app.received_state(_Msg(_message_content(encoding, arrays, 1, 2)), run, model, wire, 2)  # type: ignore[arg-type]
    assert all(torch.allclose(now[k].float(), moved[k].float(), atol=1e-2) for k in moved)
    with pytest.raises(MissingBase):  # the server believes the site holds round 1; it holds round 2
        client_app.received_state(_Msg(_message_content(encoding, arrays, 1, 3)), run, model, wire, 3)  # type: ignore[arg-type]
