"""The one preprocessing: formats in, uint8 RGB out, deterministic, clear errors for bad files."""

from __future__ import annotations

import os

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
    assert PreprocessSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(interpolation="bogus")
    with pytest.raises(ValueError, match="unknown preprocess keys"):
        PreprocessSpec.from_dict({**spec.to_dict(), "gamma": 2})


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


@pytest.mark.parametrize("shape", [(480, 640), (1080, 1920), (451, 449), (363, 360), (224, 224), (97, 131)])
@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("bands", ["1", "0"])
@pytest.mark.parametrize("tables", ["1", "0"])
def test_fast_paths_are_byte_identical_to_whole_image_opencv(shape, order, bands, tables, monkeypatch):
    # edge.rowbands splits colour conversion and 2x area halving over two threads, edge.labtables
    # replaces the colour conversions with lookups; the model must still see exactly the bytes
    # OpenCV gives when each step is one call on the whole image.
    from edge import labtables, rowbands

    monkeypatch.setenv("EDGE_ROW_BANDS", bands)
    monkeypatch.setenv("EDGE_LAB_TABLES", tables)
    assert (labtables.prepare() is not None) == (tables == "1" and labtables.enabled())
    assert rowbands.enabled() == (bands == "1" and (os.cpu_count() or 1) > 1)
    rng = np.random.default_rng(sum(shape))
    frame = cv2.GaussianBlur(rng.integers(0, 256, (*shape, 3), dtype=np.uint8), (5, 5), 1.5)
    for size in (224, 96):
        spec = PreprocessSpec(size=size, color_order=order)
        assert np.array_equal(preprocess(frame, spec), _reference_preprocess(frame, spec)), (shape, size)


def test_row_bands_are_exact_when_several_threads_preprocess_at_once():
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(8)]
    expected = [_reference_preprocess(f, PreprocessSpec()) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(preprocess, frames * 3))
    assert all(np.array_equal(g, e) for g, e in zip(got, expected * 3, strict=True))


@pytest.mark.parametrize("order", ["RGB", "BGR"])
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_lab_tables_match_opencv_for_every_24_bit_colour(order, kernels, monkeypatch):
    # All 2**24 colours in one 4096 x 4096 image, so every entry of the forward table and every
    # (a, b) code of the inverse table is used, under CLAHE's local remapping of L.
    from edge import labtables

    monkeypatch.setenv("EDGE_LAB_KERNELS", kernels)  # the C passes (where built) and the NumPy ones
    bgr = np.arange(1 << 24, dtype=np.uint32).view(np.uint8).reshape(4096, 4096, 4)[..., :3]
    bgr = np.ascontiguousarray(np.random.default_rng(3).permutation(bgr.reshape(-1, 3)).reshape(4096, 4096, 3))
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    lab = cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB)
    lab[:, :, 0] = clahe.apply(np.ascontiguousarray(lab[:, :, 0]))
    expected = cv2.cvtColor(lab, cv2.COLOR_LAB2RGB if order == "RGB" else cv2.COLOR_LAB2BGR)
    tables = labtables.build()
    assert tables.inverse.size == 256 * len(np.unique(lab[:, :, 1].astype(np.uint32) << 8 | lab[:, :, 2]))
    assert np.array_equal(tables.clahe_on_l(bgr, clahe, order), expected)


def test_lab_tables_switch_off(monkeypatch):
    from edge import labtables

    monkeypatch.setenv("EDGE_LAB_TABLES", "1")
    assert labtables.prepare() is not None and labtables.current() is not None
    monkeypatch.setenv("EDGE_LAB_TABLES", "0")
    assert labtables.prepare() is None and labtables.current() is None
    monkeypatch.setenv("EDGE_LAB_TABLES", "1")
    monkeypatch.setattr(labtables, "MIN_RAM_BYTES", 1 << 60)  # a device too small for ~90 MB of tables
    assert labtables.prepare() is None and labtables.current() is None


def test_lab_tables_that_do_not_fit_leave_the_cvtcolor_path(monkeypatch, caplog):
    from edge import labtables

    def no_memory():
        raise MemoryError

    monkeypatch.setattr(labtables, "_tables", None)
    monkeypatch.setattr(labtables, "_failed", False)
    monkeypatch.setattr(labtables, "build", no_memory)
    monkeypatch.setenv("EDGE_LAB_TABLES", "1")
    assert labtables.prepare() is None and labtables.current() is None
    assert "not enough memory for the LAB lookup tables" in caplog.text
    frame = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    assert np.array_equal(preprocess(frame), _reference_preprocess(frame, PreprocessSpec()))


