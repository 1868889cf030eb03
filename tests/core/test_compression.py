"""The wire codec: bf16 bit for bit as torch, int8 error bounds, error feedback, delta downloads."""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import torch

from fedvlp.core.compression import (
    DEFLATED_KEY,
    PACKED_KEY,
    SCALE_SUFFIX,
    WireState,
    apply_download,
    bf16_decode,
    bf16_encode,
    decode_upload,
    encode_download,
    encode_upload,
    int8_dequantize,
    int8_quantize,
    pack_arrays,
    pack_record,
    packed_key,
    unpack_arrays,
    unpack_record,
)
from fedvlp.core.config import ConfigError, RunConfig


def test_bf16_equals_torch_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(0)
    values = torch.cat(
        [
            torch.randn(10_000, generator=generator) * 100,
            torch.randn(1000, generator=generator) * 1e-39,  # subnormals
            torch.tensor([0.0, -0.0, 3.4e38, -3.4e38, float("inf"), float("-inf"), 1 + 2**-8, 1 + 3 * 2**-8]),
        ]
    )
    expected = values.to(torch.bfloat16).float()
    got = bf16_decode(bf16_encode(values))
    assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_bf16_rounds_ties_to_even() -> None:
    # 1 + 2**-8 lies halfway between 1 and 1 + 2**-7: the even one (1.0) wins;
    # 1 + 3 * 2**-8 lies halfway between 1 + 2**-7 and 1 + 2**-6: 1 + 2**-6 is even
    got = bf16_decode(bf16_encode(torch.tensor([1 + 2**-8, 1 + 3 * 2**-8])))
    assert got.tolist() == [1.0, 1 + 2**-6]


def test_bf16_keeps_nan() -> None:
    assert torch.isnan(bf16_decode(bf16_encode(torch.tensor([float("nan")])))).all()


def test_int8_hand_computed_per_channel() -> None:
    q, scale = int8_quantize(torch.tensor([[1.0, -0.5], [0.0, 0.0], [-2.54, 0.01]]))
    assert scale.dtype == np.float32 and scale.shape == (3,)
    assert scale.tolist() == pytest.approx([1 / 127, 0.0, 0.02])
    # -0.5 x 127 = -63.5 rounds to the even -64; 0.01 / 0.02 = 0.5 rounds to 0
    assert q.tolist() == [[127, -64], [0, 0], [-127, 0]]


def test_int8_one_dimensional_tensor_has_one_scale() -> None:
    q, scale = int8_quantize(torch.tensor([0.5, -1.27, 0.2]))
    assert scale.shape == (1,) and scale[0] == pytest.approx(0.01)
    assert q.tolist() == [50, -127, 20]


def test_int8_round_trip_error_at_most_half_a_scale() -> None:
    values = torch.randn(64, 3, 5, 5, generator=torch.Generator().manual_seed(1)) * torch.logspace(-4, 1, 64).reshape(
        -1, 1, 1, 1
    )
    q, scale = int8_quantize(values)
    error = (int8_dequantize(q, scale) - values).abs().reshape(64, -1).amax(dim=1)
    assert bool((error <= torch.from_numpy(scale) / 2 * (1 + 1e-5)).all())
    assert int(np.abs(q.astype(np.int16)).max()) == 127


def test_error_feedback_delivers_k_times_a_constant_update() -> None:
    # update 0.3 in a tensor whose largest entry is 1.0: scale 1/127, 0.3 x 127 = 38.1 steps, so
    # each round alone drops 0.1 step; without feedback 10 rounds lose a whole step
    received = {"image.w": torch.zeros(2)}
    update = torch.tensor([1.0, 0.3])
    scale, rounds = 1 / 127, 10
    wire, with_feedback, without = WireState(), torch.zeros(2), torch.zeros(2)
    for _ in range(rounds):
        sent = encode_upload("int8", {"image.w": update}, received, wire)
        with_feedback += decode_upload("int8", sent, received)["image.w"]
        without += decode_upload("int8", encode_upload("int8", {"image.w": update}, received, None), received)[
            "image.w"
        ]
    assert (with_feedback - rounds * update).abs().max() <= scale / 2 + 1e-6
    assert (without - rounds * update)[1] == pytest.approx(
        -rounds * 0.1 * scale, rel=1e-3
    )  # 38 steps a round, not 38.1
    assert wire.pending["image.w"].abs().max() <= scale / 2 + 1e-6


