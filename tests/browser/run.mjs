// Drives the bundled dashboards of a running kora-telemetry in a real headless Chromium and
// prints what it saw as one JSON object on stdout (the last line). It asserts nothing itself:
// tests/it/browser.rs starts the service, ingests the data, runs this, and asserts.
//
// Environment:
//   KORA_BASE         the service, e.g. http://127.0.0.1:41234 (required)
//   KORA_SCREENSHOTS  where to write one PNG per view (required)
//   KORA_ACCEPT_ID    the suggestion whose first option the test accepts by clicking (required)
//   KORA_ATTACK_ID    the suggestion a foreign page tries to answer (required)
//   KORA_INSIST_ID    the suggestion on which the test clicks "insist on the same tier" (required)
//   KORA_LIVE_BASE    a second, empty service: the page waits on it for a live suggestion
//                     (required)
//   KORA_LIVE_RUNS    a file with the `POST /v1/runs` body that makes that suggestion (required)
//   KORA_CHROMIUM     the browser (default /usr/bin/chromium)
import { chromium } from "playwright-core";
import http from "node:http";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

const BASE = need("KORA_BASE");
const SHOTS = need("KORA_SCREENSHOTS");
const ACCEPT_ID = need("KORA_ACCEPT_ID");
const ATTACK_ID = need("KORA_ATTACK_ID");
const INSIST_ID = need("KORA_INSIST_ID");
const LIVE_BASE = need("KORA_LIVE_BASE");
const LIVE_RUNS = need("KORA_LIVE_RUNS");
const EXE = process.env.KORA_CHROMIUM || "/usr/bin/chromium";
const VIEWS = ["overview", "latency", "concurrency", "reliability", "suggestions", "metrics", "privacy", "thresholds"];
// A name the browser resolves to 127.0.0.1, as a DNS-rebinding page would make it.
const REBIND_HOST = "kora-rebind.test";

function need(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`run.mjs: ${name} is not set`);
    process.exit(2);
  }
  return v;
}

function watch(page) {
  const seen = { console: [], pageErrors: [], failed: [] };
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warning") {
      seen.console.push({ type: m.type(), text: m.text(), url: m.location().url || "" });
    }
  });
  page.on("pageerror", (e) => seen.pageErrors.push(String(e)));
  page.on("requestfailed", (r) => seen.failed.push({ url: r.url(), error: r.failure() ? r.failure().errorText : "" }));
  return seen;
}

async function settle(page, view) {
  await page.waitForSelector(`body[data-loaded="${view}"]`, { timeout: 15000 });
  // One more poll cycle, so a view that loads in two steps has finished and charts are drawn.
  await page.waitForTimeout(1500);
}

