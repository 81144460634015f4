"""The one preprocessing: formats in, uint8 RGB out, deterministic, clear errors for bad files."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.errors import ImageLoadError
from edge.preprocess import PreprocessSpec, center_region, load_image, preprocess, preprocess_file
from edge.synthetic import render_cell


@pytest.fixture
def cell():
    return render_cell("lobed", np.random.default_rng(3), 150)


def test_output_is_uint8_rgb_of_spec_size(cell):
    out = preprocess(cell, PreprocessSpec(size=96))
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8 and out.flags["C_CONTIGUOUS"]


def test_deterministic(cell):
    assert np.array_equal(preprocess(cell), preprocess(cell.copy()))


def test_rgb_order_is_bgr_reversed_without_contrast(cell):
    rgb = preprocess(cell, PreprocessSpec(size=64, contrast="none"))
    bgr = preprocess(cell, PreprocessSpec(size=64, contrast="none", color_order="BGR"))
    assert np.array_equal(rgb, bgr[:, :, ::-1])


def test_clahe_changes_contrast_only_when_asked(cell):
    plain = preprocess(cell, PreprocessSpec(size=64, contrast="none"))
    clahe = preprocess(cell, PreprocessSpec(size=64))
    assert not np.array_equal(plain, clahe)
    assert clahe[:, :, 0].std() >= plain[:, :, 0].std() * 0.9


def test_accepts_gray_16bit_and_bgra(cell):
    spec = PreprocessSpec(size=64)
    gray = cv2.cvtColor(cell, cv2.COLOR_BGR2GRAY)
    assert preprocess(gray, spec).shape == (64, 64, 3)
    out_gray = preprocess(gray, PreprocessSpec(size=64, contrast="none"))
    assert np.array_equal(out_gray[:, :, 0], out_gray[:, :, 1])
    sixteen = cell.astype(np.uint16) * 257
    assert np.array_equal(preprocess(sixteen, spec), preprocess(cell, spec))
    bgra = cv2.cvtColor(cell, cv2.COLOR_BGR2BGRA)
    assert np.array_equal(preprocess(bgra, spec), preprocess(cell, spec))
    rgb_in = cell[:, :, ::-1].copy()
    assert np.array_equal(preprocess(rgb_in, spec, order="RGB"), preprocess(cell, spec))


def test_center_crop_keeps_the_centre_and_pad_keeps_everything():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, :50] = 255  # a white band on the far left: cropped away, kept by padding
    crop = preprocess(img, PreprocessSpec(size=50, contrast="none"))
    pad = preprocess(img, PreprocessSpec(size=50, contrast="none", aspect="pad"))
    assert crop.max() == 0
    assert pad.max() == 255


def test_spec_round_trip_and_validation():
    spec = PreprocessSpec(size=128, clahe_clip_limit=3.0)
    assert PreprocessSpec.model_validate(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(interpolation="bogus")
    with pytest.raises(ValueError, match="gamma\n  Extra inputs are not permitted"):
        PreprocessSpec.model_validate({**spec.to_dict(), "gamma": 2})


def test_load_image_errors_are_typed_and_name_the_file(tmp_path, cell):
    good = tmp_path / "good.jpg"
    cv2.imwrite(str(good), cell)
    assert load_image(good).shape == cell.shape
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    png = tmp_path / "cut.png"
    cv2.imwrite(str(png), cell)
    png.write_bytes(png.read_bytes()[:-30])
    for path, reason in [
        (tmp_path / "missing.jpg", "not found"),
        (truncated, "truncated JPEG"),
        (text, "not a decodable image"),
        (empty, "empty"),
        (png, "truncated PNG"),
        (tmp_path, "directory"),
    ]:
        with pytest.raises(ImageLoadError, match=reason) as info:
            load_image(path)
        assert str(path) in str(info.value)


def test_preprocess_file_equals_preprocess_of_decoded(tmp_path, cell):
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), cell)
    assert np.array_equal(preprocess_file(path), preprocess(cell))


def test_center_region():
    frame = np.arange(100 * 200).reshape(100, 200).astype(np.uint8)
    region = center_region(frame, 0.5)
    assert region.shape == (50, 50)
    assert region[0, 0] == frame[25, 75]


def test_prediction_breaks_ties_like_argmax():
    from edge.bundle import Uncertainty
    from edge.predict import to_prediction

    probs = np.array([0.1, 0.45, 0.45], np.float32)
    pred = to_prediction(probs, ["a", "b", "c"], Uncertainty())
    assert pred.label == "b" == ["a", "b", "c"][int(np.argmax(probs))]
    assert pred.uncertain and pred.margin == 0.0


def _reference_preprocess(bgr: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The same steps as single whole-image OpenCV calls (no row bands, no helper thread)."""
    h, w = bgr.shape[:2]
    side = min(h, w)
    image = bgr[(h - side) // 2 : (h - side) // 2 + side, (w - side) // 2 : (w - side) // 2 + side]
    while image.shape[0] >= 2 * spec.size:
        even = image.shape[0] // 2 * 2
        image = cv2.resize(image[:even, :even], (even // 2, even // 2), interpolation=cv2.INTER_AREA)
    image = cv2.resize(image, (spec.size, spec.size), interpolation=cv2.INTER_LINEAR)
    lab = cv2.cvtColor(image, cv2.COLOR_BGR2LAB)
    clahe = cv2.createCLAHE(clipLimit=spec.clahe_clip_limit, tileGridSize=(spec.clahe_tile_grid,) * 2)
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    return cv2.cvtColor(lab, cv2.COLOR_LAB2RGB if spec.color_order == "RGB" else cv2.COLOR_LAB2BGR)


@pytest.fixture(scope="module")
def lab_tables():
    from edge import labtables

    return labtables.build()


@pytest.mark.parametrize("shape", [(480, 640), (1080, 1920), (451, 449), (363, 360), (224, 224), (97, 131)])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("strategy", ["cvtcolor", "tables"])
def test_lab_strategies_are_byte_identical_to_whole_image_opencv(shape, order, strategy, lab_tables):
    # edge.labtables replaces the colour conversions with lookups; the model must still see exactly
    # the bytes OpenCV gives when each step is one call on the whole image.
    from edge.preprocess import CVTCOLOR

    lab = lab_tables if strategy == "tables" else CVTCOLOR
    rng = np.random.default_rng(sum(shape))
    frame = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (5, 5), 1.5)
    for size in (224, 96):
        spec = PreprocessSpec(size=size, color_order=order)
        assert np.array_equal(preprocess(frame, spec, lab=lab), _reference_preprocess(frame, spec)), (
            shape,
            size,
        )


def test_exact_when_several_threads_preprocess_at_once(lab_tables):
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    expected = [_reference_preprocess(f, PreprocessSpec()) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda f: preprocess(f, lab=lab_tables), frames * 3))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected * 3, strict=True))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_lab_tables_match_opencv_for_every_24_bit_colour(order, lab_tables):
    # All 2**24 colours in one 4096 x 4096 image, so every entry of the forward table and every
    # (a, b) code of the inverse table is used, under CLAHE's local remapping of L.
    bgr = np.arange(1 << 24, dtype=np.uint32).view(np.uint8).reshape(4096, 4096, 4)[..., :3]
    bgr = np.ascontiguousarray(
        np.random.default_rng(3).permutation(bgr.reshape(-1, 3)).reshape(4096, 4096, 3)
    )
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    expected = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB if order == "RGB" else cv2.COLOR_LAB2BGR)
    assert lab_tables.inverse.size == 256 * len(np.unique(lab[:, :, 1].astype(np.uint32) << 8 | lab[:, :, 2]))
    assert np.array_equal(
        lab_tables.clahe_on_l(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), clahe, order), expected
    )


