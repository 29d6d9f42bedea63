package ai.fusionedge;

import java.awt.image.BufferedImage;
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;

/**
 * Host test of the Java API over the JNI library (docs/android.md), run by CTest and by
 * tests/test_android_bridge.py (which compares ANSWER_IDS with the Python runtime's).
 *
 * Usage: FusionEdgeHostTest [BUNDLE [--image PNG] [--question Q] [--steps N] [--cycles N] [--max-growth-kib K]
 *                            [--soak-only]]
 * Without a bundle only the checks that need none run; --cycles 0 skips the memory soak,
 * --soak-only runs only it. Prints "ok"/"FAIL" lines, ANSWER_IDS,
 * ANSWER_TEXT_HEX (UTF-8), RSS_KIB, and "N failure(s)"; exit code 1 on a failure.
 */
public final class FusionEdgeHostTest {
    private static int failures = 0;
    private static final long WAIT_S = 300;

    private static void check(String what, boolean ok, String detail) {
        System.out.println((ok ? "ok   " : "FAIL ") + what + (ok || detail.isEmpty() ? "" : ": " + detail));
        if (!ok) failures++;
    }

    interface Call {
        void run() throws Exception;
    }

    /** call must throw FusionEdgeException with status, a message and a fix. */
    private static void expectError(String what, FusionEdgeException.Status status, Call call) {
        try {
            call.run();
            check(what, false, "no exception");
        } catch (FusionEdgeException e) {
            boolean ok = e.status() == status && !e.error().isEmpty() && !e.fix().isEmpty();
            check(what + " -> " + e.status() + " (" + e.error() + " | fix: " + e.fix() + ")", ok, "want " + status);
        } catch (Exception e) {
            check(what, false, "threw " + e);
        }
    }

    public static void main(String[] args) throws Exception {
        check("library loads, version " + FusionEdge.version(), !FusionEdge.version().isEmpty(), "");
        expectError("open: missing bundle", FusionEdgeException.Status.BUNDLE,
                    () -> FusionEdge.open("/nonexistent/fusion/bundle", 1));
        expectError("open: null folder", FusionEdgeException.Status.INVALID_ARGUMENT, () -> FusionEdge.open(null, 1));
        expectError("open: negative threads", FusionEdgeException.Status.INVALID_ARGUMENT,
                    () -> FusionEdge.open("/nonexistent", -1));
        expectError("openAsync: missing bundle", FusionEdgeException.Status.BUNDLE,
                    () -> FusionEdge.await(FusionEdge.openAsync("/nonexistent/fusion/bundle", 1)));
        if (args.length > 0) withBundle(args);
        System.out.println(failures + " failure(s)");
        System.exit(failures == 0 ? 0 : 1);
    }

    private static boolean flag(String[] args, String name) {
        return Arrays.asList(args).subList(1, args.length).contains(name);
    }

    private static String opt(String[] args, String name, String dflt) {
        for (int i = 1; i + 1 < args.length; i++) if (args[i].equals(name)) return args[i + 1];
        return dflt;
    }

    private static void withBundle(String[] args) throws Exception {
        String bundle = args[0];
        String question = opt(args, "--question", "What is on the table?");
        int steps = Integer.parseInt(opt(args, "--steps", "12"));
        int cycles = Integer.parseInt(opt(args, "--cycles", "100"));
        long maxGrowthKib = Long.parseLong(opt(args, "--max-growth-kib", "32768"));
        Frame img = Frame.load(opt(args, "--image", ""));
        if (!flag(args, "--soak-only")) functional(bundle, img, question, steps);
        if (cycles > 0) soak(bundle, img, question, cycles, maxGrowthKib);
    }

    private static void functional(String bundle, Frame img, String question, int steps) throws Exception {
        try (FusionEdge fe = FusionEdge.open(bundle, 1)) {
            expectError("ask before look", FusionEdgeException.Status.NO_IMAGE, () -> fe.askBlocking(question, 2, null));
            badImages(fe, img);
            fe.lookBlocking(img.argb, img.w, img.h);
            expectError("ask: blank question", FusionEdgeException.Status.PROMPT, () -> fe.askBlocking("   ", 2, null));
            expectError("ask: maxNewTokens 0", FusionEdgeException.Status.INVALID_ARGUMENT,
                        () -> fe.askBlocking(question, 0, null));
            int[] ids = streams(fe, question, steps);
            fe.lookBlocking(img.rgba(), img.w, img.h);
            int[] viaRgba = fe.askBlocking(question, steps, null).tokenIds;
            check("RGBA ByteBuffer frame gives the ARGB frame's ids", Arrays.equals(viaRgba, ids), Arrays.toString(viaRgba));
            cancels(fe, question, ids);
            listenerThatThrows(fe, question, ids);
        }
        FusionEdge closed = FusionEdge.open(bundle, 1);
        closed.close();
        closed.close();
        expectError("look after close", FusionEdgeException.Status.INVALID_ARGUMENT,
                    () -> closed.look(img.argb, img.w, img.h));
    }