def test_int8_upload_sends_the_update_and_keeps_integer_buffers_exact() -> None:
    received = {"image.w": torch.tensor([[10.0, 20.0]]), "image.bn.num_batches_tracked": torch.tensor(4)}
    trained = {"image.w": torch.tensor([[10.5, 19.0]]), "image.bn.num_batches_tracked": torch.tensor(7)}
    sent = encode_upload("int8", trained, received)
    assert sorted(sent) == ["image.bn.num_batches_tracked", "image.w", "image.w" + SCALE_SUFFIX]
    assert sent["image.w"].tolist() == [[64, -127]] and sent["image.w" + SCALE_SUFFIX].tolist() == pytest.approx(
        [1 / 127]
    )
    assert sent["image.bn.num_batches_tracked"].dtype == np.int64 and int(sent["image.bn.num_batches_tracked"]) == 7
    decoded = decode_upload("int8", sent, received)
    assert decoded["image.w"][0].tolist() == pytest.approx([10.0 + 64 / 127, 19.0])


def test_delta_download_leaves_out_unchanged_keys_and_sends_integers_whole() -> None:
    base = {"image.w": torch.tensor([1.0, 2.0]), "text.w": torch.tensor([3.0]), "image.n": torch.tensor(5)}
    state = {"image.w": torch.tensor([1.5, 2.0]), "text.w": torch.tensor([3.0]), "image.n": torch.tensor(6)}
    encoding, arrays = encode_download("delta-bf16", state, base)
    assert encoding == "delta-bf16" and sorted(arrays) == ["image.n", "image.w"]
    assert arrays["image.w"].dtype == np.uint16
    decoded = apply_download(encoding, arrays, base, state)
    assert (
        decoded["image.w"].tolist() == [1.5, 2.0]
        and decoded["text.w"].tolist() == [3.0]
        and int(decoded["image.n"]) == 6
    )


def test_delta_download_without_a_base_sends_the_whole_model_in_bf16() -> None:
    encoding, arrays = encode_download("delta-int8", {"image.w": torch.tensor([1.0 + 2**-9])}, None)
    assert encoding == "bf16" and arrays["image.w"].dtype == np.uint16


def test_delta_int8_downloads_do_not_drift() -> None:
    # the node's copy follows a moving global model; each delta carries what the last one rounded away
    generator = torch.Generator().manual_seed(2)
    global_ = {"image.w": torch.randn(8, 16, generator=generator)}
    encoding, arrays = encode_download("delta-int8", global_, None)
    held = apply_download(encoding, arrays, None, global_)
    for _ in range(20):
        global_ = {"image.w": global_["image.w"] + 0.01 * torch.randn(8, 16, generator=generator)}
        encoding, arrays = encode_download("delta-int8", global_, held)
        held = apply_download(encoding, arrays, held, global_)
        step = torch.from_numpy(arrays["image.w" + SCALE_SUFFIX]).reshape(-1, 1)
        assert bool(((held["image.w"] - global_["image.w"]).abs() <= step / 2 + 1e-6).all())
    # 20 rounds later the copy is within half a step of the last, small delta (about 1e-4), not 20 steps off
    assert float((held["image.w"] - global_["image.w"]).abs().max()) < 2e-3


def test_delta_download_without_the_base_fails_with_a_reason() -> None:
    with pytest.raises(ValueError, match="no longer holds"):
        apply_download("delta-bf16", {}, None, {"image.w": torch.zeros(1)})


def test_compression_keys_at_their_defaults_keep_the_config_hash() -> None:
    # RunConfig().config_hash() before the compression keys existed (main at 80c50ad)
    assert RunConfig().config_hash() == "8c5c39df1b01ed34"
    assert RunConfig(upload_compression="int8").config_hash() != "8c5c39df1b01ed34"


@pytest.mark.parametrize(("key", "value"), [("upload_compression", "int4"), ("download_compression", "delta-fp8")])
def test_unknown_compression_mode_is_refused(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key.replace("_", "-")):
        RunConfig(**{key: value}).validate()


def test_compression_with_secure_aggregation_is_refused() -> None:
    with pytest.raises(ConfigError, match="upload-compression.*'none' with secure-aggregation"):
        RunConfig(secure_aggregation="secagg+", upload_compression="int8").validate()


def test_packed_arrays_come_back_bit_for_bit_with_dtype_and_shape() -> None:
    arrays = {
        "image.w": np.arange(12, dtype=np.float32).reshape(3, 4).T,  # not contiguous
        "image.bn.num_batches_tracked": np.array(7),  # 0-d stays 0-d
        "text.w": bf16_encode(torch.tensor([1.5, -2.25])),
        "text.q": np.array([-127, 0, 127], dtype=np.int8),
        "text.q" + SCALE_SUFFIX: np.array([0.5], dtype=np.float32),
        "head.mim.empty": np.zeros((0, 3), dtype=np.float32),
    }
    packed = pack_arrays(arrays)
    assert packed.dtype == np.uint8 and packed.ndim == 1
    back = unpack_arrays(packed)
    assert back.keys() == arrays.keys()
    for key, value in arrays.items():
        assert back[key].dtype == value.dtype and back[key].shape == value.shape, key
        assert np.array_equal(back[key], value), key


