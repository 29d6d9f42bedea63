package ai.fusionedge;

/**
 * Receives an answer as it is generated. Every method runs on the FusionEdge's worker thread
 * (on Android: post to the main thread to touch views). A listener that throws stops the answer.
 */
public interface TokenListener {
    /** One generated token and the text it completes (UTF-8 safe; may be ""). */
    void onToken(int tokenId, String piece);

    /** The whole answer, after the last token. */
    default void onDone(Answer answer) {}

    /** The answer failed or was cancelled (status CANCELLED). */
    default void onError(FusionEdgeException error) {}
}