async function main() {
  fs.mkdirSync(SHOTS, { recursive: true });
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "kora-chromium-"));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: EXE,
    headless: true,
    viewport: { width: 1360, height: 900 },
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--host-resolver-rules=MAP ${REBIND_HOST} 127.0.0.1`,
    ],
  });
  const out = { chromium: context.browser() ? context.browser().version() : "persistent", views: {}, accept: {}, insist: {}, foreign: {} };
  try {
    // 1. Every view: loads, shows data, no console errors.
    for (const [i, view] of VIEWS.entries()) {
      const page = await context.newPage();
      const seen = watch(page);
      const res = await page.goto(`${BASE}/#${view}`, { waitUntil: "load" });
      let loaded = true;
      try { await settle(page, view); } catch (e) { loaded = false; seen.pageErrors.push(`never loaded: ${e.message}`); }
      const file = path.join(SHOTS, `${String(i + 1).padStart(2, "0")}-${view}.png`);
      await page.screenshot({ path: file, fullPage: true });
      out.views[view] = {
        status: res ? res.status() : null,
        loaded,
        text: await page.locator("#view").innerText().catch(() => ""),
        status_line: await page.locator("#status").innerText().catch(() => ""),
        charts: await page.locator(".uplot canvas").count(),
        // The rows of the list of recent cloud runs (Product metrics), cell by cell.
        cloud_runs: await page.evaluate(() => Array.from(document.querySelectorAll("#cloud-runs tbody tr"),
          (tr) => Array.from(tr.cells, (td) => td.innerText))),
        // Each suggestion card's ladder: category, and each step's text and state.
        ladders: await page.evaluate(() => Array.from(document.querySelectorAll(".suggestion"), (c) => ({
          id: c.dataset.suggestionId, category: c.dataset.category,
          steps: Array.from(c.querySelectorAll(".ladder span"), (x) => ({ text: x.innerText, class: x.className, option: x.dataset.option })),
        }))),
        csp: res ? res.headers()["content-security-policy"] || "" : "",
        // The event stream's state as the header shows it.
        live: await page.locator("#live").getAttribute("data-state").catch(() => null),
        screenshot: file,
        ...seen,
      };
      await page.close();
    }

    // 1b. The overview at 1280 px with every "how it is computed" disclosure open: no card is
    //     wider than its box and the page does not scroll sideways.
    {
      const page = await context.newPage();
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.goto(`${BASE}/#overview`, { waitUntil: "load" });
      await settle(page, "overview");
      out.layout = await page.evaluate(() => {
        const details = Array.from(document.querySelectorAll("details.from"));
        const closed = details.every((d) => !d.open);
        for (const d of details) d.open = true;
        const over = [];
        for (const el of document.querySelectorAll(".card")) {
          if (el.scrollWidth > el.clientWidth + 1) {
            const t = el.querySelector("h3");
            over.push({ card: t ? t.textContent : "", scrollWidth: el.scrollWidth, clientWidth: el.clientWidth });
          }
        }
        return { viewport: window.innerWidth, pageWidth: document.documentElement.scrollWidth, details: details.length, closed, over,
          steps: document.querySelectorAll("details.from li").length };
      });
      await page.screenshot({ path: path.join(SHOTS, "01b-overview-1280-arithmetic-open.png"), fullPage: true });
      await page.close();
    }

    // 1c. Every view at 1280 px: a screenshot, and no card wider than its box.
    out.at1280 = {};
    for (const [i, view] of VIEWS.entries()) {
      const page = await context.newPage();
      await page.setViewportSize({ width: 1280, height: 900 });
      await page.goto(`${BASE}/#${view}`, { waitUntil: "load" });
      await settle(page, view);
      const file = path.join(SHOTS, `${String(i + 1).padStart(2, "0")}c-${view}-1280.png`);
      await page.screenshot({ path: file, fullPage: true });
      out.at1280[view] = await page.evaluate(() => {
        const over = [];
        for (const el of document.querySelectorAll(".card")) {
          if (el.scrollWidth > el.clientWidth + 1) {
            const t = el.querySelector("h3");
            over.push({ card: t ? t.textContent : el.className, scrollWidth: el.scrollWidth, clientWidth: el.clientWidth });
          }
        }
        return { pageWidth: document.documentElement.scrollWidth, over };
      });
      out.at1280[view].screenshot = file;
      await page.close();
    }

    // 2. Accept a suggestion by clicking: the POST reaches the API and the card updates.
    {
      const page = await context.newPage();
      const seen = watch(page);
      await page.goto(`${BASE}/#suggestions`);
      await settle(page, "suggestions");
      const cardSel = `.suggestion[data-suggestion-id="${ACCEPT_ID}"]`;
      const button = page.locator(`${cardSel} button.accept`).first();
      const choice = await button.getAttribute("data-choice");
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith(`/v1/suggestions/${ACCEPT_ID}/feedback`) && r.request().method() === "POST"),
        button.click(),
      ]);
      let updated = true;
      try {
        await page.waitForFunction((sel) => {
          const c = document.querySelector(sel);
          return c && c.querySelector(".feedback .badge.accepted") && !c.querySelector("button.accept");
        }, cardSel, { timeout: 10000 });
      } catch (_) { updated = false; }
      await page.screenshot({ path: path.join(SHOTS, "09-suggestions-after-accept.png"), fullPage: true });
      out.accept = {
        id: ACCEPT_ID, choice, status: response.status(), request_body: response.request().postData(),
        request_origin: (await response.request().allHeaders())["origin"] || null,
        updated, card_text: await page.locator(cardSel).innerText().catch(() => ""), ...seen,
      };
      await page.close();
    }

    // 2b. Insist on the same tier by clicking: the service answers at once with a new
    //     suggestion (in_answer_to), which the page shows with its Krako Cloud option.
    {
      const page = await context.newPage();
      const seen = watch(page);
      await page.goto(`${BASE}/#suggestions`);
      await settle(page, "suggestions");
      const cardSel = `.suggestion[data-suggestion-id="${INSIST_ID}"]`;
      const [response] = await Promise.all([
        page.waitForResponse((r) => r.url().endsWith(`/v1/suggestions/${INSIST_ID}/feedback`) && r.request().method() === "POST"),
        page.locator(`${cardSel} button.insist`).click(),
      ]);
      let answer = null;
      try {
        const handle = await page.waitForFunction((id) => {
          for (const c of document.querySelectorAll(".suggestion")) {
            if (c.dataset.suggestionId !== id && c.innerText.includes(`insist on the same tier" on ${id}`)) {
              return { id: c.dataset.suggestionId, text: c.innerText, cloud: !!c.querySelector(".badge.cloud") };
            }
          }
          return null;
        }, INSIST_ID, { timeout: 15000, polling: 250 });
        answer = await handle.jsonValue();
      } catch (_) { answer = null; }
      await page.screenshot({ path: path.join(SHOTS, "10-suggestions-after-insist.png"), fullPage: true });
      out.insist = { id: INSIST_ID, status: response.status(), request_body: response.request().postData(), answer, ...seen };
      await page.close();
    }

    // 3. A page from a foreign origin (another port on this machine) tries to answer a
    //    suggestion and turn export consent on, every way a page can send a request.
    const evil = await foreignServer();
    try {
      const page = await context.newPage();
      const seen = watch(page);
      const requests = [];
      page.on("response", (r) => { if (r.url().startsWith(BASE)) requests.push({ method: r.request().method(), url: r.url(), status: r.status() }); });
      page.on("requestfailed", (r) => { if (r.url().startsWith(BASE)) requests.push({ method: r.method(), url: r.url(), failure: r.failure() ? r.failure().errorText : "failed" }); });
      const target = encodeURIComponent(BASE);
      await page.goto(`${evil.origin}/evil.html?target=${target}&id=${encodeURIComponent(ATTACK_ID)}`);
      await page.waitForFunction(() => window.__done === true, null, { timeout: 20000 });
      const results = await page.evaluate(() => window.__results);
      await page.waitForTimeout(500);
      await page.screenshot({ path: path.join(SHOTS, "10-foreign-origin.png"), fullPage: true });
      out.foreign = { origin: evil.origin, results, requests, console: seen.console };
      await page.close();
    } finally {
      evil.server.close();
    }

    // 5. Live: the overview of an empty service is open and its stream connected; runs that
    //    sustain a latency trigger are posted; the suggestion they cause reaches the page
    //    through its EventSource. Measured from just before the POST to the event's arrival.
    {
      const page = await context.newPage();
      const seen = watch(page);
      const streams = [];
      page.on("request", (r) => { if (r.url().includes("/v1/stream")) streams.push(r.url()); });
      await page.goto(`${LIVE_BASE}/#overview`, { waitUntil: "load" });
      await settle(page, "overview");
      await page.waitForSelector('#live[data-state="live"]', { timeout: 15000 });
      // The reload that follows the stream's `ready` is over.
      await page.waitForTimeout(500);
      const polls = [];
      page.on("request", (r) => { if (r.url().includes("/v1/suggestions")) polls.push({ url: r.url(), at: Date.now() }); });
      const body = fs.readFileSync(LIVE_RUNS, "utf8");
      const posted = Date.now();
      const res = await fetch(`${LIVE_BASE}/v1/runs`, { method: "POST", headers: { "content-type": "application/json" }, body });
      const acked = Date.now();
      let event = null;
      try {
        await page.waitForSelector('#live-last[data-kind="suggestion"]', { timeout: 10000 });
        event = await page.evaluate(() => Object.assign({}, document.getElementById("live-last").dataset, { text: document.getElementById("live-last").innerText }));
      } catch (e) { seen.pageErrors.push(`no live suggestion: ${e.message}`); }
      // The view reloads because of the event and shows the suggestion's message (it said
      // "no suggestion yet" before).
      let listed = false;
      try {
        await page.waitForFunction(() => document.querySelector("#view").innerText.toLowerCase().includes("local execution hit a limit"),
          null, { timeout: 10000 });
        listed = true;
      } catch (_) { listed = false; }
      await page.screenshot({ path: path.join(SHOTS, "11-live-suggestion.png"), fullPage: true });
      out.live = {
        status: res.status, post_ms: acked - posted, event,
        delay_ms: event ? Number(event.receivedMs) - posted : null,
        listed, streams, suggestion_fetches_before_event: polls.filter((p) => event && p.at <= Number(event.receivedMs)).length,
        live_card: await page.locator("#live-card").innerText().catch(() => ""), ...seen,
      };
      await page.close();
    }

    // 6. Fallback: with the stream refused, the page says so and keeps polling.
    {
      const page = await context.newPage();
      await page.route("**/v1/stream*", (route) => route.fulfill({ status: 503, contentType: "application/json", body: "{}" }));
      await page.goto(`${BASE}/#overview`, { waitUntil: "load" });
      await settle(page, "overview");
      let state = null;
      try {
        await page.waitForSelector('#live[data-state="polling"]', { timeout: 10000 });
        state = "polling";
      } catch (_) { state = await page.locator("#live").getAttribute("data-state").catch(() => null); }
      out.fallback = { state, text: await page.locator("#live").innerText().catch(() => ""), loaded: await page.locator("body").getAttribute("data-loaded") };
      await page.screenshot({ path: path.join(SHOTS, "12-stream-down-polling.png"), fullPage: true });
      await page.close();
    }

    // 4. DNS rebinding: a name that resolves to 127.0.0.1 but is not on the Host allowlist.
    {
      const port = new URL(BASE).port;
      const page = await context.newPage();
      const res = await page.goto(`http://${REBIND_HOST}:${port}/`).catch((e) => ({ status: () => `error ${e.message}` }));
      out.rebind = { url: `http://${REBIND_HOST}:${port}/`, status: res.status(), body: await page.locator("body").innerText().catch(() => "") };
      await page.close();
    }
  } finally {
    await context.close();
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  process.stdout.write(JSON.stringify(out) + "\n");
}

/** A tiny web server on another loopback port: the foreign origin. */
function foreignServer() {
  const page = `<!doctype html><html><head><meta charset="utf-8"><title>not kora</title>
<script src="/evil.js"></script></head><body><h1>An unrelated page on another port</h1><pre id="log"></pre></body></html>`;
  const script = fs.readFileSync(new URL("./foreign.js", import.meta.url));
  const server = http.createServer((req, res) => {
    if (req.url.startsWith("/evil.html")) { res.writeHead(200, { "content-type": "text/html" }); res.end(page); return; }
    if (req.url === "/evil.js") { res.writeHead(200, { "content-type": "text/javascript" }); res.end(script); return; }
    if (req.url === "/sink") { res.writeHead(200, { "content-type": "text/html" }); res.end("sink"); return; }
    res.writeHead(404); res.end();
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ server, origin: `http://127.0.0.1:${server.address().port}` })));
}

main().catch((e) => {
  console.error(`run.mjs failed: ${e.stack || e}`);
  process.exit(1);
});
