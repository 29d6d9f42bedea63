// Pillow's ImagingResample for 8-bit images, re-implemented: a separable convolution with the
// bicubic (a = -0.5) kernel widened by the scale when reducing, coefficients in 22-bit fixed
// point, the two passes in Pillow's order, each pass rounded and clipped to uint8. Same numbers as Pillow.
#include "preprocess.hpp"

#include <algorithm>
#include <cmath>

namespace fe {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic(double x) {
    const double a = -0.5;
    x = std::fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

struct Taps {
    int ksize = 0;
    std::vector<int> bounds;       // (xmin, xcount) per output pixel
    std::vector<int32_t> k;        // ksize coefficients per output pixel, fixed point
};

Taps precompute(int in_size, int out_size) {
    const double scale = double(in_size) / out_size;
    const double filterscale = std::max(scale, 1.0);
    const double support = 2.0 * filterscale;
    Taps t;
    t.ksize = int(std::ceil(support)) * 2 + 1;
    t.bounds.resize(2 * out_size);
    t.k.assign(size_t(out_size) * t.ksize, 0);
    std::vector<double> w(t.ksize);
    for (int xx = 0; xx < out_size; ++xx) {
        const double center = (xx + 0.5) * scale;
        const double ss = 1.0 / filterscale;
        int xmin = int(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = int(center + support + 0.5);
        if (xmax > in_size) xmax = in_size;
        xmax -= xmin;
        double total = 0.0;
        for (int x = 0; x < xmax; ++x) {
            w[x] = bicubic((x + xmin - center + 0.5) * ss);
            total += w[x];
        }
        for (int x = 0; x < xmax; ++x) {
            const double v = total != 0.0 ? w[x] / total : 0.0;
            t.k[size_t(xx) * t.ksize + x] = int32_t(v < 0 ? v * (1 << kPrecisionBits) - 0.5 : v * (1 << kPrecisionBits) + 0.5);
        }
        t.bounds[2 * xx] = xmin;
        t.bounds[2 * xx + 1] = xmax;
    }
    return t;
}

inline uint8_t clip8(int64_t ss) {
    const int64_t v = ss >> kPrecisionBits;
    return uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}

Image8 horizontal(const Image8 & in, int out_w) {
    const Taps t = precompute(in.w, out_w);
    Image8 out{out_w, in.h, std::vector<uint8_t>(size_t(out_w) * in.h * 3)};
    for (int y = 0; y < in.h; ++y) {
        const uint8_t * row = &in.rgb[size_t(y) * in.w * 3];
        for (int xx = 0; xx < out_w; ++xx) {
            const int xmin = t.bounds[2 * xx], xcnt = t.bounds[2 * xx + 1];
            const int32_t * k = &t.k[size_t(xx) * t.ksize];
            for (int c = 0; c < 3; ++c) {
                int64_t ss = 1 << (kPrecisionBits - 1);
                for (int x = 0; x < xcnt; ++x) ss += int64_t(row[(x + xmin) * 3 + c]) * k[x];
                out.rgb[(size_t(y) * out_w + xx) * 3 + c] = clip8(ss);
            }
        }
    }
    return out;
}

Image8 vertical(const Image8 & in, int out_h) {
    const Taps t = precompute(in.h, out_h);
    Image8 out{in.w, out_h, std::vector<uint8_t>(size_t(in.w) * out_h * 3)};
    for (int yy = 0; yy < out_h; ++yy) {
        const int ymin = t.bounds[2 * yy], ycnt = t.bounds[2 * yy + 1];
        const int32_t * k = &t.k[size_t(yy) * t.ksize];
        for (int x = 0; x < in.w * 3; ++x) {
            int64_t ss = 1 << (kPrecisionBits - 1);
            for (int y = 0; y < ycnt; ++y) ss += int64_t(in.rgb[size_t(y + ymin) * in.w * 3 + x]) * k[y];
            out.rgb[size_t(yy) * in.w * 3 + x] = clip8(ss);
        }
    }
    return out;
}

// /255, (x - 0.5) / 0.5 in float32, HWC → CHW, of the S x S window at (x0, y0).
void normalize(const Image8 & img, int x0, int y0, int S, float * out) {
    const float inv255 = float(1.0 / 255.0);
    for (int c = 0; c < 3; ++c)
        for (int y = 0; y < S; ++y)
            for (int x = 0; x < S; ++x) {
                const float v = float(img.rgb[(size_t(y0 + y) * img.w + x0 + x) * 3 + c]) * inv255;
                out[(size_t(c) * S + y) * S + x] = (v - 0.5f) / 0.5f;
            }
}

}  // namespace

Image8 resize_bicubic(const Image8 & src, int out_w, int out_h) {
    if (src.w == out_w && src.h == out_h) return src;
    // Pillow (13.0, constraints.txt) runs the vertical pass first when the height shrinks by
    // more than twice what the width does; the order changes the rounded intermediate.
    const bool horizontal_first = !(src.h - out_h > 0 && src.h - out_h > (src.w - out_w) * 2);
    if (!horizontal_first) {
        Image8 tmp = src.h != out_h ? vertical(src, out_h) : src;
        return tmp.w != out_w ? horizontal(tmp, out_w) : tmp;
    }
    Image8 tmp = src.w != out_w ? horizontal(src, out_w) : src;
    return tmp.h != out_h ? vertical(tmp, out_h) : tmp;
}

Tiles static_hd_tiles(const Image8 & img, int S) {
    Tiles t;
    t.size = S;
    t.main.resize(size_t(3) * S * S);
    t.global.resize(size_t(12) * S * S);
    const Image8 big = resize_bicubic(img, 2 * S, 2 * S);
    for (int r = 0; r < 2; ++r)
        for (int c = 0; c < 2; ++c) normalize(big, c * S, r * S, S, &t.global[size_t(r * 2 + c) * 3 * S * S]);
    normalize(resize_bicubic(img, S, S), 0, 0, S, t.main.data());
    return t;
}

}  // namespace fe
