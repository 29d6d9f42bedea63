// fusion-edge camera QA — the page's script. Plain JS, no build step.
// Talks to the app over one web socket (questions, answers streamed token by token, status)
// and plain HTTP (live frames, photo uploads). See server.py for the protocol.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MAX_ANSWERS = 50, MAX_WATCH = 10, FRAME_MIN_MS = 100;   // ≤ 10 live-view fps

  // ---- access token: from ?token= once, then kept for this tab (the server also sets a cookie)
  const params = new URLSearchParams(location.search);
  let token = params.get("token") || sessionStorage.getItem("fe-token") || "";
  if (params.get("token")) {
    sessionStorage.setItem("fe-token", token);
    history.replaceState(null, "", location.pathname);        // keep the token out of the address bar
  }
  const base = location.pathname.replace(/[^/]*$/, "");        // app root (works behind a path prefix)
  const auth = () => (token ? { Authorization: "Bearer " + token } : {});

  const S = {
    ws: null, retry: 0, jobs: new Map(), frozen: false, frameKey: "", watchOn: false,
    limits: {}, lastAsked: "", frameTimes: [], connected: false, source: null,
  };

  // ---- messages to the person -----------------------------------------------------------------
  let toastTimer = 0;
  function toast(message, fix, info) {
    const t = $("toast");
    t.textContent = message;
    if (fix) { const s = document.createElement("span"); s.className = "fix"; s.textContent = fix; t.appendChild(s); }
    t.classList.toggle("info", !!info);
    t.classList.remove("hidden");
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => t.classList.add("hidden"), info ? 3500 : 7000);
  }
  const fmtS = (x) => (x == null ? "–" : x < 1 ? `${Math.round(x * 1000)} ms` : `${x.toFixed(2)} s`);

  // ---- web socket -------------------------------------------------------------------------------
  function connect() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    const ws = new WebSocket(`${proto}//${location.host}${base}ws` + (token ? `?token=${encodeURIComponent(token)}` : ""));
    S.ws = ws;
    ws.onopen = () => { S.retry = 0; S.connected = true; renderSource(); };
    ws.onmessage = (m) => { try { handle(JSON.parse(m.data)); } catch (e) { console.error(e); } };
    ws.onclose = () => {
      S.ws = null; S.connected = false; renderSource();
      setTimeout(connect, Math.min(10000, 500 * 2 ** S.retry++));
    };
  }
  function send(msg) {
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) {
      toast("Not connected to the camera app.", "Reconnecting… try again in a moment.");
      return false;
    }
    S.ws.send(JSON.stringify(msg));
    return true;
  }

  function handle(ev) {
    switch (ev.type) {
      case "state": return renderState(ev.state);
      case "job": case "end": return upsert(ev.job);
      case "token": return appendToken(ev.id, ev.text);
      case "source": S.source = ev.source; return renderSource();
      case "freeze": return renderFreeze(ev.freeze);
      case "watch": return renderWatch(ev.watch);
      case "notice": return toast(ev.message, null, true);
      case "error":
        if (ev.request === "ask" && !$("question").value) $("question").value = S.lastAsked;
        return toast(ev.message, ev.fix);
    }
  }

  function renderState(st) {
    S.limits = st.limits || {};
    if (S.limits.max_question_chars) $("question").maxLength = S.limits.max_question_chars;
    const devs = st.model.devices || {};
    $("model-pill").textContent = `${st.model.backend} · vision ${devs.vision} · align ${devs.align} · llm ${devs.llm}`;
    const warn = $("verify-warning");
    warn.hidden = !st.model.warning;
    warn.textContent = st.model.warning ? `⚠ ${st.model.warning}` : "";
    S.source = st.source; renderSource();
    renderFreeze(st.freeze);
    $("answers").replaceChildren(); $("watch-list").replaceChildren(); S.jobs.clear();
    for (const job of st.history) upsert(job);
    renderWatch(st.watch);
    for (const job of [st.queue.running, st.queue.waiting]) if (job) upsert(job);
  }

  // ---- answers ------------------------------------------------------------------------------------
  const STATE_LABEL = { queued: "waiting", running: "answering", done: "done", cancelled: "stopped", error: "error" };

  function upsert(job) {
    let entry = S.jobs.get(job.id);
    if (!entry) {
      const el = $("answer-tpl").content.firstElementChild.cloneNode(true);
      el.dataset.id = job.id;
      el.querySelector(".cancel").onclick = () => send({ type: "cancel", id: job.id });
      const list = job.kind === "watch" ? $("watch-list") : $("answers");
      list.prepend(el);
      trim(list, job.kind === "watch" ? MAX_WATCH : MAX_ANSWERS);
      entry = { el, text: "" };
      S.jobs.set(job.id, entry);
    }
    const el = entry.el;
    el.className = `answer ${job.state} ${job.kind}`;
    el.querySelector(".thumb").src = job.thumb;
    el.querySelector(".q").textContent = job.question;
    if (job.text.length >= entry.text.length || job.state !== "running") entry.text = job.text;
    const a = el.querySelector(".a");
    a.textContent = job.state === "error" ? job.error + (job.fix ? ` — ${job.fix}` : "") : entry.text;
    el.querySelector(".state").textContent = STATE_LABEL[job.state] || job.state;
    el.querySelector(".stats").textContent = statsLine(job);
    el.title = `frame ${job.frame.key} · ${new Date(job.frame.time * 1000).toLocaleTimeString()}`;
    renderQueueNote();
    $("answers-empty").classList.toggle("hidden", $("answers").children.length > 0);
    $("answers-count").textContent = $("answers").children.length ? `${$("answers").children.length}` : "";
  }

  function appendToken(id, text) {
    const entry = S.jobs.get(id);
    if (!entry) return;
    entry.text += text;
    entry.el.querySelector(".a").textContent = entry.text;
  }

  function statsLine(job) {
    const s = job.stats || {};
    if (job.state === "queued") return "waits for the running answer";
    if (!("prefill_s" in s)) return job.state === "running" ? "reading the frame…" : "";
    const parts = [`vision ${fmtS(s.vision_s)}`, `prefill ${fmtS(s.prefill_s)}`, `decode ${fmtS(s.decode_s)}`,
      `${(s.tokens_per_s || 0).toFixed(1)} tok/s`, `${s.new_tokens} tok`];
    if (s.scene_cached) parts.push("cached frame");
    return parts.join(" · ");
  }

  function trim(list, max) {
    while (list.children.length > max) {
      const last = list.lastElementChild;
      S.jobs.delete(last.dataset.id);
      last.remove();
    }
  }

  function renderQueueNote() {
    const waiting = [...S.jobs.values()].filter((e) => e.el.classList.contains("queued"));
    const note = $("queue-note");
    note.textContent = waiting.length ? "1 question waiting — it runs when the current answer ends." : "";
    note.classList.toggle("hidden", !waiting.length);
  }

  // ---- source, freeze, watch ----------------------------------------------------------------------
  function renderSource() {
    const pill = $("source-pill");
    const st = S.source;
    if (!S.connected) { pill.className = "pill bad"; pill.textContent = "disconnected — reconnecting…"; return; }
    if (!st) return;
    const cls = { live: "ok", retrying: "bad", stalled: "warn", stopped: "bad" }[st.state] || "muted";
    pill.className = `pill ${cls}`;
    pill.textContent = st.state === "live" ? `● ${st.label}`
      : st.state === "retrying" ? `⚠ ${st.message} (retry in ${st.retry_in.toFixed(1)} s)` : st.message;
    pill.title = st.fix ? `${st.message} — ${st.fix}` : st.message;
    if (st.state !== "live" && !S.frozen) showOverlay(st.message, st.fix);
  }

  function showOverlay(text, fix) {
    $("overlay-text").textContent = text;
    $("overlay-fix").textContent = fix || "";
    $("view-overlay").classList.remove("hidden");
  }

  function renderFreeze(f) {
    S.frozen = !!f.on;
    const btn = $("freeze");
    btn.setAttribute("aria-pressed", String(S.frozen));
    btn.querySelector(".label").textContent = S.frozen ? "Frozen — back to live" : "Freeze frame";
    const badge = $("view-badge");
    const photo = S.frozen && f.origin === "upload";
    badge.className = "badge " + (photo ? "photo" : S.frozen ? "frozen" : "live");
    badge.textContent = photo ? "PHOTO" : S.frozen ? "FROZEN" : "LIVE";
    $("question").placeholder = photo ? "Ask about this photo…" : S.frozen ? "Ask about this frozen frame…"
      : "Ask about what the camera sees…";
  }

  function renderWatch(w) {
    S.watchOn = !!w.on;
    const btn = $("watch-btn");
    btn.textContent = S.watchOn ? "Stop watching" : "Start watching";
    btn.setAttribute("aria-pressed", String(S.watchOn));
    $("watch-state").textContent = S.watchOn ? `every ${w.interval} s` : "off";
    const q = $("watch-question");
    if (w.question && document.activeElement !== q) q.value = w.question;
    const sel = $("watch-interval");
    if (![...sel.options].some((o) => Number(o.value) === w.interval)) sel.add(new Option(`${w.interval} s`, w.interval));
    sel.value = String([...sel.options].find((o) => Number(o.value) === w.interval).value);
    for (const job of w.answers || []) if (!S.jobs.has(job.id)) upsert(job);
  }

  // ---- live view: fetch the newest frame, at most every FRAME_MIN_MS --------------------------------
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  async function frameLoop() {
    const img = $("live");
    for (;;) {
      if (document.hidden) { await sleep(500); continue; }
      const t0 = performance.now();
      try {
        const r = await fetch(`${base}api/frame.jpg?after=${encodeURIComponent(S.frameKey)}`,
          { headers: auth(), cache: "no-store" });
        if (r.status === 200) {
          const url = URL.createObjectURL(await r.blob());
          const old = img.src;
          await new Promise((ok) => { img.onload = img.onerror = ok; img.src = url; });
          if (old.startsWith("blob:")) URL.revokeObjectURL(old);
          S.frameKey = r.headers.get("x-frame-key") || "";
          img.dataset.key = S.frameKey;
          img.dataset.seq = r.headers.get("x-frame-seq") || "0";
          frameInfo(r.headers.get("x-frame-origin"));
          $("view-overlay").classList.add("hidden");
        } else if (r.status !== 204) {
          const e = await r.json().catch(() => ({}));
          showOverlay(e.error || `the app answered ${r.status}`, e.fix);
          await sleep(1000);
        }
      } catch (e) {
        await sleep(1000);
      }
      const dt = performance.now() - t0;
      if (dt < FRAME_MIN_MS) await sleep(FRAME_MIN_MS - dt);
    }
  }

  function frameInfo(origin) {
    const now = performance.now();
    S.frameTimes = S.frameTimes.filter((t) => now - t < 3000).concat(now);
    const fps = S.frameTimes.length > 1 ? (S.frameTimes.length - 1) / ((now - S.frameTimes[0]) / 1000) : 0;
    const seq = $("live").dataset.seq;
    $("frame-info").textContent = origin === "upload" ? "uploaded photo" : S.frozen ? `frame #${seq}`
      : `frame #${seq} · ${fps.toFixed(1)} fps`;
  }

  // ---- controls ---------------------------------------------------------------------------------------
  $("ask-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const q = $("question").value.trim();
    if (!q) return toast("Type a question first.", null, true);
    if (send({ type: "ask", question: q })) { S.lastAsked = q; $("question").value = ""; }
  });
  $("freeze").addEventListener("click", () => send({ type: "freeze", on: !S.frozen }));
  $("watch-form").addEventListener("submit", (e) => {
    e.preventDefault();
    if (S.watchOn) return send({ type: "watch", on: false });
    send({ type: "watch", on: true, question: $("watch-question").value, interval: Number($("watch-interval").value) });
  });
  $("upload").addEventListener("change", async (e) => {
    const file = e.target.files[0];
    e.target.value = "";
    if (!file) return;
    if (S.limits.max_upload_bytes && file.size > S.limits.max_upload_bytes) {
      return toast(`The photo is ${(file.size / 1e6).toFixed(1)} MB; the limit is ${(S.limits.max_upload_bytes / 1e6).toFixed(1)} MB.`,
        "Choose a smaller photo.");
    }
    try {
      const r = await fetch(`${base}api/upload`, {
        method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream", ...auth() } });
      if (!r.ok) { const err = await r.json().catch(() => ({})); return toast(err.error || `upload failed (${r.status})`, err.fix); }
      toast("Photo loaded — ask about it. Press “Frozen — back to live” to return to the camera.", null, true);
      $("question").focus();
    } catch (err) {
      toast("The upload did not reach the app.", "Check the connection and try again.");
    }
  });

  connect();
  frameLoop();
})();
