"""Preprocessing version 2: bit-exact steps only, the cell cut at a physical size, the slide's colour
beyond the image. The golden hashes below were computed on x86-64 and checked on arm64
(scripts/arm64_check.sh): a step that is not bit-exact on every CPU changes them."""

from __future__ import annotations

import hashlib

import cv2
import numpy as np
import pytest

from edge import cielab, scale
from edge import preprocess_exact as exact
from edge.preprocess import PreprocessSpec, View, preprocess
from edge.synthetic import render_cell, render_field

V2 = PreprocessSpec(
    version=2, clahe_tile_grid=7, color="white_balance", white_reference=(255, 230, 203), field_rbc=4.0
)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def _inputs() -> list[tuple[np.ndarray, View]]:
    """Synthetic cells and a field (made by NumPy and OpenCV's drawing, the same on every machine) and
    noise, cut four ways: the whole image, a window inside it, one beyond its edge, a field's cell."""
    rng = np.random.default_rng(7)
    field, _ = render_field(rng, 640, 480, "lobed", n_extra=1)
    cells = [
        render_cell(name, np.random.default_rng(i), size=360) for i, name in enumerate(("round", "lobed"))
    ]
    noise = rng.integers(0, 256, (363, 360, 3), dtype=np.uint8)
    return [
        (cells[0], View()),
        (cells[1], View(rbc_px=70.0)),
        (noise, View(rbc_px=150.0, centre=(20, 300))),
        (field, View(rbc_px=40.0, centre=(320.5, 240.0), background=(235, 215, 225))),
    ]


def test_the_integer_lab_tables_are_the_integer_functions():
    tables = cielab.tables()
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    index = (
        bgr[..., 0].astype(np.uint32)
        | bgr[..., 1].astype(np.uint32) << 8
        | bgr[..., 2].astype(np.uint32) << 16
    )
    packed = tables.forward[index]
    lab = cielab.bgr_to_lab(bgr)
    assert (packed & 0xFF == lab[..., 0]).all()
    rgb = tables.inverse[(packed >> 8) << 8 | lab[..., 0]]
    expected = cielab.lab_to_rgb(lab)
    assert (rgb & 0xFF == expected[..., 0]).all() and (rgb >> 16 & 0xFF == expected[..., 2]).all()


def test_the_integer_lab_stays_within_two_steps_of_opencv():
    import cv2

    rng = np.random.default_rng(1)
    bgr = rng.integers(0, 256, (200, 200, 3), dtype=np.uint8)
    diff = np.abs(cielab.bgr_to_lab(bgr).astype(int) - cv2.cvtColor(bgr, cv2.COLOR_BGR2LAB))
    assert diff[..., 0].max() <= 1 and diff.max() <= 2


def test_version_2_gives_the_golden_bytes():
    got = [_digest(preprocess(image, V2, view=view)) for image, view in _inputs()]
    assert got == GOLDEN, f"version 2 preprocessing changed (a step that is not bit-exact?): {got}"


GOLDEN = ["d65624d039f59e71", "dc83e76ea1ca5145", "4360e0cd961c6a96", "a4b07f7c6a45c146"]


@pytest.mark.parametrize("aspect", ["center_crop", "pad", "stretch"])
def test_training_cuts_bgr_and_the_device_bgra_to_the_same_bytes(aspect):
    """Training augments the 3-channel cut; the device resizes 4-channel BGRA (twice as fast): each
    channel is interpolated alone, so the model input is the same, whatever the window or size."""
    from edge.preprocess import cut, finish

    rng = np.random.default_rng(11)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((363, 360), (97, 131), (224, 224))]
    views = [
        View(),
        View(rbc_px=60.0),
        View(rbc_px=150.0, centre=(20, 300)),
        View(rbc_px=33.3, background=(9, 8, 7)),
    ]
    for spec in (V2.replace(aspect=aspect), V2.replace(aspect=aspect, contrast="none", color_order="BGR")):
        for image in images:
            for view in views:
                a, b = (cut(image, spec, view, channels=c) for c in (3, 4))
                assert (a == b[..., :3]).all()
                background = view.background or exact.background_bgr(a)
                assert (finish(a, spec, background) == finish(b, spec, background)).all()


