// JNI glue of ai.fusionedge.FusionEdge over the C ABI (include/fusion_edge.h; docs/android.md).
//
// Every native method runs on the thread that calls it: the Java class runs open/look/ask on
// its own worker thread (a Java thread, so already attached to the VM), and the token callback
// runs inside fe_ask on that same thread. The library starts no thread that calls into Java, so
// there is no AttachCurrentThread/DetachCurrentThread here, and no global reference outlives a
// call except the exception class cached in JNI_OnLoad.
// Strings cross as UTF-8 byte[] (decoded in Java): NewStringUTF takes modified UTF-8, which
// 4-byte characters (emoji) in a token piece or an error message would break.
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "fusion_edge.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace {

struct Handle {
    fe_engine * engine = nullptr;
    volatile int32_t cancel = 0;   // read by fe_ask between tokens and by llama.cpp's abort callback
};

jclass g_exception = nullptr;        // ai.fusionedge.FusionEdgeException (global ref, for the library's life)
jmethodID g_exception_ctor = nullptr;   // (int code, byte[] message, byte[] fix)

Handle * handle_of(jlong h) { return reinterpret_cast<Handle *>(static_cast<intptr_t>(h)); }

jbyteArray utf8_bytes(JNIEnv * env, const char * s) {
    const jsize n = jsize(std::strlen(s));
    jbyteArray a = env->NewByteArray(n);
    if (a) env->SetByteArrayRegion(a, 0, n, reinterpret_cast<const jbyte *>(s));
    return a;
}

// Throws FusionEdgeException(code, message, fix); message and fix from the C ABI's thread-local error.
void throw_error(JNIEnv * env, int code, const char * message, const char * fix) {
    if (env->ExceptionCheck()) return;
    jbyteArray m = utf8_bytes(env, message);
    jbyteArray f = utf8_bytes(env, fix);
    if (!m || !f) return;   // OutOfMemoryError pending
    auto ex = static_cast<jthrowable>(env->NewObject(g_exception, g_exception_ctor, jint(code), m, f));
    if (ex) env->Throw(ex);
    env->DeleteLocalRef(m);
    env->DeleteLocalRef(f);
    if (ex) env->DeleteLocalRef(ex);
}

void throw_status(JNIEnv * env, fe_status st) { throw_error(env, st, fe_last_error(), fe_last_fix()); }

bool check_open(JNIEnv * env, Handle * h) {
    if (h && h->engine) return true;
    throw_error(env, FE_ERR_INVALID_ARGUMENT, "the FusionEdge handle is closed.", "open a new FusionEdge");
    return false;
}

// Pixels of a w x h frame, 0 for an empty one; false (exception thrown) above fe_look's limit,
// checked before the copies below allocate 3-4 bytes per pixel.
bool pixel_count(JNIEnv * env, jint w, jint hgt, size_t * n) {
    *n = (w > 0 && hgt > 0) ? size_t(w) * size_t(hgt) : 0;
    if (*n <= size_t(16384) * 16384) return true;
    throw_error(env, FE_ERR_IMAGE, "the image is larger than 16384x16384 pixels.", "downscale it");
    return false;
}

// One frame to fe_look: `px(i)` gives pixel i as 0xRRGGBB; packed RGB8 rows.
template <class Px>
void look(JNIEnv * env, Handle * h, jint w, jint hgt, size_t n, Px px) {
    std::vector<uint8_t> rgb;
    try {
        rgb.resize(3 * n + 1);   // +1: never a NULL pointer, fe_look reports the size itself
    } catch (const std::bad_alloc &) {
        throw_error(env, FE_ERR_BACKEND, "out of memory for the frame's RGB copy.", "pass a smaller frame");
        return;
    }
    for (size_t i = 0; i < n; ++i) {
        const uint32_t v = px(i);
        rgb[3 * i] = uint8_t(v >> 16), rgb[3 * i + 1] = uint8_t(v >> 8), rgb[3 * i + 2] = uint8_t(v);
    }
    const fe_status st = fe_look(h->engine, rgb.data(), w, hgt, w > 0 ? 3 * w : 0);
    if (st != FE_OK) throw_status(env, st);
}

// fe_ask's token callback: calls sink.token(int id, byte[] piece) → boolean stop.
struct Sink {
    JNIEnv * env;
    jobject sink;
    jmethodID token;
};

