// Opens a console URL of Mica's console proxy in headless chromium (Debian's,
// driven by the npm package playwright-core that tests/setup/web.sh installs),
// waits for the page to settle, saves a screenshot, and prints one JSON line:
//   {"state": "connected" | "error" | …, "status": "<the page's status text>",
//    "rfb": <noVNC loaded>, "canvas": {"width", "height", "nonBlack"} | null}
// Usage: node console.mjs <url> <screenshot.png> [wait-ms]
import { createRequire } from "node:module";
import path from "node:path";
import os from "node:os";

const cache = process.env.MICA_CACHE || path.join(os.homedir(), ".cache", "mica");
const require = createRequire(path.join(cache, "node", "package.json"));
const { chromium } = require("playwright-core");

const [url, shot, waitArg] = process.argv.slice(2);
if (!url || !shot) {
  console.error("usage: node console.mjs <url> <screenshot.png> [wait-ms]");
  process.exit(2);
}
const waitMs = Number(waitArg || 8000);
const browser = await chromium.launch({
  executablePath: process.env.MICA_CHROMIUM || "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
});
try {
  const page = await browser.newPage({ viewport: { width: 1100, height: 850 } });
  const logs = [];
  page.on("console", (m) => logs.push(m.type() + ": " + m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  await page.goto(url, { waitUntil: "load" });
  // Connected, or failed, or out of time.
  await page
    .waitForFunction(() => ["connected", "error"].includes(document.body.dataset.state), null, {
      timeout: waitMs,
    })
    .catch(() => {});
  // A connected screen draws once the first framebuffer update arrives, which
  // on a loaded machine (a guest in the nested host, its VNC on an emulated
  // CPU) can take seconds: wait for any lit pixel, up to the same time-out,
  // then give the rest of the screen a moment.
  if ((await page.evaluate(() => document.body.dataset.state)) === "connected") {
    await page
      .waitForFunction(
        () => {
          const c = document.querySelector("#screen canvas");
          if (!c || c.width === 0 || c.height === 0) return false;
          const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
          for (let i = 0; i < d.length; i += 4) {
            if (d[i] > 32 || d[i + 1] > 32 || d[i + 2] > 32) return true;
          }
          return false;
        },
        null,
        { timeout: waitMs, polling: 250 },
      )
      .catch(() => {});
    await page.waitForTimeout(1000);
  }
  await page.screenshot({ path: shot });
  const result = await page.evaluate(() => {
    const canvas = document.querySelector("#screen canvas");
    let info = null;
    if (canvas && canvas.width > 0 && canvas.height > 0) {
      const data = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
      let nonBlack = 0;
      for (let i = 0; i < data.length; i += 4) {
        if (data[i] > 32 || data[i + 1] > 32 || data[i + 2] > 32) nonBlack++;
      }
      info = { width: canvas.width, height: canvas.height, nonBlack };
    }
    return {
      state: document.body.dataset.state || null,
      status: document.getElementById("status").textContent,
      rfb: typeof window.micaRfb === "object",
      canvas: info,
    };
  });
  result.logs = logs;
  console.log(JSON.stringify(result));
} finally {
  await browser.close();
}