def test_the_window_beyond_the_image_is_the_slides_colour_never_a_reflection():
    image = np.zeros((100, 100, 3), np.uint8)
    image[:, :50] = (10, 200, 30)  # a colour the fill must never copy
    image[:, 50:] = (240, 240, 240)
    out = exact.window(image, (5.0, 50.0), 200.0, 224, (1, 2, 3))
    left = out[:, :90]  # the window's left part lies beyond the image
    assert (left == (1, 2, 3)).all(axis=-1).mean() > 0.95
    assert not ((out == (10, 200, 30)).all(axis=-1)[:, :80]).any()


def test_a_cell_keeps_its_physical_size_whatever_the_microscope():
    """The same drawn cell at two magnifications gives (nearly) the same model input once each
    image's red-cell size is known."""
    small = render_cell("round", np.random.default_rng(3), size=200)
    import cv2

    large = cv2.resize(small, (400, 400), interpolation=cv2.INTER_LINEAR)
    a = preprocess(small, V2, view=View(rbc_px=30.0)).astype(int)
    b = preprocess(large, V2, view=View(rbc_px=60.0)).astype(int)
    assert np.abs(a - b).mean() < 6


@pytest.mark.parametrize("grid,ok", [(7, True), (8, False), (14, True), (4, False)])
def test_version_2_needs_clahe_tiles_of_a_power_of_two_side(grid, ok):
    kwargs = dict(version=2, size=224, clahe_tile_grid=grid)
    if ok:
        PreprocessSpec(**kwargs)
    else:
        with pytest.raises(ValueError, match="power-of-two"):
            PreprocessSpec(**kwargs)


def test_version_1_specs_serialise_as_before():
    assert "version" not in PreprocessSpec().to_dict()
    assert V2.to_dict()["version"] == 2 and V2.to_dict()["field_rbc"] == 4.0
    with pytest.raises(ValueError, match="field_rbc"):
        PreprocessSpec(field_rbc=4.0)


