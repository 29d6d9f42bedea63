package ai.fusionedge;

/** Timings of the last look/ask (the C ABI's fe_stats; seconds, tokens). */
public final class Stats {
    public final double preprocessS, visionGlobalS, visionMainS, prefillS, ttftS, decodeS, decodeTokensPerS;
    public final int promptTokens, newTokens, queryLen;

    /** v: fe_stats in field order (nativeStats). */
    Stats(double[] v) {
        preprocessS = v[0];
        visionGlobalS = v[1];
        visionMainS = v[2];
        prefillS = v[3];
        ttftS = v[4];
        decodeS = v[5];
        decodeTokensPerS = v[6];
        promptTokens = (int) v[7];
        newTokens = (int) v[8];
        queryLen = (int) v[9];
    }

    @Override
    public String toString() {
        return String.format("ttft %.3f s (preprocess %.3f, vision global %.3f, vision main %.3f, prefill %.3f), "
                             + "decode %.1f tok/s, %d prompt + %d new tokens, q=%d", ttftS, preprocessS, visionGlobalS,
                             visionMainS, prefillS, decodeTokensPerS, promptTokens, newTokens, queryLen);
    }
}