int on_token(int32_t id, const char * piece, void * user) {
    auto * s = static_cast<Sink *>(user);
    JNIEnv * env = s->env;
    jbyteArray p = utf8_bytes(env, piece);
    if (!p) return 1;
    const jboolean stop = env->CallBooleanMethod(s->sink, s->token, jint(id), p);
    const bool threw = env->ExceptionCheck();   // checked first: -Xcheck:jni wants it before any other call
    env->DeleteLocalRef(p);   // one local ref per token: the frame of fe_ask would otherwise hold them all
    return (threw || stop) ? 1 : 0;
}

}  // namespace

extern "C" {

JNIEXPORT jint JNI_OnLoad(JavaVM * vm, void *) {
    JNIEnv * env = nullptr;
    if (vm->GetEnv(reinterpret_cast<void **>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
    jclass c = env->FindClass("ai/fusionedge/FusionEdgeException");
    if (!c) return JNI_ERR;
    g_exception = static_cast<jclass>(env->NewGlobalRef(c));
    env->DeleteLocalRef(c);
    g_exception_ctor = env->GetMethodID(g_exception, "<init>", "(I[B[B)V");
    return g_exception_ctor ? JNI_VERSION_1_6 : JNI_ERR;
}

JNIEXPORT void JNI_OnUnload(JavaVM * vm, void *) {
    JNIEnv * env = nullptr;
    if (vm->GetEnv(reinterpret_cast<void **>(&env), JNI_VERSION_1_6) == JNI_OK && g_exception)
        env->DeleteGlobalRef(g_exception);
    g_exception = nullptr;
}

JNIEXPORT jlong JNICALL Java_ai_fusionedge_FusionEdge_nativeOpen(JNIEnv * env, jclass, jbyteArray dir, jint threads) {
    const jsize n = env->GetArrayLength(dir);
    std::string path(size_t(n), '\0');
    env->GetByteArrayRegion(dir, 0, n, reinterpret_cast<jbyte *>(&path[0]));
    auto * h = new (std::nothrow) Handle();
    if (!h) {
        throw_error(env, FE_ERR_BACKEND, "out of memory.", "free memory");
        return 0;
    }
    const fe_open_options o{threads, "cpu"};
    const fe_status st = fe_open(path.c_str(), &o, &h->engine);
    if (st != FE_OK) {
        delete h;
        throw_status(env, st);
        return 0;
    }
    return jlong(reinterpret_cast<intptr_t>(h));
}

JNIEXPORT void JNICALL Java_ai_fusionedge_FusionEdge_nativeLookArgb(JNIEnv * env, jclass, jlong hp, jintArray argb, jint w,
                                                                   jint hgt) {
    Handle * h = handle_of(hp);
    if (!check_open(env, h)) return;
    size_t n = 0;
    if (!pixel_count(env, w, hgt, &n)) return;
    if (size_t(env->GetArrayLength(argb)) < n) {
        throw_error(env, FE_ERR_IMAGE, "the ARGB array is shorter than width*height.", "pass width*height pixels");
        return;
    }
    jint * px = env->GetIntArrayElements(argb, nullptr);
    if (!px) return;
    // Copied, and the array released, before the long fe_look.
    std::vector<uint32_t> copy;
    bool oom = false;
    try {
        copy.assign(px, px + n);
    } catch (const std::bad_alloc &) {
        oom = true;
    }
    env->ReleaseIntArrayElements(argb, px, JNI_ABORT);
    if (oom) {
        throw_error(env, FE_ERR_BACKEND, "out of memory for the frame's copy.", "pass a smaller frame");
        return;
    }
    look(env, h, w, hgt, n, [&](size_t i) { return copy[i] & 0xFFFFFFu; });
}

JNIEXPORT void JNICALL Java_ai_fusionedge_FusionEdge_nativeLookRgba(JNIEnv * env, jclass, jlong hp, jobject buf, jint w,
                                                                   jint hgt) {
    Handle * h = handle_of(hp);
    if (!check_open(env, h)) return;
    const auto * p = static_cast<const uint8_t *>(env->GetDirectBufferAddress(buf));
    if (!p) {
        throw_error(env, FE_ERR_IMAGE, "the RGBA ByteBuffer is not a direct buffer.", "pass ByteBuffer.allocateDirect(4*width*height)");
        return;
    }
    size_t n = 0;
    if (!pixel_count(env, w, hgt, &n)) return;
    if (size_t(env->GetDirectBufferCapacity(buf)) < 4 * n) {
        throw_error(env, FE_ERR_IMAGE, "the RGBA buffer is smaller than 4*width*height bytes.", "pass width*height RGBA pixels");
        return;
    }
    look(env, h, w, hgt, n, [&](size_t i) { return uint32_t(p[4 * i]) << 16 | uint32_t(p[4 * i + 1]) << 8 | p[4 * i + 2]; });
}

// → the answer's token ids; streams each token to sink.token(id, piece) on this thread.
JNIEXPORT jintArray JNICALL Java_ai_fusionedge_FusionEdge_nativeAsk(JNIEnv * env, jclass, jlong hp, jbyteArray question,
                                                                   jint max_new_tokens, jobject sink) {
    Handle * h = handle_of(hp);
    if (!check_open(env, h)) return nullptr;
    const jsize n = env->GetArrayLength(question);
    std::string q(size_t(n), '\0');
    env->GetByteArrayRegion(question, 0, n, reinterpret_cast<jbyte *>(&q[0]));
    jclass sc = env->GetObjectClass(sink);
    Sink s{env, sink, env->GetMethodID(sc, "token", "(I[B)Z")};
    env->DeleteLocalRef(sc);
    if (!s.token) return nullptr;   // NoSuchMethodError pending
    fe_ask_options o{};
    o.max_new_tokens = max_new_tokens;
    const fe_status st = fe_ask(h->engine, q.c_str(), &o, on_token, &s, &h->cancel);
    if (env->ExceptionCheck()) return nullptr;   // the listener threw: it propagates to Java
    if (st != FE_OK) {
        throw_status(env, st);
        return nullptr;
    }
    int32_t count = 0;
    const int32_t * ids = fe_answer_token_ids(h->engine, &count);
    jintArray out = env->NewIntArray(count);
    if (out && count) env->SetIntArrayRegion(out, 0, count, reinterpret_cast<const jint *>(ids));
    return out;
}

JNIEXPORT jbyteArray JNICALL Java_ai_fusionedge_FusionEdge_nativeAnswerText(JNIEnv * env, jclass, jlong hp) {
    Handle * h = handle_of(hp);
    return check_open(env, h) ? utf8_bytes(env, fe_answer_text(h->engine)) : nullptr;
}

// → {preprocess_s, vision_global_s, vision_main_s, prefill_s, ttft_s, decode_s, decode_tokens_per_s,
//    prompt_tokens, new_tokens, query_len}
JNIEXPORT jdoubleArray JNICALL Java_ai_fusionedge_FusionEdge_nativeStats(JNIEnv * env, jclass, jlong hp) {
    Handle * h = handle_of(hp);
    if (!check_open(env, h)) return nullptr;
    fe_stats s{};
    const fe_status st = fe_get_stats(h->engine, &s);
    if (st != FE_OK) {
        throw_status(env, st);
        return nullptr;
    }
    const jdouble v[10] = {s.preprocess_s, s.vision_global_s, s.vision_main_s, s.prefill_s, s.ttft_s, s.decode_s,
                           s.decode_tokens_per_s, double(s.prompt_tokens), double(s.new_tokens), double(s.query_len)};
    jdoubleArray out = env->NewDoubleArray(10);
    if (out) env->SetDoubleArrayRegion(out, 0, 10, v);
    return out;
}

// Any thread: the running fe_ask stops before its next token (or inside the prefill).
JNIEXPORT void JNICALL Java_ai_fusionedge_FusionEdge_nativeCancel(JNIEnv *, jclass, jlong hp, jboolean on) {
    Handle * h = handle_of(hp);
    if (h) __atomic_store_n(const_cast<int32_t *>(&h->cancel), on ? 1 : 0, __ATOMIC_SEQ_CST);
}

JNIEXPORT void JNICALL Java_ai_fusionedge_FusionEdge_nativeClose(JNIEnv *, jclass, jlong hp) {
    Handle * h = handle_of(hp);
    if (!h) return;
    fe_close(h->engine);
    delete h;
#if defined(__GLIBC__)
    // Hands the engine's freed buffers back to the OS at once (glibc keeps them in the arena of
    // the thread that freed them; its mmap threshold grows with every large free). Measured on a
    // host JVM, tiny bundle, a fresh worker thread per handle: +60 MB RSS per open/ask/close
    // without the trim, a plateau at about +150 MB with it; FusionEdge's SerialWorker reuses
    // threads, which keeps RSS flat. Bionic (Android) needs neither.
    malloc_trim(0);
#endif
}

JNIEXPORT jbyteArray JNICALL Java_ai_fusionedge_FusionEdge_nativeVersion(JNIEnv * env, jclass) {
    return utf8_bytes(env, fe_version());
}

}  // extern "C"