    private static void badImages(FusionEdge fe, Frame img) {
        expectError("look: ARGB length != width*height", FusionEdgeException.Status.IMAGE,
                    () -> fe.look(img.argb, img.w + 1, img.h));
        expectError("look: RGBA size != 4*width*height", FusionEdgeException.Status.IMAGE,
                    () -> fe.look(ByteBuffer.allocateDirect(10), 2, 2));
        expectError("look: zero width (the C ABI's check)", FusionEdgeException.Status.IMAGE,
                    () -> fe.lookBlocking(new int[0], 0, 4));
        expectError("look: zero height, RGBA (the C ABI's check)", FusionEdgeException.Status.IMAGE,
                    () -> fe.lookBlocking(ByteBuffer.allocateDirect(0), 4, 0));
        expectError("look: negative size", FusionEdgeException.Status.IMAGE, () -> fe.look(new int[16], -4, -4));
        expectError("look: null pixels", FusionEdgeException.Status.INVALID_ARGUMENT, () -> fe.look((int[]) null, 4, 4));
    }

    /** ask() returns before the first token; tokens stream on the worker; the streamed = the answer. */
    private static int[] streams(FusionEdge fe, String question, int steps) throws Exception {
        CountDownLatch returned = new CountDownLatch(1);
        List<Integer> streamed = new ArrayList<>();
        StringBuilder text = new StringBuilder();
        AtomicReference<String> thread = new AtomicReference<>();
        AtomicReference<Answer> done = new AtomicReference<>();
        TokenListener l = new TokenListener() {
            @Override
            public void onToken(int id, String piece) {
                try {   // the first token waits until ask() has returned on the caller's thread
                    if (!returned.await(WAIT_S, TimeUnit.SECONDS)) throw new IllegalStateException("ask() did not return");
                } catch (InterruptedException e) {
                    throw new IllegalStateException(e);
                }
                thread.set(Thread.currentThread().getName());
                streamed.add(id);
                text.append(piece);
            }

            @Override
            public void onDone(Answer a) {
                done.set(a);
            }
        };
        long t0 = System.nanoTime();
        CompletableFuture<Answer> f = fe.ask(question, steps, l);
        double askMs = (System.nanoTime() - t0) / 1e6;
        check(String.format("ask() returns at once (%.1f ms), before the answer", askMs), !f.isDone() && askMs < 2000, "");
        returned.countDown();
        Answer a = FusionEdge.await(f);
        int[] ids = a.tokenIds;
        System.out.println("ANSWER_IDS" + Arrays.stream(ids).mapToObj(i -> " " + i).reduce("", String::concat));
        System.out.println("ANSWER_TEXT_HEX " + hex(a.text.getBytes(StandardCharsets.UTF_8)));
        check("tokens stream to the listener, on the worker thread (" + thread.get() + ")",
              streamed.equals(boxed(ids)) && !Thread.currentThread().getName().equals(thread.get()), streamed.toString());
        check("streamed pieces = the answer's text", text.toString().equals(a.text), text + " vs " + a.text);
        check("onDone gets the answer", done.get() == a, "");
        Stats st = fe.stats();
        check("stats: " + st, st != null && st.newTokens == ids.length && st.promptTokens > 0 && st.ttftS > 0, "");
        return ids;
    }

    /** cancel() from this thread while the worker is between tokens: at most one more token. */
    private static void cancels(FusionEdge fe, String question, int[] ids) throws Exception {
        check("the greedy answer is long enough to cancel (" + ids.length + " tokens)", ids.length >= 3, "");
        CountDownLatch first = new CountDownLatch(1);
        CountDownLatch cancelled = new CountDownLatch(1);
        AtomicInteger tokens = new AtomicInteger();
        AtomicInteger afterCancel = new AtomicInteger();
        AtomicInteger queuedTokens = new AtomicInteger();
        TokenListener l = (id, piece) -> {
            if (cancelled.getCount() == 0) afterCancel.incrementAndGet();
            if (tokens.incrementAndGet() == 1) {
                first.countDown();
                try {
                    cancelled.await(WAIT_S, TimeUnit.SECONDS);
                } catch (InterruptedException e) {
                    throw new IllegalStateException(e);
                }
            }
        };
        CompletableFuture<Answer> running = fe.ask(question, 64, l);
        check("first token arrives", first.await(WAIT_S, TimeUnit.SECONDS), "");
        CompletableFuture<Answer> queued = fe.ask(question, 64, (id, piece) -> queuedTokens.incrementAndGet());
        fe.cancel();
        cancelled.countDown();
        expectError("cancel stops the running answer (" + tokens.get() + " token(s) streamed, " + afterCancel.get()
                    + " after cancel)", FusionEdgeException.Status.CANCELLED, () -> FusionEdge.await(running));
        check("cancel: at most one token after cancel() (" + afterCancel.get() + ")", afterCancel.get() <= 1, "");
        expectError("cancel also drops the answer queued before it", FusionEdgeException.Status.CANCELLED,
                    () -> FusionEdge.await(queued));
        check("the queued answer streamed nothing", queuedTokens.get() == 0, "" + queuedTokens.get());
        int[] again = fe.askBlocking(question, ids.length, null).tokenIds;
        check("after a cancel the next answer is the same", Arrays.equals(again, ids), Arrays.toString(again));
    }

