package ai.fusionedge;

import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.atomic.AtomicLong;

/**
 * FUSION on a gguf bundle through libfusion_edge (docs/android.md).
 *
 * <pre>
 * try (FusionEdge fe = FusionEdge.open(bundleDir, 4)) {
 *     fe.look(argbPixels, width, height);                 // queued; returns at once
 *     fe.ask("What is on the table?", 64, (id, piece) -> show(piece));
 * }
 * </pre>
 *
 * Threads: look and ask return at once; the work runs in order on a worker thread (one at a
 * time per FusionEdge, from a pool shared by all of them, see {@link SerialWorker}), which also
 * calls the {@link TokenListener}. The returned futures (or the *Blocking
 * variants) give the result. {@link #cancel()} may be called from any thread. Only
 * {@link #open} and {@link #close()} block (loading the bundle; waiting for the running token).
 */
public final class FusionEdge implements AutoCloseable {
    static {
        System.loadLibrary("fusion_edge_jni");
    }

    private final Object lock = new Object();
    private final AtomicLong cancelEpoch = new AtomicLong();
    private final SerialWorker worker = new SerialWorker();
    private long handle;                  // freed by close() only after the worker has stopped
    private volatile boolean closed;
    private volatile Stats lastStats;

    private FusionEdge(long handle) {
        this.handle = handle;
    }

    /** Opens a gguf bundle folder (blocking: it loads the model). threads: 0 = all cores. */
    public static FusionEdge open(String bundleDir, int threads) throws FusionEdgeException {
        if (bundleDir == null) throw invalid("bundleDir is null.", "pass the bundle folder's path");
        return new FusionEdge(nativeOpen(bundleDir.getBytes(StandardCharsets.UTF_8), threads));
    }

    /** {@link #open} on a background thread. */
    public static CompletableFuture<FusionEdge> openAsync(String bundleDir, int threads) {
        CompletableFuture<FusionEdge> f = new CompletableFuture<>();
        Thread t = new Thread(() -> {
            try {
                f.complete(open(bundleDir, threads));
            } catch (FusionEdgeException | RuntimeException e) {
                f.completeExceptionally(e);
            }
        }, "fusion-edge-open");
        t.setDaemon(true);
        t.start();
        return f;
    }

    public static String version() {
        return new String(nativeVersion(), StandardCharsets.UTF_8);
    }

    /**
     * Queues one frame as ARGB ints (Bitmap.getPixels, BufferedImage.getRGB): width*height pixels,
     * rows top first. The pixels are copied before this returns.
     */
    public CompletableFuture<Void> look(int[] argbPixels, int width, int height) throws FusionEdgeException {
        checkOpen();
        if (argbPixels == null) throw invalid("argbPixels is null.", "pass the frame's pixels");
        if ((long) width * height != argbPixels.length || width < 0)
            throw badImage("the ARGB array has " + argbPixels.length + " pixels, not width*height = " + width + "*"
                           + height + ".", "pass width*height pixels (Bitmap.getPixels(px, 0, w, 0, 0, w, h))");
        int[] copy = argbPixels.clone();
        return submit(null, () -> {
            nativeLookArgb(handle, copy, width, height);
            lastStats = new Stats(nativeStats(handle));
            return null;
        });
    }

    /**
     * Queues one frame as RGBA bytes (Bitmap.copyPixelsToBuffer of an ARGB_8888 bitmap): the
     * buffer's remaining 4*width*height bytes, rows top first. Copied before this returns; the
     * buffer's position is not moved.
     */
    public CompletableFuture<Void> look(ByteBuffer rgba, int width, int height) throws FusionEdgeException {
        checkOpen();
        if (rgba == null) throw invalid("rgba is null.", "pass the frame's pixels");
        if (4L * width * height != rgba.remaining() || width < 0)
            throw badImage("the RGBA buffer has " + rgba.remaining() + " bytes, not 4*width*height = 4*" + width + "*"
                           + height + ".", "pass width*height RGBA pixels (Bitmap.copyPixelsToBuffer)");
        ByteBuffer copy = ByteBuffer.allocateDirect(Math.max(rgba.remaining(), 1));
        copy.put(rgba.duplicate());
        return submit(null, () -> {
            nativeLookRgba(handle, copy, width, height);
            lastStats = new Stats(nativeStats(handle));
            return null;
        });
    }

    /**
     * Queues a question about the last frame; tokens stream to listener (may be null) on the
     * worker thread. Greedy decoding: the same token ids as the Python runtime.
     */
    public CompletableFuture<Answer> ask(String question, int maxNewTokens, TokenListener listener)
        throws FusionEdgeException {
        checkOpen();
        if (question == null) throw invalid("question is null.", "pass a question");
        if (question.indexOf('\0') >= 0)
            throw new FusionEdgeException(FusionEdgeException.Status.PROMPT, "the question contains a NUL character.",
                                          "remove it");
        if (maxNewTokens < 1) throw invalid("maxNewTokens is " + maxNewTokens + ".", "pass 1 or more");
        byte[] q = question.getBytes(StandardCharsets.UTF_8);
        long epoch = cancelEpoch.get();
        return submit(listener, () -> {
            nativeCancel(handle, false);
            if (cancelEpoch.get() != epoch) throw cancelled();   // cancel() came while it was queued
            int[] ids = nativeAsk(handle, q, maxNewTokens, new Sink(listener));
            Stats st = new Stats(nativeStats(handle));
            lastStats = st;
            Answer a = new Answer(new String(nativeAnswerText(handle), StandardCharsets.UTF_8), ids, st);
            if (listener != null) listener.onDone(a);
            return a;
        });
    }

