// Question-independent post-processing (runtime/vision_post.py): the global grid, adaptive max
// pooling to the latent init and the context, the per-latent windows, FUSION-L's resize.
#pragma once
#include <vector>

namespace fe {

struct Grid {
    int rows = 0, cols = 0, C = 0;
    std::vector<float> v;          // (rows, cols, C)
};

Grid global_grid(const std::vector<float> & tokens, int N, int H);          // (4,N,H) → (2P,2P,H)
Grid adaptive_max_pool(const Grid & g, int side);                           // → (side, side, C)
std::vector<float> context_windows(const Grid & ctx, int q);                // ((s*w)^2,H) → (q, w*w, H)
std::vector<float> fusion_l_resize(const std::vector<float> & tokens, int N, int H, int side);

}  // namespace fe