def test_lab_strategy_is_chosen_once_at_start_up(monkeypatch):
    from edge import labtables
    from edge.preprocess import CVTCOLOR

    assert labtables.choose("cvtcolor") is CVTCOLOR
    assert isinstance(labtables.choose("auto"), labtables.LabTables)
    monkeypatch.setattr(labtables, "MIN_RAM_BYTES", 1 << 60)  # a device too small for ~90 MB of tables
    assert labtables.choose("auto") is CVTCOLOR
    assert isinstance(labtables.choose("tables"), labtables.LabTables)  # asked for explicitly
    with pytest.raises(ValueError, match="must be one of"):
        labtables.choose("fast")


def test_no_lab_tables_are_built_for_bundles_of_version_2(monkeypatch):
    """Version 2 does its LAB in edge.cielab: a run of only such bundles builds no strategy (~90 MB)."""
    from edge import labtables

    def never():
        raise AssertionError("built the tables for bundles that never read them")

    monkeypatch.setattr(labtables, "build", never)
    v2 = PreprocessSpec(version=2, clahe_tile_grid=7)
    assert labtables.choose("tables", [v2, PreprocessSpec(version=2, contrast="none")]) is labtables.UNUSED
    assert labtables.choose("auto", [PreprocessSpec(contrast="none")]) is labtables.UNUSED
    monkeypatch.setattr(labtables, "build", lambda: "tables")
    assert labtables.choose("auto", [v2, PreprocessSpec()]) == "tables"  # a version-1 bundle reads them
    assert (
        preprocess(np.full((40, 40, 3), 90, np.uint8), v2, lab=labtables.UNUSED)
        == preprocess(np.full((40, 40, 3), 90, np.uint8), v2)
    ).all()


def test_lab_tables_that_do_not_fit_leave_the_cvtcolor_path(monkeypatch, caplog):
    from edge import labtables
    from edge.preprocess import CVTCOLOR

    def no_memory():
        raise MemoryError

    monkeypatch.setattr(labtables, "build", no_memory)
    lab = labtables.choose("auto")
    assert lab is CVTCOLOR
    assert "not enough memory for the LAB lookup tables" in caplog.text
    frame = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(frame, lab=lab), _reference_preprocess(frame, PreprocessSpec()))


