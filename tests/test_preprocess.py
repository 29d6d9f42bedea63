"""static_hd preprocessing (docs/fusion.md §2): tile geometry, pixel values, modes, bad images."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fusion_edge.runtime.errors import ImageError
from fusion_edge.runtime.preprocess import load_image, static_hd_tiles


def quadrants(w, h):
    """Four flat colour quadrants: each global tile must be exactly one colour."""
    img = Image.new("RGB", (w, h))
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    for n, c in enumerate(colours):
        r, col = divmod(n, 2)
        img.paste(c, (col * w // 2, r * h // 2, (col + 1) * w // 2, (r + 1) * h // 2))
    return img, colours


@pytest.mark.parametrize("size", [(640, 480), (300, 500), (1024, 256)])
def test_tile_geometry_and_values(size):
    img, colours = quadrants(*size)
    tiles = static_hd_tiles(img)
    assert tiles.main.shape == (3, 384, 384) and tiles.global_tiles.shape == (4, 3, 384, 384)
    assert tiles.main.dtype == np.float32
    for tile, c in zip(tiles.global_tiles, colours):       # row-major TL, TR, BL, BR
        centre = tile[:, 100:284, 100:284]                  # away from the resampled seam
        expect = (np.array(c, np.float32) / 255 - 0.5) / 0.5
        np.testing.assert_allclose(centre, np.broadcast_to(expect[:, None, None], centre.shape), atol=1e-6)
    # main tile: the whole image at 384x384, so its quadrants carry the four colours too
    for n, c in enumerate(colours):
        r, col = divmod(n, 2)
        patch = tiles.main[:, r * 192 + 40:r * 192 + 150, col * 192 + 40:col * 192 + 150]
        np.testing.assert_allclose(patch.mean(axis=(1, 2)), (np.array(c) / 255 - 0.5) / 0.5, atol=1e-6)


def test_pixel_values_match_pil_bicubic_resize():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    tiles = static_hd_tiles(img)
    big = np.asarray(img.resize((768, 768), Image.BICUBIC), np.float32)
    expect_br = (big[384:, 384:] / 255 - 0.5) / 0.5
    np.testing.assert_allclose(tiles.global_tiles[3].transpose(1, 2, 0), expect_br, atol=1e-6)
    main = (np.asarray(img.resize((384, 384), Image.BICUBIC), np.float32) / 255 - 0.5) / 0.5
    np.testing.assert_allclose(tiles.main.transpose(1, 2, 0), main, atol=1e-6)


@pytest.mark.parametrize("name", ["rgba", "gray", "palette"])
def test_modes_are_converted_to_rgb(images, name):
    img = load_image(images[name])
    assert img.mode == "RGB"
    with Image.open(images[name]) as raw:
        expected = np.asarray(raw.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(img), expected)
    assert static_hd_tiles(images[name]).main.shape == (3, 384, 384)


def test_sources_path_bytes_array_agree(images):
    p = images["wide"]
    a = static_hd_tiles(p).main
    np.testing.assert_array_equal(static_hd_tiles(p.read_bytes()).main, a)
    np.testing.assert_array_equal(static_hd_tiles(np.asarray(Image.open(p).convert("RGB"))).main, a)


@pytest.mark.parametrize("name,match", [("empty", "empty"), ("corrupt", "not a readable image"),
                                        ("notimage", "not a readable image")])
def test_bad_images_raise_clear_errors(images, name, match):
    with pytest.raises(ImageError, match=match) as e:
        static_hd_tiles(images[name])
    assert "fix:" in str(e.value)


def test_other_bad_inputs():
    with pytest.raises(ImageError, match="does not exist"):
        load_image("/no/such/file.jpg")
    with pytest.raises(ImageError, match="empty"):
        load_image(b"")
    with pytest.raises(ImageError, match="uint8"):
        load_image(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ImageError):
        load_image(12345)
