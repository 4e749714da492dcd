// Yurt's web UI: live pages and followed logs, with nothing but the browser's own fetch.
// A live page asks its own URL with ?fragment=1&index=N: a blocking query that answers when what
// the page shows changed (or after a minute), then swaps the page's changing part in place.
(function () {
  "use strict";

  function token() {
    const m = document.cookie.match(/(?:^|;\s*)yurt-ui-token=([^;]*)/);
    return m ? decodeURIComponent(m[1]) : "";
  }

  function headers() {
    const t = token();
    return t ? { "X-Nomad-Token": t } : {};
  }

  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

  async function live() {
    const box = document.getElementById("live");
    const state = document.getElementById("live-state");
    if (!box || !document.body.dataset.live) return;
    let index = parseInt(box.dataset.index || "1", 10) || 1;
    for (;;) {
      const url = new URL(window.location.href);
      url.searchParams.set("fragment", "1");
      url.searchParams.set("index", String(index));
      url.searchParams.delete("token");
      try {
        const resp = await fetch(url, { credentials: "same-origin", cache: "no-store" });
        if (resp.status === 403 || resp.status === 404) { window.location.reload(); return; }
        if (!resp.ok) throw new Error("HTTP " + resp.status);
        const next = parseInt(resp.headers.get("X-Yurt-Index") || "0", 10);
        const text = await resp.text();
        if (next !== index) {
          box.innerHTML = text;
          box.dataset.index = String(next);
        }
        index = next > 0 ? next : index;
        if (state) { state.textContent = "live"; state.classList.remove("off"); }
      } catch (e) {
        if (state) { state.textContent = "reconnecting…"; state.classList.add("off"); }
        await sleep(2000);
      }
    }
  }

  const MAX_LOG = 256 * 1024;   // characters kept in the log pane

  // One stream at a time (a browser keeps few connections to one host open, and each followed
  // log holds one): choosing another task or stream stops following the previous one.
  async function follow(pre, signal) {
    const params = new URLSearchParams({ task: pre.dataset.task, type: pre.dataset.type, follow: "true",
                                         plain: "true", origin: "end", offset: "32768" });
    const url = "/v1/client/fs/logs/" + encodeURIComponent(pre.dataset.alloc) + "?" + params;
    const decoder = new TextDecoder();
    while (!signal.aborted) {
      let ended = false;
      try {
        const resp = await fetch(url, { headers: headers(), cache: "no-store", signal: signal });
        if (resp.ok && resp.body) {
          const reader = resp.body.getReader();
          pre.textContent = "";
          for (;;) {
            const { value, done } = await reader.read();
            if (done) { ended = true; break; }
            if (signal.aborted) return;   // another stream was chosen meanwhile
            const stick = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
            let text = pre.textContent + decoder.decode(value, { stream: true });
            if (text.length > MAX_LOG) text = text.slice(text.length - MAX_LOG);
            pre.textContent = text;
            if (stick) pre.scrollTop = pre.scrollHeight;
          }
        } else if (resp.status === 403) {
          pre.textContent = "(reading the logs needs a token with read-logs: " + (await resp.text()) + ")";
          return;
        }
      } catch (e) {
        // stopped for another stream, or the agent restarted, the network dropped or changed
      }
      if (ended || signal.aborted) return;   // a followed log ends when the allocation is done
      await sleep(3000);   // not started here yet, or the agent could not be reached: look again
    }
  }

  function logs() {
    const pre = document.getElementById("log");
    if (!pre) return;
    let current = new AbortController();
    follow(pre, current.signal);
    document.querySelectorAll("#log-tabs .log-tab").forEach(function (tab) {
      tab.addEventListener("click", function () {
        current.abort();
        document.querySelectorAll("#log-tabs .log-tab.on").forEach((t) => t.classList.remove("on"));
        tab.classList.add("on");
        pre.dataset.task = tab.dataset.task;
        pre.dataset.type = tab.dataset.type;
        pre.textContent = "";
        current = new AbortController();
        follow(pre, current.signal);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    live();
    logs();
  });
})();
