package ai.fusionedge;

import java.nio.charset.StandardCharsets;

/** A failure of the native runtime or of the bridge: the C ABI's status, message and fix. */
public final class FusionEdgeException extends Exception {
    /** The C ABI's fe_status values (include/fusion_edge.h), in order. */
    public enum Status { OK, INVALID_ARGUMENT, BUNDLE, IMAGE, PROMPT, NO_IMAGE, DEVICE, BACKEND, CANCELLED, INTERNAL }

    private final Status status;
    private final String error;
    private final String fix;

    public FusionEdgeException(Status status, String error, String fix) {
        super(error + "\nfix: " + fix);
        this.status = status;
        this.error = error;
        this.fix = fix;
    }

    /** From JNI: the fe_status code and fe_last_error() / fe_last_fix() as UTF-8. */
    FusionEdgeException(int code, byte[] error, byte[] fix) {
        this(code >= 0 && code < Status.values().length ? Status.values()[code] : Status.INTERNAL,
             new String(error, StandardCharsets.UTF_8), new String(fix, StandardCharsets.UTF_8));
    }

    public Status status() { return status; }

    /** What went wrong (fe_last_error). */
    public String error() { return error; }

    /** What to do about it (fe_last_fix). */
    public String fix() { return fix; }
}