@pytest.mark.parametrize("interpolation", ["linear", "area", "cubic", "nearest"])
@pytest.mark.parametrize("aspect", ["center_crop", "pad", "stretch"])
def test_lab_tables_give_the_same_bytes_for_every_resize_option(interpolation, aspect, lab_tables):
    rng = np.random.default_rng(11)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (451, 613, 3), dtype=np.uint8), (5, 5), 1.5)
    for size, antialias in ((224, True), (224, False), (96, True), (451, True)):
        spec = PreprocessSpec(size=size, interpolation=interpolation, aspect=aspect, antialias=antialias)
        assert np.array_equal(preprocess(frame, spec, lab=lab_tables), preprocess(frame, spec)), (
            size,
            antialias,
        )


def test_an_image_that_declares_too_many_pixels_is_refused_from_its_header(tmp_path):
    # Issue 15, defect 1: a 3 KB PNG declaring 100000 x 100000 pixels crashed the daemon (cv2.error),
    # and a real 30000 x 30000 PNG took 5.5 GB before failing.
    import struct
    import zlib

    def png(width, height, rows=b""):
        def chunk(kind, body):
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b"")
        )

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png(100_000, 100_000))
    with pytest.raises(ImageLoadError, match="declares 100000 x 100000 pixels, over the limit"):
        load_image(bomb)
    from edge import preprocess as pp

    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.zeros((40, 50, 3), np.uint8))
    assert load_image(small).shape == (40, 50, 3)
    pp.set_max_pixels(1000)
    try:
        with pytest.raises(ImageLoadError, match="declares 50 x 40 pixels"):
            load_image(small)
    finally:
        pp.set_max_pixels(pp.DEFAULT_MAX_PIXELS)


def _with_cast(image: np.ndarray, gains_bgr) -> np.ndarray:
    """The same slide under another lamp / camera: each channel scaled."""
    return np.clip(np.rint(image.astype(np.float32) * np.asarray(gains_bgr, np.float32)), 0, 255).astype(
        np.uint8
    )


def test_white_balance_moves_the_background_to_the_reference(cell):
    from edge.preprocess import GAIN_LIMITS, background_rgb, white_balance

    reference = (228.0, 222.0, 236.0)
    balanced = white_balance(cell, reference)
    assert np.abs(background_rgb(balanced) - reference).max() <= 2.0
    # a colour cast of the same cell is removed: both come out alike
    cast = _with_cast(cell, (0.78, 1.0, 1.15))
    assert np.abs(cast.astype(int) - cell).mean() > 15
    assert np.abs(white_balance(cast, reference).astype(int) - balanced).mean() < 3
    # a frame of nothing but dark stain is not blown up: the gains are bounded
    dark = np.full((64, 64, 3), 40, np.uint8)
    assert white_balance(dark, reference).max() <= 40 * GAIN_LIMITS[1] + 1


def test_white_balance_is_part_of_the_spec_and_of_preprocess(cell):
    spec = PreprocessSpec(size=96, color="white_balance", white_reference=(228, 222, 236))
    assert spec.to_dict()["white_reference"] == [228.0, 222.0, 236.0]
    assert PreprocessSpec.model_validate(spec.to_dict()) == spec
    assert "color" not in PreprocessSpec(size=96).to_dict()  # absent means none: older bundles agree
    cast = _with_cast(cell, (0.8, 1.0, 1.2))
    plain = PreprocessSpec(size=96)
    gap_plain = np.abs(preprocess(cast, plain).astype(int) - preprocess(cell, plain)).mean()
    gap_wb = np.abs(preprocess(cast, spec).astype(int) - preprocess(cell, spec)).mean()
    assert gap_wb < gap_plain / 3
    np.testing.assert_array_equal(preprocess(cast, spec), preprocess(cast.copy(), spec))
    for bad in (None, (0, 200, 200), (200, 200)):
        with pytest.raises(ValueError, match="white_reference"):
            PreprocessSpec(color="white_balance", white_reference=bad)
    with pytest.raises(ValueError, match="color\n  Input should be 'none' or 'white_balance'"):
        PreprocessSpec(color="macenko")


def test_the_spec_read_from_a_manifest_checks_colour_standardisation():
    read = PreprocessSpec.model_validate(  # as Bundle.load reads a manifest: JSON types, strictly
        {"size": 96, "color": "white_balance", "white_reference": [228, 222, 236]}, strict=True
    )
    assert read.white_reference == (228.0, 222.0, 236.0)
    assert read.to_dict()["white_reference"] == [228.0, 222.0, 236.0]
    for bad in (
        {"color": "white_balance"},
        {"white_reference": [228, 222, 236]},
        {"white_reference": [0, 1, 2], "color": "white_balance"},
    ):
        with pytest.raises(ValueError):
            PreprocessSpec.model_validate({"size": 96, **bad}, strict=True)