@pytest.mark.parametrize("interpolation", ["linear", "area", "cubic", "nearest"])
@pytest.mark.parametrize("aspect", ["center_crop", "pad", "stretch"])
@pytest.mark.parametrize("kernels", ["1", "0"])
def test_lab_tables_give_the_same_bytes_for_every_resize_option(interpolation, aspect, kernels, monkeypatch):
    # With the tables the last resize runs on BGRA instead of BGR; every option must still give the
    # bytes of the plain cvtColor path.
    from edge import labtables

    monkeypatch.setenv("EDGE_LAB_KERNELS", kernels)
    rng = np.random.default_rng(11)
    frame = cv2.GaussianBlur(rng.integers(0, 256, (451, 613, 3), dtype=np.uint8), (5, 5), 1.5)
    for size, antialias in ((224, True), (224, False), (96, True), (451, True)):
        spec = PreprocessSpec(size=size, interpolation=interpolation, aspect=aspect, antialias=antialias)
        monkeypatch.setenv("EDGE_LAB_TABLES", "0")
        expected = preprocess(frame, spec)
        monkeypatch.setenv("EDGE_LAB_TABLES", "1")
        assert labtables.prepare() is not None
        assert np.array_equal(preprocess(frame, spec), expected), (size, antialias)


def test_lab_kernels_are_built_where_a_compiler_is(monkeypatch):
    # setup.py builds edge._lab_kernels as an optional extension: a machine with a C compiler (CI,
    # this one) must have it, or the fast path silently went missing.
    import shutil
    import sysconfig

    from edge import labtables

    if not (shutil.which("cc") or shutil.which("gcc")) or not os.path.exists(
        os.path.join(sysconfig.get_paths()["include"], "Python.h")
    ):
        pytest.skip("no C compiler or Python headers here: the NumPy passes are used")
    monkeypatch.delenv("EDGE_LAB_KERNELS", raising=False)
    assert labtables.compiled_kernels() is not None


def test_lab_kernels_reject_mismatched_buffers_and_stay_inside_the_table():
    from edge import labtables

    kernels = labtables._compiled
    if kernels is None:
        pytest.skip("edge._lab_kernels is not built here")
    bgrx = np.full(16, 0xFFFFFFFF, np.uint32)  # BGRA pixels: every index beyond a short table
    table = np.arange(4, dtype=np.uint32)
    lab, lightness = np.empty(16, np.uint32), np.empty(16, np.uint8)
    kernels.to_lab(bgrx, table, lab, lightness)
    assert (lab == 3).all() and (lightness == 3).all()  # clamped to the last entry, not read past it
    out = np.empty((16, 3), np.uint8)
    kernels.to_rgb(np.full(16, 0xFFFFFF00, np.uint32), lightness, np.array([0x030201], np.uint32), out, False)
    assert (out == [1, 2, 3]).all()
    kernels.to_rgb(np.zeros(16, np.uint32), np.zeros(16, np.uint8), np.array([0x030201], np.uint32), out, True)
    assert (out == [3, 2, 1]).all()
    with pytest.raises(ValueError, match="different lengths"):
        kernels.to_lab(bgrx, table, np.empty(15, np.uint32), lightness)
    with pytest.raises(ValueError, match="whole number"):
        kernels.to_rgb(lab, lightness, table, np.empty(47, np.uint8), False)
    with pytest.raises(ValueError, match="3 or 4 bytes"):
        kernels.to_lab(np.zeros(32, np.uint8), table, lab, lightness)  # 2 bytes a pixel
    bgr = np.array([[1, 2, 3]] * 16, np.uint8)  # 3 bytes a pixel (B 1, G 2, R 3): index 0x030201
    kernels.to_lab(bgr, np.arange(1 << 24, dtype=np.uint32), lab, lightness)
    assert (lab == 0x030201).all() and (lightness == 0x01).all()
    readonly = np.empty(16, np.uint8)
    readonly.setflags(write=False)
    with pytest.raises((BufferError, ValueError)):  # NumPy refuses a writable view of a read-only array
        kernels.to_lab(bgrx, table, lab, readonly)