def test_the_background_is_its_definition_by_sorting():
    """background_bgr reads histograms for speed; it must give what sorting gives: the lower median of
    each channel over the brightest tenth of the thumbnail's pixels (ties at the threshold included)."""

    def by_sorting(image):
        flat = exact.halve_until(image, exact.THUMBNAIL, exact.THUMBNAIL).reshape(-1, 3).astype(np.int64)
        brightness = flat.sum(axis=1)
        keep = max(1, int(len(brightness) * exact.BACKGROUND_SHARE))
        bright = flat[brightness >= np.sort(brightness)[len(brightness) - keep]]
        return tuple(int(np.sort(bright[:, c])[(len(bright) - 1) // 2]) for c in range(3))

    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (int(h), int(w), 3), np.uint8) for h, w in rng.integers(1, 400, (60, 2))]
    images += [np.full((50, 50, 3), 7, np.uint8), np.zeros((1, 1, 3), np.uint8)]
    smooth = cv2.GaussianBlur(rng.integers(0, 256, (480, 640, 3), np.uint8), (0, 0), 9)  # few distinct values
    images.append(smooth)
    assert [exact.background_bgr(i) for i in images] == [by_sorting(i) for i in images]


def test_the_background_and_white_balance_are_integers():
    image = np.full((120, 120, 3), (180, 200, 220), np.uint8)
    image[40:80, 40:80] = (120, 40, 90)
    assert exact.background_bgr(image) == (180, 200, 220)
    table = exact.white_balance_table((180, 200, 220), (255, 230, 203))
    assert table.dtype == np.uint8 and table.shape == (256, 1, 3)
    # each channel's background code lands on the reference (R, G, B) = (255, 230, 203), B, G, R here
    assert (int(table[180, 0, 0]), int(table[200, 0, 1]), int(table[220, 0, 2])) == (203, 230, 255)
    # and the gain is bounded: a channel 10x too dark is lifted at most 1.8x
    assert int(exact.white_balance_table((20, 200, 220), (255, 230, 203))[20, 0, 0]) == 36


def test_red_cells_give_the_scale_of_a_drawn_field():
    """render_field draws red cells of radius min(w, h) / 16 to / 9: 60 to 106 pixels across at 640 x 480,
    and half that at 320 x 240."""
    fields = [render_field(np.random.default_rng(i), 640, 480)[0] for i in range(4)]
    found = scale.measure(fields)
    assert found is not None and 55 <= found.rbc_px <= 110, found
    halves = scale.measure([render_field(np.random.default_rng(i), 320, 240)[0] for i in range(4)])
    assert halves is not None and abs(halves.rbc_px * 2 - found.rbc_px) <= 0.2 * found.rbc_px


def test_an_image_without_red_cells_gives_no_scale():
    assert scale.measure([np.full((200, 200, 3), 230, np.uint8)] * 5) is None


# OpenCV names version 2 may use: the resizes OpenCV documents as bit-exact (INTER_LINEAR_EXACT;
# INTER_AREA only for exact 2x halvings), lookup tables, channel copies and CLAHE on power-of-two
# tiles (checked by PreprocessSpec). Measured on arm64 (docs/device.md): INTER_LINEAR, general
# INTER_AREA and cvtColor to or from LAB give other bytes than on x86-64.
EXACT_CV2 = {
    "resize",
    "INTER_AREA",
    "INTER_LINEAR_EXACT",
    "LUT",
    "cvtColor",
    "COLOR_BGR2BGRA",
    "COLOR_BGRA2BGR",
    "COLOR_BGRA2RGB",
    "COLOR_BGR2RGB",
    "insertChannel",
    "extractChannel",
    "CLAHE",
}


def _cv2_uses(function_or_module) -> list[tuple[str, str]]:
    """(enclosing function, name) for every `cv2.NAME` in the source of `function_or_module`."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(function_or_module)))
    uses = []
    for func in [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)] or [tree]:
        for node in ast.walk(func):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id == "cv2"
            ):
                uses.append((getattr(func, "name", "<module>"), node.attr))
    return uses


def test_version_2_uses_only_bit_exact_steps():
    """A step that is not bit-exact on every CPU must not come back into version 2: the golden hashes
    above catch it on the CPUs CI runs on (x86-64, and arm64 under emulation); this catches it in the
    code, whatever the CPU."""
    from edge import preprocess as pp

    uses = [*_cv2_uses(exact), *_cv2_uses(pp.cut), *_cv2_uses(pp.finish), *_cv2_uses(cielab)]
    assert {name for _, name in uses} - EXACT_CV2 == set(), "a step that is not bit-exact on every CPU"
    # INTER_AREA gives other bytes on arm64 at general ratios: only the exact halvings may use it
    assert {func for func, name in uses if name == "INTER_AREA"} == {"halve_until"}
    # the LAB conversion is edge.cielab's integer tables, never OpenCV's
    assert not [name for _, name in uses if "LAB" in name]
    # and preprocess() hands version 2 to cut and finish alone, never to version 1's steps
    assert _version_2_calls(pp.preprocess) == {"to_bgr8", "cut", "finish", "exact.background_bgr"}


def _version_2_calls(function) -> set[str]:
    """The functions called inside `if spec.version == 2:` of `function`."""
    import ast
    import inspect
    import textwrap

    tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
    branch = next(
        n for n in ast.walk(tree) if isinstance(n, ast.If) and "version == 2" in ast.unparse(n.test)
    )
    return {ast.unparse(n.func) for stmt in branch.body for n in ast.walk(stmt) if isinstance(n, ast.Call)}
