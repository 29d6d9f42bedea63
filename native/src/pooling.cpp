#include "pooling.hpp"

#include <algorithm>
#include <cmath>

namespace fe {

Grid global_grid(const std::vector<float> & t, int N, int H) {
    const int P = int(std::lround(std::sqrt(double(N))));
    Grid g{2 * P, 2 * P, H, std::vector<float>(size_t(4) * N * H)};
    for (int tr = 0; tr < 2; ++tr)
        for (int tc = 0; tc < 2; ++tc)
            for (int r = 0; r < P; ++r)
                for (int c = 0; c < P; ++c)
                    std::copy_n(&t[((size_t(tr * 2 + tc) * P + r) * P + c) * H], H,
                                &g.v[(size_t(tr * P + r) * 2 * P + tc * P + c) * H]);
    return g;
}

Grid adaptive_max_pool(const Grid & g, int side) {
    // PyTorch's bins: [floor(i*n/out), ceil((i+1)*n/out))
    auto lo = [](int i, int n, int out) { return (i * n) / out; };
    auto hi = [](int i, int n, int out) { return ((i + 1) * n + out - 1) / out; };
    Grid o{side, side, g.C, std::vector<float>(size_t(side) * side * g.C, -INFINITY)};
    for (int i = 0; i < side; ++i)
        for (int j = 0; j < side; ++j) {
            float * dst = &o.v[(size_t(i) * side + j) * g.C];
            for (int r = lo(i, g.rows, side); r < hi(i, g.rows, side); ++r)
                for (int c = lo(j, g.cols, side); c < hi(j, g.cols, side); ++c) {
                    const float * src = &g.v[(size_t(r) * g.cols + c) * g.C];
                    for (int k = 0; k < g.C; ++k) dst[k] = std::max(dst[k], src[k]);
                }
        }
    return o;
}

std::vector<float> context_windows(const Grid & ctx, int q) {
    const int s = int(std::lround(std::sqrt(double(q)))), w = ctx.rows / s, H = ctx.C;
    std::vector<float> out(size_t(q) * w * w * H);
    for (int a = 0; a < s; ++a)
        for (int b = 0; b < s; ++b)
            for (int i = 0; i < w; ++i)
                for (int j = 0; j < w; ++j)
                    std::copy_n(&ctx.v[(size_t(a * w + i) * ctx.cols + b * w + j) * H], H,
                                &out[((size_t(a * s + b) * w + i) * w + j) * H]);
    return out;
}

std::vector<float> fusion_l_resize(const std::vector<float> & t, int N, int H, int side) {
    const int P = int(std::lround(std::sqrt(double(N))));
    std::vector<int> i0(side), i1(side);
    std::vector<float> lam(side);
    for (int k = 0; k < side; ++k) {            // bilinear, align_corners=False
        const double src = std::max((k + 0.5) * double(P) / side - 0.5, 0.0);
        i0[k] = std::min(int(std::floor(src)), P - 1);
        i1[k] = std::min(i0[k] + 1, P - 1);
        lam[k] = float(src - i0[k]);
    }
    std::vector<float> rows(size_t(side) * P * H), out(size_t(side) * side * H);
    for (int r = 0; r < side; ++r)
        for (int c = 0; c < P; ++c)
            for (int h = 0; h < H; ++h)
                rows[(size_t(r) * P + c) * H + h] = t[(size_t(i0[r]) * P + c) * H + h] * (1 - lam[r]) +
                                                    t[(size_t(i1[r]) * P + c) * H + h] * lam[r];
    for (int r = 0; r < side; ++r)
        for (int c = 0; c < side; ++c)
            for (int h = 0; h < H; ++h)
                out[(size_t(r) * side + c) * H + h] = rows[(size_t(r) * P + i0[c]) * H + h] * (1 - lam[c]) +
                                                      rows[(size_t(r) * P + i1[c]) * H + h] * lam[c];
    return out;
}

}  // namespace fe
