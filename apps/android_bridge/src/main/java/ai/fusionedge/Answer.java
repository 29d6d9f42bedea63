package ai.fusionedge;

/** One answer: its text, its token ids and the timings of the question. */
public final class Answer {
    public final String text;
    public final int[] tokenIds;
    public final Stats stats;

    Answer(String text, int[] tokenIds, Stats stats) {
        this.text = text;
        this.tokenIds = tokenIds;
        this.stats = stats;
    }
}