    public void lookBlocking(int[] argbPixels, int width, int height) throws FusionEdgeException {
        await(look(argbPixels, width, height));
    }

    public void lookBlocking(ByteBuffer rgba, int width, int height) throws FusionEdgeException {
        await(look(rgba, width, height));
    }

    public Answer askBlocking(String question, int maxNewTokens, TokenListener listener) throws FusionEdgeException {
        return await(ask(question, maxNewTokens, listener));
    }

    /**
     * Stops the running answer before its next token (or inside its prefill), and the answers
     * queued before this call; their futures fail with status CANCELLED. Any thread.
     */
    public void cancel() {
        cancelEpoch.incrementAndGet();
        synchronized (lock) {
            if (handle != 0) nativeCancel(handle, true);
        }
    }

    /** Timings of the last finished look or ask; null before the first. */
    public Stats stats() {
        return lastStats;
    }

    /** Cancels, waits for the worker (at most the running token), frees the native runtime. */
    @Override
    public void close() {
        if (worker.isCurrentThread())
            throw new IllegalStateException("FusionEdge.close() from its own worker thread (a TokenListener) would "
                                            + "wait for itself: call cancel() there, close() elsewhere");
        synchronized (lock) {
            if (closed) return;
            closed = true;
        }
        cancel();
        worker.shutdown();
        boolean interrupted = worker.awaitTermination();
        synchronized (lock) {
            nativeClose(handle);
            handle = 0;
        }
        if (interrupted) Thread.currentThread().interrupt();
    }

    /** f's value, or its failure as a FusionEdgeException (blocks). */
    public static <T> T await(CompletableFuture<T> f) throws FusionEdgeException {
        try {
            return f.get();
        } catch (ExecutionException e) {
            throw unwrap(e);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            throw new FusionEdgeException(FusionEdgeException.Status.CANCELLED, "interrupted while waiting.",
                                          "do not interrupt the waiting thread, or call cancel()");
        }
    }

    // ---- internals ------------------------------------------------------------------------

    private interface Job<T> {
        T run() throws FusionEdgeException;
    }

    /** Called by JNI for each token (nativeAsk, on the worker thread); true stops the answer. */
    static final class Sink {
        private final TokenListener listener;

        Sink(TokenListener listener) {
            this.listener = listener;
        }

        boolean token(int id, byte[] piece) {
            if (listener != null) listener.onToken(id, new String(piece, StandardCharsets.UTF_8));
            return false;
        }
    }

    /** Runs job on the worker; its failure fails the future and goes to listener.onError. */
    private <T> CompletableFuture<T> submit(TokenListener listener, Job<T> job) throws FusionEdgeException {
        CompletableFuture<T> f = new CompletableFuture<>();
        Runnable r = () -> {
            try {
                if (closed) throw closedError();
                f.complete(job.run());
            } catch (FusionEdgeException | RuntimeException | Error e) {
                FusionEdgeException fe = unwrap(e);
                try {
                    if (listener != null) listener.onError(fe);
                } finally {
                    f.completeExceptionally(fe);
                }
            }
        };
        try {
            worker.execute(r);
        } catch (RejectedExecutionException e) {
            throw closedError();
        }
        return f;
    }

    private void checkOpen() throws FusionEdgeException {
        if (closed) throw closedError();
    }

    private static FusionEdgeException unwrap(Throwable e) {
        while ((e instanceof CompletionException || e instanceof ExecutionException) && e.getCause() != null)
            e = e.getCause();
        if (e instanceof FusionEdgeException) return (FusionEdgeException) e;
        FusionEdgeException fe = new FusionEdgeException(FusionEdgeException.Status.INTERNAL,
                                                         "the answer failed: " + e, "see the cause (a TokenListener that threw?)");
        fe.initCause(e);
        return fe;
    }

    private static FusionEdgeException invalid(String error, String fix) {
        return new FusionEdgeException(FusionEdgeException.Status.INVALID_ARGUMENT, error, fix);
    }

    private static FusionEdgeException badImage(String error, String fix) {
        return new FusionEdgeException(FusionEdgeException.Status.IMAGE, error, fix);
    }

    private static FusionEdgeException closedError() {
        return invalid("this FusionEdge is closed.", "open a new one with FusionEdge.open");
    }

    private static FusionEdgeException cancelled() {
        return new FusionEdgeException(FusionEdgeException.Status.CANCELLED, "the answer was cancelled.",
                                       "ask again");
    }

    private static native long nativeOpen(byte[] bundleDirUtf8, int threads) throws FusionEdgeException;

    private static native void nativeLookArgb(long handle, int[] argb, int width, int height) throws FusionEdgeException;

    private static native void nativeLookRgba(long handle, ByteBuffer rgba, int width, int height)
        throws FusionEdgeException;

    private static native int[] nativeAsk(long handle, byte[] questionUtf8, int maxNewTokens, Sink sink)
        throws FusionEdgeException;

    private static native byte[] nativeAnswerText(long handle) throws FusionEdgeException;

    private static native double[] nativeStats(long handle) throws FusionEdgeException;

    private static native void nativeCancel(long handle, boolean on);

    private static native void nativeClose(long handle);

    private static native byte[] nativeVersion();
}
