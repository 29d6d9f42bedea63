package ai.fusionedge;

import java.util.ArrayDeque;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.RejectedExecutionException;

/**
 * Runs one FusionEdge's jobs in order, one at a time, on threads of a pool shared by every
 * FusionEdge. The pool keeps idle threads for a minute, so a new FusionEdge reuses the last
 * one's thread: with a fresh thread per handle, glibc gave each its own malloc arena and a host
 * JVM's RSS rose by ~15 MB per open/ask/close on the tiny bundle up to a plateau ~150 MB higher;
 * with reused threads it stays flat (tests/test_android_bridge.py measures it).
 */
final class SerialWorker {
    private static final ExecutorService POOL = Executors.newCachedThreadPool(r -> {
        Thread t = new Thread(r, "fusion-edge-worker");
        t.setDaemon(true);
        return t;
    });

    private final ArrayDeque<Runnable> queue = new ArrayDeque<>();
    private boolean draining;     // a pool thread is running this worker's queue
    private boolean shutdown;
    private volatile Thread current;

    void execute(Runnable job) {
        synchronized (queue) {
            if (shutdown) throw new RejectedExecutionException("shut down");
            queue.add(job);
            if (draining) return;
            draining = true;
        }
        POOL.execute(this::drain);
    }

    private void drain() {
        current = Thread.currentThread();
        while (true) {
            Runnable job;
            synchronized (queue) {
                job = queue.poll();
                if (job == null) {
                    current = null;
                    draining = false;
                    queue.notifyAll();
                    return;
                }
            }
            job.run();   // FusionEdge's jobs catch their failures and put them in their futures
        }
    }

    boolean isCurrentThread() {
        return current == Thread.currentThread();
    }

    /** No new jobs; the queued ones still run. */
    void shutdown() {
        synchronized (queue) {
            shutdown = true;
        }
    }

    /** Waits until the queue is empty and idle; → whether the wait was interrupted. */
    boolean awaitTermination() {
        boolean interrupted = false;
        synchronized (queue) {
            while (draining || !queue.isEmpty()) {
                try {
                    queue.wait();
                } catch (InterruptedException e) {
                    interrupted = true;
                }
            }
        }
        return interrupted;
    }
}
