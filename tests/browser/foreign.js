// Loaded by the foreign page of run.mjs (another origin): tries every way a web page can send
// a state-changing request to the kora-telemetry service, and records what it could observe.
// Every one of them must be refused: by the browser (CORS preflight that the service never
// answers) or by the service (Origin check, 403).
(function () {
  const q = new URLSearchParams(location.search);
  const target = q.get("target");
  const id = q.get("id");
  const feedback = `${target}/v1/suggestions/${encodeURIComponent(id)}/feedback`;
  const body = JSON.stringify({ action: "accepted", choice: "cloud" });
  const results = {};
  window.__results = results;

  async function attempt(name, fn) {
    try { results[name] = await fn(); } catch (e) { results[name] = `blocked: ${e.name}: ${e.message}`; }
  }

  async function run() {
    await attempt("read_suggestions", async () => {
      const r = await fetch(`${target}/v1/suggestions`);
      return `read ${r.status}: ${(await r.text()).slice(0, 80)}`;
    });
    await attempt("cors_json_feedback", async () => {
      const r = await fetch(feedback, { method: "POST", headers: { "Content-Type": "application/json" }, body });
      return `status ${r.status}`;
    });
    await attempt("no_cors_text_feedback", async () => {
      const r = await fetch(feedback, { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body });
      return `opaque response (type ${r.type})`;
    });
    await attempt("beacon_feedback", async () => `queued: ${navigator.sendBeacon(feedback, new Blob([body], { type: "text/plain" }))}`);
    await attempt("cors_json_consent", async () => {
      const r = await fetch(`${target}/v1/consent`, { method: "PUT", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ export_enabled: true }) });
      return `status ${r.status}`;
    });
    await attempt("no_cors_text_consent", async () => {
      const r = await fetch(`${target}/v1/consent`, { method: "POST", mode: "no-cors", headers: { "Content-Type": "text/plain" }, body: JSON.stringify({ export_enabled: true }) });
      return `opaque response (type ${r.type})`;
    });
    await attempt("form_feedback", () => new Promise((resolve) => {
      const frame = document.createElement("iframe");
      frame.name = "sink";
      document.body.appendChild(frame);
      const form = document.createElement("form");
      form.method = "POST";
      form.action = feedback;
      form.enctype = "text/plain";
      form.target = "sink";
      const input = document.createElement("input");
      input.name = '{"action":"accepted","choice":"cloud","x":"';
      input.value = '"}';
      form.appendChild(input);
      document.body.appendChild(form);
      frame.addEventListener("load", () => resolve("form submitted"));
      setTimeout(() => resolve("form submitted (no load event)"), 3000);
      form.submit();
    }));
    // Let the beacon go out before the harness looks.
    await new Promise((r) => setTimeout(r, 500));
    document.getElementById("log").textContent = JSON.stringify(results, null, 2);
    window.__done = true;
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", run);
  else run();
})();