    private static void listenerThatThrows(FusionEdge fe, String question, int[] ids) throws Exception {
        AtomicInteger n = new AtomicInteger();
        expectError("a listener that throws stops the answer", FusionEdgeException.Status.INTERNAL,
                    () -> fe.askBlocking(question, 64, (id, piece) -> {
                        n.incrementAndGet();
                        throw new IllegalStateException("listener bug");
                    }));
        check("... after its first token", n.get() == 1, "" + n.get());
        check("... and the next answer works", Arrays.equals(fe.askBlocking(question, ids.length, null).tokenIds, ids), "");
    }

    /** cycles x (open, look, ask 2 tokens, close) after a warm-up: VmRSS must not grow. */
    private static void soak(String bundle, Frame img, String question, int cycles, long maxGrowthKib)
        throws Exception {
        int warmup = 3;
        long t0 = System.nanoTime();
        long before = 0;
        for (int i = 0; i < warmup + cycles; i++) {
            if (i == warmup) before = settledRssKib();
            if (i >= warmup && (i - warmup) % 10 == 0) System.out.printf("rss after %d cycles: %d KiB%n", i - warmup,
                                                                          procStatusKib("VmRSS"));
            try (FusionEdge fe = FusionEdge.open(bundle, 1)) {
                fe.lookBlocking(img.argb, img.w, img.h);
                fe.askBlocking(question, 2, null);
            }
        }
        long after = settledRssKib();
        double s = (System.nanoTime() - t0) / 1e9;
        System.out.printf("RSS_KIB before=%d after=%d growth=%d peak=%d cycles=%d seconds=%.1f%n", before, after,
                          after - before, procStatusKib("VmHWM"), cycles, s);
        check(String.format("%d open/look/ask/close cycles: VmRSS %d -> %d KiB (growth %d KiB <= %d)", cycles, before,
                            after, after - before, maxGrowthKib), after - before <= maxGrowthKib, "");
    }

    private static long settledRssKib() throws Exception {
        for (int i = 0; i < 3; i++) {
            System.gc();
            Thread.sleep(50);
        }
        return procStatusKib("VmRSS");
    }

    private static long procStatusKib(String key) throws Exception {
        for (String line : Files.readAllLines(Paths.get("/proc/self/status")))
            if (line.startsWith(key + ":")) return Long.parseLong(line.replaceAll("[^0-9]", ""));
        throw new IllegalStateException("no " + key + " in /proc/self/status");
    }

    private static List<Integer> boxed(int[] a) {
        List<Integer> l = new ArrayList<>();
        for (int v : a) l.add(v);
        return l;
    }

    private static String hex(byte[] b) {
        StringBuilder s = new StringBuilder();
        for (byte x : b) s.append(String.format("%02x", x));
        return s.toString();
    }

    /** A frame as ARGB ints (what Bitmap.getPixels gives); a PNG, or a drawn pattern. */
    private static final class Frame {
        final int[] argb;
        final int w, h;

        Frame(int[] argb, int w, int h) {
            this.argb = argb;
            this.w = w;
            this.h = h;
        }

        static Frame load(String png) throws Exception {
            if (png.isEmpty()) {
                int w = 320, h = 240;
                int[] px = new int[w * h];
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++) px[y * w + x] = 0xFF000000 | (x * 255 / w) << 16 | (y * 255 / h) << 8 | 96;
                return new Frame(px, w, h);
            }
            BufferedImage im = javax.imageio.ImageIO.read(new File(png));
            if (im == null) throw new IllegalArgumentException("cannot read " + png);
            int w = im.getWidth(), h = im.getHeight();
            return new Frame(im.getRGB(0, 0, w, h, null, 0, w), w, h);
        }

        /** The RGBA bytes Bitmap.copyPixelsToBuffer gives for ARGB_8888. */
        ByteBuffer rgba() {
            ByteBuffer b = ByteBuffer.allocateDirect(4 * argb.length);
            for (int v : argb) b.put((byte) (v >> 16)).put((byte) (v >> 8)).put((byte) v).put((byte) (v >>> 24));
            b.flip();
            return b;
        }
    }
}
