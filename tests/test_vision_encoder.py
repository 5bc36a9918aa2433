"""VisionEncoder end to end on the RKNN double: the right image's tokens come out, in the right
order and shape, outputs are released, errors name the C call, timings are reported."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from rkllmd.errors import BadImage, LibraryVersionError, ModelLoadError, RuntimeCallError
from rkllmd.runtime.rknn import _abi
from rkllmd.runtime.rknn._lib import RknnLibrary
from rkllmd.runtime.rknn.encoder import VisionEncoder
from rkllmd.vision import images
from rkllmd.vision.families import family
from tests.fake_rknn.build import BUILD_DIR, build_fake_rknn, stat, write_model


@pytest.fixture(scope="module")
def lib() -> RknnLibrary:
    return RknnLibrary.open(build_fake_rknn(BUILD_DIR))


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")  # lossless, so the expected values are exact
    return buf.getvalue()


def patch_means(pixels: bytes, w: int, h: int, gw: int, gh: int) -> list[list[float]]:
    """What the double computes: per token, the mean of each channel over its patch, / 255."""
    out = []
    for t in range(gw * gh):
        py, px = divmod(t, gw)
        ys, xs = range(py * h // gh, (py + 1) * h // gh), range(px * w // gw, (px + 1) * w // gw)
        n = len(ys) * len(xs)
        out.append([sum(pixels[(y * w + x) * 3 + c] for y in ys for x in xs) / n / 255 for c in range(3)])
    return out


def quadrants() -> Image.Image:
    img = Image.new("RGB", (80, 60), (255, 0, 0))
    img.paste((0, 255, 0), (40, 0, 80, 30))
    img.paste((0, 0, 255), (0, 30, 40, 60))
    return img


def test_the_embeddings_are_the_image_sent(lib: RknnLibrary, tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.rknn", size=(48, 48), grid=(4, 4), embed=7)
    fam = family("qwen2-vl")
    with VisionEncoder(model, lib=lib, family_name=fam) as enc:
        assert (enc.width, enc.height, enc.n_image_tokens, enc.embed_size) == (48, 48, 16, 7)
        data = jpeg(quadrants())
        got = enc.encode(data)
        prepared = images.prepare(data, (48, 48), fam.background)
        assert isinstance(prepared.pixels, bytes)
        want = patch_means(prepared.pixels, 48, 48, 4, 4)
        assert (got.n_tokens, got.embed_size, got.width, got.height) == (16, 7, 48, 48)
        assert len(got.data) == 16 * 7
        for t in range(16):
            assert list(got.row(t)) == pytest.approx([want[t][e % 3] for e in range(7)], abs=1e-6)
        # A wide image: its padding (the top row of tokens) is the family's mean colour.
        # (80x40 on an 80x80 square: rows 0-11 of 48 are padding, 12-35 the image; the bilinear
        # filter blends a pixel row at each edge.)
        wide = enc.encode(jpeg(Image.new("RGB", (80, 40), (255, 0, 0))))
        assert list(wide.row(0)[:3]) == pytest.approx([c / 255 for c in fam.background], abs=0.03)
        assert list(wide.row(6)[:3]) == pytest.approx([1.0, 0.0, 0.0], abs=0.03)
        assert list(wide.row(15)[:3]) == pytest.approx([c / 255 for c in fam.background], abs=0.03)
        other = enc.encode(jpeg(quadrants().transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        assert list(other.data) != list(got.data)
        assert stat(lib, "last_input_type") == _abi.RKNN_TENSOR_UINT8
        assert stat(lib, "last_input_fmt") == _abi.RKNN_TENSOR_NHWC
        assert stat(lib, "last_input_size") == 48 * 48 * 3
        assert stat(lib, "last_want_float") == 1
        assert stat(lib, "live_outputs") == 0  # every output buffer released


def test_several_outputs_sit_side_by_side_per_token(lib: RknnLibrary, tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.rknn", size=(32, 32), grid=(2, 2), embed=3, outputs=3, dims=2)
    with VisionEncoder(model, lib=lib) as enc:
        assert (enc.n_image_tokens, enc.output_width, enc.embed_size) == (4, 3, 9)
        got = enc.encode_pixels(bytes(range(256)) * (32 * 32 * 3 // 256))
        for t in range(4):
            row = list(got.row(t))
            assert row[3:6] == pytest.approx([v + 1 for v in row[0:3]])  # output 1 after output 0
            assert row[6:9] == pytest.approx([v + 2 for v in row[0:3]])
        assert stat(lib, "live_outputs") == 0


def test_a_float_encoder_gets_normalised_pixels(lib: RknnLibrary, tmp_path: Path) -> None:
    model = write_model(tmp_path / "m.rknn", size=(16, 16), grid=(1, 1), embed=3)
    fam = family("internvl3")
    with VisionEncoder(model, lib=lib, family_name="internvl3", float_input=True) as enc:
        got = enc.encode(jpeg(Image.new("RGB", (16, 16), (255, 128, 0))))
    assert stat(lib, "last_input_type") == _abi.RKNN_TENSOR_FLOAT32
    assert stat(lib, "last_input_size") == 16 * 16 * 3 * 4
    want = [(v / 255 - m) / s for v, m, s in zip((255, 128, 0), fam.mean, fam.std, strict=True)]
    # The double averages the floats it receives as they are.
    assert list(got.row(0)) == pytest.approx(want, abs=1e-5)


def test_timings(lib: RknnLibrary, tmp_path: Path) -> None:
    with VisionEncoder(write_model(tmp_path / "m.rknn", delay_ms=20), lib=lib) as enc:
        got = enc.encode(jpeg(Image.new("RGB", (300, 200), (1, 2, 3))))
    assert got.decode_ms > 0
    assert got.encode_ms >= 20 and got.npu_ms is not None and got.npu_ms >= 20  # the run's sleep is in both


def test_a_bad_image_leaves_the_encoder_usable(lib: RknnLibrary, tmp_path: Path) -> None:
    with VisionEncoder(write_model(tmp_path / "m.rknn"), lib=lib) as enc:
        runs = stat(lib, "runs")
        with pytest.raises(BadImage):
            enc.encode(b"GIF89a....")
        assert stat(lib, "runs") == runs  # refused before the encoder ran
        assert enc.encode(jpeg(Image.new("RGB", (10, 10)))).n_tokens == 16


def test_close_releases_the_context_and_refuses_later_use(lib: RknnLibrary, tmp_path: Path) -> None:
    live = stat(lib, "live_contexts")
    enc = VisionEncoder(write_model(tmp_path / "m.rknn"), lib=lib)
    assert stat(lib, "live_contexts") == live + 1
    enc.close()
    enc.close()
    assert enc.closed and stat(lib, "live_contexts") == live
    with pytest.raises(Exception, match="is closed"):
        enc.encode_pixels(bytes(56 * 56 * 3))


def test_wrong_pixel_count_is_a_caller_error(lib: RknnLibrary, tmp_path: Path) -> None:
    with (
        VisionEncoder(write_model(tmp_path / "m.rknn"), lib=lib) as enc,
        pytest.raises(ValueError, match="56x56x3"),
    ):
        enc.encode_pixels(bytes(10))


def test_a_library_found_by_path_is_loaded_once(tmp_path: Path) -> None:
    path = build_fake_rknn(BUILD_DIR)
    model = write_model(tmp_path / "m.rknn")
    with VisionEncoder(model, library=path) as a, VisionEncoder(model, library=path) as b:
        assert a.lib is b.lib and a.lib.version == "2.3.2"


def test_missing_function_names_the_release_it_needs(tmp_path: Path) -> None:
    lib = RknnLibrary.open(build_fake_rknn(BUILD_DIR, omit_core_mask=True))
    model = write_model(tmp_path / "m.rknn")
    with pytest.raises(LibraryVersionError, match=r"rknn_set_core_mask requires runtime ≥ 1\.6\.0"):
        VisionEncoder(model, lib=lib, core_mask=_abi.RKNN_NPU_CORE_0_1_2)
    assert stat(lib, "live_contexts") == 0  # the context made before the refusal was released
    VisionEncoder(model, lib=lib).close()  # without a core mask it is not needed


def test_core_mask_reaches_the_runtime(lib: RknnLibrary, tmp_path: Path) -> None:
    with VisionEncoder(write_model(tmp_path / "m.rknn"), lib=lib, core_mask=_abi.RKNN_NPU_CORE_0_1_2):
        assert stat(lib, "core_mask") == 7


def test_a_bad_model_file_names_the_call_and_code(lib: RknnLibrary, tmp_path: Path) -> None:
    bad = tmp_path / "bad.rknn"
    bad.write_bytes(b"RKNN\0not a model")
    with pytest.raises(RuntimeCallError, match="rknn_init returned -6: RKNN_ERR_MODEL_INVALID") as info:
        VisionEncoder(bad, lib=lib)
    assert (info.value.function, info.value.rc, info.value.code) == ("rknn_init", -6, "runtime_error")
    with pytest.raises(ModelLoadError, match="does not exist"):
        VisionEncoder(tmp_path / "missing.rknn", lib=lib)


def test_a_failing_run_names_rknn_run_and_the_encoder_can_be_closed(lib: RknnLibrary, tmp_path: Path) -> None:
    live = stat(lib, "live_contexts")
    enc = VisionEncoder(write_model(tmp_path / "m.rknn", fail="run"), lib=lib)
    with pytest.raises(RuntimeCallError, match="rknn_run returned -1: RKNN_ERR_FAIL"):
        enc.encode_pixels(bytes(56 * 56 * 3))
    enc.close()
    assert stat(lib, "live_contexts") == live
