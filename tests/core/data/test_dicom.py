"""DICOM pixels: files generated with pydicom, display values checked against hand-computed ones.

``write_dicom`` is shared with the importer tests (tests/core/data/test_importers_dicom.py).
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import get_decoder, get_encoder
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from fedvlp.core.data.dicom import dicom_unit, header_refusal, is_dicom, stored_values
from fedvlp.core.data.images import ImageDecodeError, ImagePolicy, check_header, load_image

DX_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 12,
    signed: bool = False,
    photometric: str = "MONOCHROME2",
    compress: str | None = None,
    **attributes: Any,
) -> Path:
    """A single-frame DX file of ``pixels`` (16 bits allocated) in Explicit VR Little Endian,
    RLE-/JPEG 2000-compressed with pydicom's encoders when ``compress`` is a transfer syntax.

    ``attributes`` are set as DICOM keywords (``WindowCenter=...``, ``PatientID=...``).
    """
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = DX_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = attributes.get("SOPInstanceUID") or generate_uid()
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = DX_SOP_CLASS, meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.int16 if signed else np.uint16).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if compress is not None:
        ds.compress(compress)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def jpeg_lossless_sv1(image: np.ndarray, precision: int) -> bytes:
    """``image`` as a lossless JPEG (ITU-T T.81 process 14, selection value 1, one component):
    the usual lossless PACS export, for which pydicom has no encoder.

    Predictions (T.81 H.1.2.1): ``2^(P-1)`` for the first sample, the left neighbour along the
    first row and for every other sample (SV1), the one above down the first column. The
    differences modulo 2^16 are coded as their category SSSS (one Huffman table, every symbol
    0..16 a 5-bit code) plus SSSS raw bits (none for SSSS 16).
    """
    x = image.astype(np.int64)
    prediction = np.empty_like(x)
    prediction[0, 0] = 1 << (precision - 1)
    prediction[0, 1:] = x[0, :-1]
    prediction[1:, 0] = x[:-1, 0]
    prediction[1:, 1:] = x[1:, :-1]
    diff = (x - prediction) % 65536
    codes: list[tuple[int, int]] = []
    for d in np.where(diff >= 32768, diff - 65536, diff).ravel().tolist():
        d = 32768 if d == -32768 else d
        ssss = abs(d).bit_length()
        codes.append((ssss, 5))  # the canonical code of symbol k is k itself
        if 0 < ssss < 16:
            codes.append(((d if d > 0 else d - 1) & ((1 << ssss) - 1), ssss))
    data, acc, held = bytearray(), 0, 0
    for value, length in codes + [((1 << 7) - 1, 7)]:  # 1-bits pad the last byte
        acc, held = (acc << length) | value, held + length
        while held >= 8:
            held -= 8
            data.append((acc >> held) & 0xFF)
            if data[-1] == 0xFF:
                data.append(0x00)  # byte stuffing
        acc &= (1 << held) - 1

    def segment(marker: int, payload: bytes) -> bytes:
        return struct.pack(">BBH", 0xFF, marker, len(payload) + 2) + payload

    rows, columns = image.shape
    frame = struct.pack(">BHHB", precision, rows, columns, 1) + bytes([1, 0x11, 0])
    table = bytes([0x00]) + bytes([0, 0, 0, 0, 17] + [0] * 11) + bytes(range(17))
    scan = bytes([1, 1, 0x00, 1, 0, 0])  # component 1, table 0, predictor 1, point transform 0
    return b"\xff\xd8" + segment(0xC3, frame) + segment(0xC4, table) + segment(0xDA, scan) + bytes(data) + b"\xff\xd9"


def _reason(path: Path, policy: ImagePolicy = ImagePolicy()) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, 16, policy)
    assert str(path) in str(info.value)
    return info.value.reason


def _lut(descriptor: list[int], data: list[int]) -> Dataset:
    """A LUT item with ``LUTDescriptor`` and ``LUTData`` as US values (their VR is ambiguous)."""
    item = Dataset()
    item.add_new("LUTDescriptor", "US", descriptor)
    item.add_new("LUTData", "US", data)
    return item


def _voi_lut(descriptor: list[int], data: list[int]) -> Sequence:
    return Sequence([_lut(descriptor, data)])


# The 12-bit test image: four values and junk in the 4 unused high bits of three of them.
TWELVE_BIT = np.array([[0x0000, 0xF3E8], [0xA800, 0x5FFF]], dtype=np.uint16)  # stored: 0, 1000, 2048, 4095


# ------------------------------------------------------------------------------ stored values
def test_stored_values_keep_the_low_bits_stored() -> None:
    assert stored_values(TWELVE_BIT, 12, signed=False).tolist() == [[0, 1000], [2048, 4095]]


def test_signed_stored_values_are_twos_complement_of_bits_stored() -> None:
    raw = np.array([0x0800, 0x0FFF, 0xF7FF, 0x0001], dtype=np.uint16)
    assert stored_values(raw, 12, signed=True).tolist() == [-2048, -1, 2047, 1]


# ------------------------------------------------------------------------------ VOI and LUTs
def test_window_center_width_on_12_bits_stored_in_16(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "w.dcm", TWELVE_BIT, WindowCenter=2048, WindowWidth=4096)
    # LINEAR: y = (x - 2047.5) / 4095 + 0.5, clipped; the junk bits are ignored
    expected = [[0.0, (1000 - 2047.5) / 4095 + 0.5], [0.5 / 4095 + 0.5, 1.0]]
    np.testing.assert_allclose(dicom_unit(path), expected, atol=1e-6)


def test_the_first_of_several_windows_is_used(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "w.dcm", TWELVE_BIT, WindowCenter=[1000, 3000], WindowWidth=[1001, 200])
    # LINEAR with c = 1000, w = 1001: y = (x - 999.5) / 1000 + 0.5
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 0.5005], [1.0, 1.0]], atol=1e-6)


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "m1.dcm", TWELVE_BIT, photometric="MONOCHROME1", WindowCenter=2048, WindowWidth=4096)
    expected = [[1.0, 0.5 - (1000 - 2047.5) / 4095], [0.5 - 0.5 / 4095, 0.0]]
    np.testing.assert_allclose(dicom_unit(path), expected, atol=1e-6)


def test_rescale_slope_and_intercept_come_before_the_window(tmp_path: Path) -> None:
    pixels = np.array([[0, 100], [200, 300]], dtype=np.uint16)  # -> -1024, -824, -624, -424
    path = write_dicom(
        tmp_path / "r.dcm", pixels, RescaleSlope=2, RescaleIntercept=-1024, WindowCenter=-624, WindowWidth=401
    )
    # LINEAR with c = -624, w = 401: y = (x + 624.5) / 400 + 0.5
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 0.00125], [0.50125, 1.0]], atol=1e-6)


def test_a_modality_lut_sequence(tmp_path: Path) -> None:
    item = _lut([3, 1, 16], [100, 200, 400])  # inputs 1, 2, 3
    item.ModalityLUTType = "US"
    pixels = np.array([[0, 1], [2, 9]], dtype=np.uint16)  # 0 -> first entry, 9 -> last
    path = write_dicom(
        tmp_path / "m.dcm", pixels, ModalityLUTSequence=Sequence([item]), WindowCenter=250.5, WindowWidth=301
    )
    # LUT: 0, 1 -> 100, 2 -> 200, 9 -> 400; LINEAR with c = 250.5, w = 301: y = (x - 250) / 300 + 0.5
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 0.0], [1 / 3, 1.0]], atol=1e-6)


def test_a_voi_lut_sequence_wins_over_a_window(tmp_path: Path) -> None:
    pixels = np.array([[5, 10, 11], [12, 13, 20]], dtype=np.uint16)
    path = write_dicom(
        tmp_path / "v.dcm",
        pixels,
        VOILUTSequence=_voi_lut([4, 10, 16], [0, 10000, 40000, 65535]),
        WindowCenter=0,
        WindowWidth=1,
    )
    # inputs clipped to 10..13, output 0..2^16-1
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 0.0, 10000 / 65535], [40000 / 65535, 1.0, 1.0]], atol=1e-6)


def test_a_16_bit_voi_lut_holding_12_bit_entries_is_spread_by_12_bits(tmp_path: Path) -> None:
    pixels = np.array([[10, 11], [12, 13]], dtype=np.uint16)
    path = write_dicom(tmp_path / "v.dcm", pixels, VOILUTSequence=_voi_lut([4, 10, 16], [0, 1000, 3000, 4095]))
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 1000 / 4095], [3000 / 4095, 1.0]], atol=1e-6)


def test_signed_pixels_with_a_linear_exact_window(tmp_path: Path) -> None:
    # 12-bit two's complement written without sign extension (as some modalities do)
    pixels = np.array([[0x0800, 0x0FFF], [0x0000, 0x07FF]], dtype=np.uint16).view(np.int16)  # -2048, -1, 0, 2047
    path = write_dicom(
        tmp_path / "s.dcm", pixels, signed=True, WindowCenter=0, WindowWidth=4096, VOILUTFunction="LINEAR_EXACT"
    )
    # LINEAR_EXACT: y = x / 4096 + 0.5
    np.testing.assert_allclose(dicom_unit(path), [[0.0, 0.499755859375], [0.5, 0.999755859375]], atol=1e-7)


def test_without_a_window_the_percentile_window_applies(tmp_path: Path) -> None:
    pixels = (np.arange(1000, dtype=np.uint16) + 1000).reshape(25, 40)  # 1000 .. 1999
    unit = dicom_unit(write_dicom(tmp_path / "p.dcm", pixels))
    # numpy's linear percentiles of 1000..1999: 0.5 % -> 1004.995, 99.5 % -> 1994.005
    lo, hi = 1004.995, 1994.005
    assert unit[0, 0] == 0.0 and unit[-1, -1] == 1.0
    assert unit[12, 20] == pytest.approx((1500 - lo) / (hi - lo), abs=1e-6)


def test_an_empty_window_falls_back_to_the_percentile_window(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "e.dcm", np.array([[0, 4095]], dtype=np.uint16), WindowCenter="", WindowWidth="")
    assert dicom_unit(path).tolist() == [[0.0, 1.0]]


def test_a_voi_lut_of_9_bits_is_a_bad_header(tmp_path: Path) -> None:
    path = write_dicom(
        tmp_path / "v.dcm", np.array([[10, 11]], dtype=np.uint16), VOILUTSequence=_voi_lut([2, 10, 9], [0, 511])
    )
    assert _reason(path) == "dicom_bad_header"


def test_load_image_gives_the_8_bit_display_values(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "w.dcm", TWELVE_BIT, WindowCenter=2048, WindowWidth=4096)
    image = load_image(path, 2)
    # round(255 * y): 0, round(62.27) = 62, round(127.53) = 128, 255
    assert (image * 255).round().int().tolist() == [[[0, 62], [128, 255]]]


# ------------------------------------------------------------------------------ compressed
def test_rle_lossless_decodes_to_the_same_values(tmp_path: Path) -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64)
    plain = write_dicom(tmp_path / "plain.dcm", pixels, WindowCenter=2048, WindowWidth=4096)
    rle = write_dicom(tmp_path / "rle.dcm", pixels, WindowCenter=2048, WindowWidth=4096, compress=RLELossless)
    assert rle.stat().st_size != plain.stat().st_size  # really encoded
    np.testing.assert_array_equal(dicom_unit(rle), dicom_unit(plain))
    assert dicom_unit(rle)[0, 1] == pytest.approx((1 - 2047.5) / 4095 + 0.5, abs=1e-6)


@pytest.mark.skipif(not get_encoder(JPEG2000Lossless).is_available, reason="no JPEG 2000 encoder (pylibjpeg-openjpeg)")
def test_jpeg2000_lossless_decodes_to_the_same_values(tmp_path: Path) -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16) * 7 % 4096).reshape(64, 64)  # 32 px is openjpeg's minimum here
    plain = write_dicom(
        tmp_path / "plain.dcm", pixels, RescaleSlope=1, RescaleIntercept=-2048, WindowCenter=0, WindowWidth=4096
    )
    j2k = write_dicom(
        tmp_path / "j2k.dcm",
        pixels,
        RescaleSlope=1,
        RescaleIntercept=-2048,
        WindowCenter=0,
        WindowWidth=4096,
        compress=JPEG2000Lossless,
    )
    np.testing.assert_array_equal(dicom_unit(j2k), dicom_unit(plain))


@pytest.mark.skipif(not get_decoder(JPEGLSLossless).is_available, reason="no JPEG-LS decoder (fedvlp[dicom-codecs])")
def test_jpeg_ls_lossless_decodes_like_its_uncompressed_original() -> None:
    # pydicom's own test files: one 64x64 16-bit signed MR image, stored plain and as JPEG-LS
    plain, jpeg_ls = get_testdata_file("MR_small.dcm"), get_testdata_file("MR_small_jpeg_ls_lossless.dcm")
    np.testing.assert_array_equal(dicom_unit(jpeg_ls), dicom_unit(plain))


@pytest.mark.skipif(
    not get_decoder(JPEGLosslessSV1).is_available, reason="no JPEG Lossless decoder (fedvlp[dicom-codecs])"
)
@pytest.mark.parametrize("bits", [12, 16])
def test_jpeg_lossless_sv1_decodes_to_the_stored_values(tmp_path: Path, bits: int) -> None:
    from pydicom import dcmread

    top = (1 << bits) - 1
    pixels = np.array(
        [[0, top, 0, 1 << (bits - 1)], [top, 0, 1, top - 1]], dtype=np.uint16
    )  # every difference category
    path = write_dicom(
        tmp_path / "jll.dcm",
        pixels,
        bits_stored=bits,
        WindowCenter=(top + 1) / 2,
        WindowWidth=top + 1,
        VOILUTFunction="LINEAR_EXACT",
    )
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.PixelData = encapsulate([jpeg_lossless_sv1(pixels, bits)])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    # LINEAR_EXACT with c = 2^(b-1), w = 2^b: y = x / 2^b
    np.testing.assert_allclose(dicom_unit(path), pixels / (top + 1), atol=1e-7)


def test_a_syntax_without_decoder_is_a_codec_skip(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "v.dcm", TWELVE_BIT)
    from pydicom import dcmread

    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG2MPML  # compressed, and no pixel decoder exists for it
    ds.PixelData = encapsulate([b"\0" * 16])
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageDecodeError, match="no installed decoder") as info:
        load_image(path, 16)
    assert info.value.reason == "dicom_codec"


def test_a_failed_decode_is_one_line_and_pydicom_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    # pydicom's sample of a 12-bit JPEG Extended file that neither Pillow nor libjpeg decodes
    path = Path(get_testdata_file("JPEG-lossy.dcm"))
    with pytest.raises(ImageDecodeError) as info:
        load_image(path, 16)
    assert info.value.reason == "dicom_codec" and "\n" not in str(info.value)
    assert [r for r in caplog.records if r.name.startswith("pydicom")] == []


# ------------------------------------------------------------------------------ refusals
def test_multiframe_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "mf.dcm", np.zeros((2, 4, 4), dtype=np.uint16))
    assert _reason(path) == "dicom_multiframe"


def test_colour_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "c.dcm", np.zeros((4, 4), dtype=np.uint16), photometric="PALETTE COLOR")
    assert _reason(path) == "dicom_color"


def test_burned_in_annotation_is_refused(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm", np.zeros((4, 4), dtype=np.uint16), BurnedInAnnotation="YES")
    assert _reason(path) == "dicom_burned_in"


def test_bits_stored_above_bits_allocated_is_a_bad_header(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm", np.zeros((4, 4), dtype=np.uint16), bits_stored=12, BitsStored=17)
    assert _reason(path) == "dicom_bad_header"


def test_a_window_narrower_than_1_is_a_bad_header(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "b.dcm", np.zeros((4, 4), dtype=np.uint16), WindowCenter=10, WindowWidth=0)
    assert _reason(path) == "dicom_bad_header"


def test_a_truncated_pixel_data_element(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "t.dcm", (np.arange(64 * 64, dtype=np.uint16) % 4096).reshape(64, 64))
    data = path.read_bytes()
    path.write_bytes(data[:-3000])
    assert _reason(path) == "image_truncated"


def test_text_named_dcm_is_corrupt_and_a_missing_file_missing(tmp_path: Path) -> None:
    (tmp_path / "x.dcm").write_text("not a dicom file " * 20, encoding="utf-8")
    assert _reason(tmp_path / "x.dcm") == "image_corrupt"
    assert _reason(tmp_path / "nope.dcm") == "image_missing"


def test_an_object_without_pixels_is_not_an_image() -> None:
    from pydicom import dcmread

    ds = dcmread(get_testdata_file("test-SR.dcm"))  # a structured report
    assert header_refusal(ds) is not None and header_refusal(ds)[0] == "dicom_not_image"


def test_the_header_alone_gives_size_and_the_size_limit(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "h.dcm", np.zeros((6, 8), dtype=np.uint16), photometric="MONOCHROME1")
    assert check_header(path) == (8, 6, "DICOM MONOCHROME1 12-bit")
    with pytest.raises(ImageDecodeError) as info:
        check_header(path, ImagePolicy(max_pixels=40))
    assert info.value.reason == "image_huge"


def test_a_file_without_suffix_is_dicom_by_its_marker(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "IM000001", TWELVE_BIT, WindowCenter=2048, WindowWidth=4096)
    png = tmp_path / "x.png"
    png.write_bytes(path.read_bytes())  # an image suffix goes to PIL without a look inside
    assert is_dicom(path) and not is_dicom(png)
    assert load_image(path, 2).shape == (1, 2, 2)
