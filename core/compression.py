"""The wire codec of model weights: bf16 and int8, uploads and downloads (no Flower here).

What travels (one ArrayRecord, parameter name -> numpy array):

* ``none``: every tensor as it is (fp32 weights, int64 buffers).
* ``bf16``: every floating tensor as a ``uint16`` array of the same shape holding the upper
  16 bits of its fp32 value, rounded to nearest even (numpy has no bfloat16; bit for bit what
  ``tensor.to(torch.bfloat16)`` gives for every value but NaN, which stays a NaN). Decoding
  shifts the bits back.
* ``int8``: every floating tensor as an ``int8`` array of the same shape plus, under the key
  ``name + SCALE_SUFFIX``, its ``float32`` scales: one per output channel (dim 0) for tensors
  of two or more dimensions, one for the whole tensor otherwise. Value = q x scale, |q| <= 127.

Integer tensors (BatchNorm's ``num_batches_tracked``) always travel exact, in their own dtype.

Packing: every train message and reply carries its arrays as ONE ``uint8`` array under the key
:data:`PACKED_KEY`, a safetensors buffer of the arrays above (:func:`pack_arrays`). Flower 1.41
moves each array of a message as its own object, one request per object and hop, so a model of
131 tensors cost 131 requests on each of a round's six hops; packed it costs one, and one npy
header instead of 131. Under a compressed mode (``bf16``, ``int8``, ``delta-*``) the buffer is
also zlib-compressed (:data:`DEFLATED_KEY`): quantised updates are peaked around zero, and the
headers and scales of a small model would otherwise keep int8 above a quarter of fp32.
Receivers accept unpacked records too (:func:`unpack_record`).

Uploads (client -> server, run-config ``upload-compression``): ``bf16`` sends the trained
weights; ``int8`` sends the UPDATE (trained minus the global the site received) with error
feedback: what quantisation lost is kept at the site (:class:`WireState`) and added to the
next round's update before quantising, so nothing is lost for good, only delayed.

Downloads (server -> client, run-config ``download-compression``): ``bf16`` sends the global
weights; ``delta-bf16`` / ``delta-int8`` send the difference between the global weights and
what the node holds from the last round it received (its *base*; keys whose difference is
exactly zero are left out). The server keeps each node's base (what the node decoded, computed
with the same :func:`apply_download`), so the node's copy never drifts: what one delta rounds
away, the next delta carries. A node with no base gets the whole model in bf16.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import safetensors.numpy
import torch

from .config import DOWNLOAD_MODES, UPLOAD_MODES  # kept in config, which must not import torch

__all__ = [
    "DOWNLOAD_MODES",
    "MissingBase",
    "DEFLATED_KEY",
    "PACKED_KEY",
    "PACKED_KEYS",
    "SCALE_SUFFIX",
    "UPLOAD_MODES",
    "WireState",
    "apply_download",
    "bf16_decode",
    "bf16_encode",
    "decode_upload",
    "encode_download",
    "encode_upload",
    "int8_dequantize",
    "int8_quantize",
    "pack_arrays",
    "pack_record",
    "packed_key",
    "unpack_arrays",
    "unpack_record",
    "scale_shape",
]

SCALE_SUFFIX = ":int8-scale"  # parameter names never hold ':', so no clash with a real key
INT8_MAX = 127  # symmetric: -128 is never used, so q and -q both exist

# What a download message declares in its ConfigRecord (the client decodes by it).
ENCODING_KEY = "weights-encoding"  # "none", "bf16", "delta-bf16" or "delta-int8" (this message)
BASE_ROUND_KEY = "base-round"  # delta encodings: the round whose weights the delta applies to


PACKED_KEY = ":packed"  # the one array of a packed message (parameter names never hold ':')
DEFLATED_KEY = ":packed-zlib"  # the same buffer, zlib-compressed (the compressed modes)
PACKED_KEYS = (PACKED_KEY, DEFLATED_KEY)
ZLIB_LEVEL = 1  # quantised values compress by ~10% at level 1 already; higher levels cost 3x the time for <1%


def pack_arrays(arrays: Mapping[str, np.ndarray | torch.Tensor], deflate: bool = False) -> np.ndarray:
    """Every array of a message as one ``uint8`` array: a safetensors buffer (names, dtypes, shapes, data).

    Parameters
    ----------
    arrays
        Name -> numpy array or tensor (tensors are copied to the CPU; numeric dtypes numpy has).
    deflate
        Compress the buffer with zlib (level :data:`ZLIB_LEVEL`).

    Returns
    -------
    numpy.ndarray
        1-D ``uint8``; :func:`unpack_arrays` gives the arrays back bit for bit.
    """
    plain = {}
    for name, value in arrays.items():
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        # np.ascontiguousarray would turn a 0-d array (num_batches_tracked) into shape (1,)
        plain[name] = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    data = safetensors.numpy.save(plain)
    return np.frombuffer(zlib.compress(data, ZLIB_LEVEL) if deflate else data, dtype=np.uint8)


def _inflate(data: bytes, max_bytes: int | None) -> bytes:
    """zlib ``data``, refusing to produce more than ``max_bytes`` (a small reply must not inflate
    into the server's memory)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(data, 0 if max_bytes is None else max_bytes + 1)
    except zlib.error as err:
        raise ValueError(f"'{DEFLATED_KEY}' is not zlib data ({err})") from None
    if max_bytes is not None and (len(out) > max_bytes or inflater.unconsumed_tail):
        raise ValueError(f"'{DEFLATED_KEY}' inflates past {max_bytes} bytes, more than the model's arrays")
    if not inflater.eof:
        raise ValueError(f"'{DEFLATED_KEY}' is truncated zlib data")
    return out


def unpack_arrays(packed: np.ndarray, deflated: bool = False, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of :func:`pack_arrays`' buffer.

    Parameters
    ----------
    packed
        The buffer.
    deflated
        It was packed with ``deflate=True``.
    max_bytes
        Refuse a deflated buffer that inflates past this many bytes (``None``: no bound; for
        what a site receives from its own server).

    Raises
    ------
    ValueError
        When ``packed`` is not a 1-D ``uint8`` array holding a valid (zlib-compressed)
        safetensors buffer; the safetensors parser is its own: bounded header, offsets checked.
    """
    key = DEFLATED_KEY if deflated else PACKED_KEY
    if not isinstance(packed, np.ndarray) or packed.dtype != np.uint8 or packed.ndim != 1:
        got = f"{getattr(packed, 'dtype', type(packed).__name__)} {getattr(packed, 'shape', '')}"
        raise ValueError(f"'{key}' is {got}, expected a 1-D uint8 array")
    data = _inflate(packed.tobytes(), max_bytes) if deflated else packed.tobytes()
    try:
        return dict(safetensors.numpy.load(data))
    except Exception as err:  # SafetensorError, a dtype numpy lacks: one reason, never a crash
        raise ValueError(f"'{key}' does not decode as packed arrays ({type(err).__name__}: {err})") from None


def pack_record(arrays: Mapping[str, np.ndarray | torch.Tensor], deflate: bool = False) -> dict[str, np.ndarray]:
    """The content of a packed ArrayRecord: ``{PACKED_KEY or DEFLATED_KEY: pack_arrays(arrays, deflate)}``."""
    return {DEFLATED_KEY if deflate else PACKED_KEY: pack_arrays(arrays, deflate)}


def packed_key(names: Iterable[str]) -> str | None:
    """The key of a packed record's one array (:data:`PACKED_KEYS`), or ``None`` for an unpacked record.

    Raises
    ------
    ValueError
        A packed key stands beside any other array.
    """
    listed = list(names)
    key = next((k for k in PACKED_KEYS if k in listed), None)
    if key is not None and len(listed) != 1:
        other = sorted(n for n in listed if n != key)[0]
        raise ValueError(f"a packed record holds '{key}' alone, found '{other}' beside it")
    return key


def unpack_record(arrays: Mapping[str, np.ndarray], max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """The arrays of a record, packed (:func:`pack_record`) or not (name -> array as it is).

    Raises
    ------
    ValueError
        A packed record holding anything beside its one array, or a buffer that does not decode
        (see :func:`unpack_arrays`, which ``max_bytes`` is passed to).
    """
    key = packed_key(arrays)
    if key is None:
        return dict(arrays)
    return unpack_arrays(arrays[key], deflated=key == DEFLATED_KEY, max_bytes=max_bytes)


class MissingBase(ValueError):
    """A delta download arrived at a site that no longer holds its base round."""


def bf16_encode(values: torch.Tensor | np.ndarray) -> np.ndarray:
    """fp32 -> bf16 bits in a ``uint16`` array, rounded to nearest even (NaN stays NaN).

    Parameters
    ----------
    values
        Any floating tensor or array; converted to fp32 first.

    Returns
    -------
    numpy.ndarray
        ``uint16``, same shape: the upper half of the rounded fp32 bit pattern.
    """
    array = np.ascontiguousarray(
        values.detach().cpu().float().numpy()
        if isinstance(values, torch.Tensor)
        else np.asarray(values, dtype=np.float32)
    )
    bits = array.view(np.uint32).astype(np.uint64)
    # round half to even on the 16 bits cut off: add 0x7FFF plus the lowest kept bit
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    nan = np.isnan(array)
    rounded[nan] = (bits[nan] >> 16) | 0x0040  # a quiet NaN, as torch keeps it
    return rounded.astype(np.uint16)


def bf16_decode(bits: np.ndarray) -> torch.Tensor:
    """bf16 bits (``uint16``) -> fp32 tensor: exact, every bf16 value is an fp32 value."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16
    return torch.from_numpy(wide.view(np.float32).copy())


def scale_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape of the int8 scales of a tensor: one per output channel, or one per tensor (0-d / 1-d)."""
    return (shape[0],) if len(shape) >= 2 else (1,)


def int8_quantize(values: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with a per-output-channel (per-tensor for 0-d / 1-d) scale.

    Returns
    -------
    (q, scale)
        ``int8`` array of ``values``' shape and ``float32`` scales of :func:`scale_shape`; each
        element's error ``|q x scale - value|`` is at most ``scale / 2``. An all-zero channel has
        scale 0 (and q 0).
    """
    x = values.detach().cpu().float()
    rows = x.reshape(x.shape[0], -1) if x.dim() >= 2 else x.reshape(1, -1)
    amax = rows.abs().amax(dim=1) if rows.numel() else torch.zeros(rows.shape[0])
    scale = amax / INT8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(rows / safe[:, None]).clamp_(-INT8_MAX, INT8_MAX)
    return q.to(torch.int8).reshape(x.shape).numpy(), scale.numpy().astype(np.float32)


def int8_dequantize(q: np.ndarray, scale: np.ndarray) -> torch.Tensor:
    """q x scale (per row of dim 0, or one scale for all) as an fp32 tensor of q's shape."""
    values = torch.from_numpy(np.asarray(q, dtype=np.int8).astype(np.float32))
    scales = torch.from_numpy(np.asarray(scale, dtype=np.float32).copy())
    if values.dim() >= 2:
        return values * scales.reshape(-1, *([1] * (values.dim() - 1)))
    return values * scales.reshape(())


def _floating(value: torch.Tensor) -> bool:
    return value.is_floating_point()


@dataclass
class WireState:
    """A site's int8 error feedback: per key, what quantisation has not delivered yet.

    It lives in the site's process cache next to its trainer (``client/app.py``) and goes with it
    when the cache evicts the site (then the next update starts without a residual: what was
    pending is lost, as after a restart). ``base`` / ``base_round``: the global weights the site
    decoded last, the base of delta downloads.
    """

    pending: dict[str, torch.Tensor] = field(default_factory=dict)
    base: dict[str, torch.Tensor] | None = None
    base_round: int = -1


def encode_upload(
    mode: str,
    trained: Mapping[str, torch.Tensor],
    received: Mapping[str, torch.Tensor],
    residuals: WireState | None = None,
) -> dict[str, np.ndarray]:
    """What a site sends for ``trained`` under upload ``mode``.

    Parameters
    ----------
    mode
        One of :data:`UPLOAD_MODES`.
    trained
        The keys the site uploads and their trained values.
    received
        The global weights the site trained from (as it decoded them): int8 sends the update
        against them.
    residuals
        int8 only: the site's error feedback, updated in place (``None``: no feedback).
    """
    if mode not in UPLOAD_MODES:
        raise ValueError(f"upload-compression {mode!r}: expected one of {UPLOAD_MODES}")
    out: dict[str, np.ndarray] = {}
    for key, value in trained.items():
        value = value.detach().cpu()
        if mode == "none" or not _floating(value):
            out[key] = value.numpy()
        elif mode == "bf16":
            out[key] = bf16_encode(value)
        else:
            update = value.float() - received[key].detach().cpu().float()
            if residuals is not None and key in residuals.pending:
                update = update + residuals.pending[key]
            q, scale = int8_quantize(update)
            if residuals is not None:
                residuals.pending[key] = update - int8_dequantize(q, scale)
            out[key], out[key + SCALE_SUFFIX] = q, scale
    return out


def decode_upload(
    mode: str, arrays: Mapping[str, np.ndarray], reference: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The weights an upload stands for (the server's side of :func:`encode_upload`).

    Expects wire arrays already checked by the server (``server/app/replies.py``): int8 updates are
    added to ``reference`` (the round's global weights), bf16 weights widened to fp32.
    """
    out: dict[str, torch.Tensor] = {}
    for key, array in arrays.items():
        if key.endswith(SCALE_SUFFIX):
            continue
        target = reference[key]
        if mode == "none" or not target.is_floating_point():
            out[key] = torch.from_numpy(np.array(array))
        elif mode == "bf16":
            out[key] = bf16_decode(array).to(target.dtype)
        else:
            out[key] = (target.float() + int8_dequantize(array, arrays[key + SCALE_SUFFIX])).to(target.dtype)
    return out


def encode_download(
    mode: str, state: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor] | None
) -> tuple[str, dict[str, np.ndarray]]:
    """What the server sends one node: ``(encoding of this message, arrays)``.

    ``mode`` is run-config ``download-compression``; ``base`` is what the node holds (``None``:
    nothing, then a delta mode sends the whole model in bf16). In a delta, a floating key whose
    difference is zero everywhere is left out; integer keys are sent whole.
    """
    if mode not in DOWNLOAD_MODES:
        raise ValueError(f"download-compression {mode!r}: expected one of {DOWNLOAD_MODES}")
    if mode == "none":
        return "none", {k: v.detach().cpu().numpy() for k, v in state.items()}
    if mode == "bf16" or base is None:
        return "bf16", {k: bf16_encode(v) if _floating(v) else v.detach().cpu().numpy() for k, v in state.items()}
    out: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if not _floating(value):
            out[key] = value.detach().cpu().numpy()
            continue
        delta = value.detach().cpu().float() - base[key].float()
        if not bool(delta.any()):
            continue
        if mode == "delta-bf16":
            out[key] = bf16_encode(delta)
        else:
            out[key], out[key + SCALE_SUFFIX] = int8_quantize(delta)
    return mode, out


def apply_download(
    encoding: str,
    arrays: Mapping[str, np.ndarray],
    base: Mapping[str, torch.Tensor] | None,
    reference: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """The weights a node holds after decoding a download (server and client compute the same).

    Parameters
    ----------
    encoding
        The message's encoding (:func:`encode_download`'s first value).
    arrays
        The message's arrays.
    base
        What the node held (delta encodings only).
    reference
        Any state of the model (names and dtypes); a key a delta leaves out keeps ``base``'s value.

    Raises
    ------
    MissingBase
        A delta without a base.
    ValueError
        A download that lacks a key, or of an unknown encoding.
    """
    if encoding.startswith("delta") and base is None:
        raise MissingBase(
            f"a '{encoding}' download needs the weights of its base round, which this site no longer holds"
        )
    out: dict[str, torch.Tensor] = {}
    for key, target in reference.items():
        array = arrays.get(key)
        if array is None:
            if base is None or not encoding.startswith("delta"):
                raise ValueError(f"download lacks '{key}'")
            out[key] = base[key].clone()
        elif not target.is_floating_point() or encoding == "none":
            out[key] = torch.from_numpy(np.array(array))
        elif encoding == "bf16":
            out[key] = bf16_decode(array).to(target.dtype)
        elif encoding == "delta-bf16":
            out[key] = (base[key].float() + bf16_decode(array)).to(target.dtype)  # type: ignore[index]
        elif encoding == "delta-int8":
            out[key] = (base[key].float() + int8_dequantize(array, arrays[key + SCALE_SUFFIX])).to(target.dtype)  # type: ignore[index]
        else:
            raise ValueError(f"unknown weights encoding {encoding!r}")
    return out
