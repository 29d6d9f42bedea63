// static_hd preprocessing (FUSION_SPEC §2), as runtime/preprocess.py does it with Pillow.
#pragma once
#include <cstdint>
#include <vector>

namespace fe {

struct Image8 {                    // packed RGB8, rows of 3*w bytes
    int w = 0, h = 0;
    std::vector<uint8_t> rgb;
};

struct Tiles {
    int size = 0;
    std::vector<float> main;       // (3, S, S)
    std::vector<float> global;     // (4, 3, S, S): TL, TR, BL, BR of the 2S x 2S resize
};

// Pillow's Image.resize(..., BICUBIC) on 8-bit RGB: the same fixed-point separable filter.
Image8 resize_bicubic(const Image8 & src, int out_w, int out_h);
Tiles static_hd_tiles(const Image8 & img, int size);

}  // namespace fe
