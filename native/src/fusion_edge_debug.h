/* Not part of the stable C ABI: hooks for the parity tests (tests/test_native_parity.py). */
#ifndef FUSION_EDGE_DEBUG_H
#define FUSION_EDGE_DEBUG_H
#include "fusion_edge.h"
#ifdef __cplusplus
extern "C" {
#endif
/* Write each stage's output (tiles, vision tokens, alignment inputs/outputs, first logits) as raw
 * float32 files into dir on the next fe_look / fe_ask; NULL turns it off. */
FE_API fe_status fe_debug_set_dump_dir(fe_engine * engine, const char * dir);
/* Token ids of text as the native tokenizer encodes it (default special tokens); *count in/out. */
FE_API fe_status fe_debug_tokenize(fe_engine * engine, const char * text, int32_t * ids, int32_t * count);
/* The logits (V floats) of the last answer's first generated step; valid until the next fe_ask. */
FE_API const float * fe_debug_first_logits(fe_engine * engine, int32_t * count);
/* static_hd preprocessing alone: RGB8 (stride bytes per row) → main (3,S,S) and global (4,3,S,S) floats. */
FE_API fe_status fe_debug_preprocess(const uint8_t * rgb, int32_t width, int32_t height, int32_t stride, int32_t size,
                                     float * main_tile, float * global_tiles);
#ifdef __cplusplus
}
#endif
#endif
