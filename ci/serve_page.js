// The chat page in headless chromium (see ci/serve.sh): loads GET / from the server, sends a
// message by typing it and pressing Enter, waits for the streamed reply to finish, and checks
// that it shows text and the tokens/s and bytes-per-token line.
// Usage: node serve_page.js URL   (NODE_PATH has playwright-core)
"use strict";
const { chromium } = require("playwright-core");

(async () => {
  const url = process.argv[2];
  const userDataDir = require("fs").mkdtempSync(require("os").tmpdir() + "/fs-chromium-");
  const ctx = await chromium.launchPersistentContext(userDataDir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  let code = 1;
  try {
    const page = await ctx.newPage();
    await page.goto(url + "/?max_tokens=16&temp=0", { timeout: 60000 });
    await page.fill("#input", "Say hello.");
    await page.press("#input", "Enter");
    // Streamed text appears before the reply ends.
    await page.waitForFunction(() => {
      const t = document.querySelector(".assistant .text");
      return t && t.textContent.length > 0;
    }, null, { timeout: 180000 });
    const partial = await page.textContent(".assistant .text");
    await page.waitForSelector('.assistant[data-done="1"]', { timeout: 180000 });
    const text = await page.textContent(".assistant .text");
    const stats = await page.textContent(".assistant .stats");
    console.log("reply:", JSON.stringify(text), "| first seen:", JSON.stringify(partial), "|", stats);
    if (text.length > 0 && /tok\/s/.test(stats) && /read per token/.test(stats)) {
      console.log("ok: the chat page streamed a reply and shows tok/s and bytes read per token");
      code = 0;
    } else {
      console.log("FAIL: no reply or no statistics on the page");
    }
  } catch (e) {
    console.log("FAIL:", e.message);
  } finally {
    await ctx.close();
    require("fs").rmSync(userDataDir, { recursive: true, force: true });
  }
  process.exit(code);
})();