def test_pack_takes_tensors_as_they_are() -> None:
    state = {"image.w": torch.tensor([[1.0, 2.0]]), "image.n": torch.tensor(3)}
    back = unpack_arrays(pack_arrays(state))
    assert all(torch.equal(torch.from_numpy(back[k]), v) for k, v in state.items())


@pytest.mark.parametrize(
    ("names", "key"),
    [([PACKED_KEY], PACKED_KEY), ([DEFLATED_KEY], DEFLATED_KEY), (["image.w", "text.w"], None), ([], None)],
)
def test_packed_key_names_the_one_packed_array_or_none(names: list[str], key: str | None) -> None:
    assert packed_key(names) == key


def test_packed_key_beside_another_array_is_a_value_error_naming_both() -> None:
    with pytest.raises(ValueError, match=re.escape("holds ':packed-zlib' alone, found 'a.w' beside it")):
        packed_key(["b.w", DEFLATED_KEY, "a.w"])


def test_unpack_record_passes_unpacked_records_through() -> None:
    plain = {"image.w": np.ones(2, dtype=np.float32)}
    assert unpack_record(plain) == plain
    assert np.array_equal(unpack_record(pack_record(plain))["image.w"], plain["image.w"])


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        ({PACKED_KEY: pack_arrays({"a.w": np.ones(1)}), "a.x": np.ones(1)}, "holds ':packed' alone, found 'a.x'"),
        ({PACKED_KEY: pack_arrays({"a.w": np.ones(1)})[:-3]}, "does not decode as packed arrays"),
        ({PACKED_KEY: np.ones(8, dtype=np.float32)}, "expected a 1-D uint8 array"),
        ({PACKED_KEY: np.ones((2, 8), dtype=np.uint8)}, "expected a 1-D uint8 array"),
    ],
)
def test_a_bad_packed_record_is_a_value_error_naming_what_is_wrong(record: dict[str, np.ndarray], reason: str) -> None:
    with pytest.raises(ValueError, match=re.escape(reason)):
        unpack_record(record)


def test_a_packed_record_is_one_array_and_smaller_than_the_arrays_sent_one_by_one() -> None:
    from flwr.app import Array, ArrayRecord

    state = {f"image.layer{i}.w": torch.randn(8, 8) for i in range(100)}
    one_by_one = ArrayRecord({k: Array(v.numpy()) for k, v in state.items()}).count_bytes()
    packed = ArrayRecord({k: Array(v) for k, v in pack_record(state).items()})
    assert list(packed.keys()) == [PACKED_KEY]
    data = 100 * 8 * 8 * 4
    # one npy header instead of 100; safetensors' JSON header names each tensor once
    assert data < packed.count_bytes() < one_by_one


def test_a_deflated_pack_comes_back_bit_for_bit_and_is_smaller_for_quantised_updates() -> None:
    generator = torch.Generator().manual_seed(0)
    update = {"image.w": 1e-3 * torch.randn(64, 256, generator=generator)}
    q, scale = int8_quantize(update["image.w"])
    arrays = {"image.w": q, "image.w" + SCALE_SUFFIX: scale}
    deflated = pack_arrays(arrays, deflate=True)
    back = unpack_record(pack_record(arrays, deflate=True))
    assert all(np.array_equal(back[k], v) and back[k].dtype == v.dtype for k, v in arrays.items())
    assert len(deflated) < 0.95 * len(pack_arrays(arrays))  # gaussian int8 values: ~10% less at level 1
    assert list(pack_record(arrays, deflate=True)) == [DEFLATED_KEY]


def test_a_deflated_buffer_that_inflates_past_the_bound_is_refused_before_it_is_built() -> None:
    bomb = np.frombuffer(zlib.compress(b"\0" * (50 << 20), 9), dtype=np.uint8)  # 50 MB of zeros in ~50 KB
    assert len(bomb) < (1 << 20)
    with pytest.raises(ValueError, match="inflates past 1048576 bytes"):
        unpack_arrays(bomb, deflated=True, max_bytes=1 << 20)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"not zlib at all", "is not zlib data"), (zlib.compress(b"x" * 100)[:-4], "is truncated zlib data")],
)
def test_bad_zlib_is_a_value_error(data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        unpack_arrays(np.frombuffer(data, dtype=np.uint8), deflated=True, max_bytes=1 << 20)
