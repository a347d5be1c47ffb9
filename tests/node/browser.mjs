// The example pages (web/public) in headless Chromium against a real host:
// two users react and each sees the other's counts; presence shows both and
// drops one when its page closes; opening page b raises the count page a
// shows. Saves a screenshot of each page. Prints one JSON line with what the
// pages showed; exits 1 when a step times out.
//
// usage: node browser.mjs <host:port> <screenshot dir>
import { launchChromium } from "./chromium.mjs";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [host, shots] = [process.argv[2], process.argv[3]];
const base = `http://${host}`;
mkdirSync(shots, { recursive: true });

const browser = await launchChromium();

// Each user gets their own context: separate storage, like separate people.
async function open(path) {
  const context = await browser.newContext({ viewport: { width: 800, height: 500 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`page error on ${path}: ${error}`));
  await page.goto(base + path);
  await page.locator("#status", { hasText: "connected" }).waitFor({ timeout: 10_000 });
  return page;
}

const text = (page, selector) => page.locator(selector).innerText();
const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: 10_000 });
const report = {};

try {
  // The index links to each example.
  const index = await (await browser.newContext()).newPage();
  await index.goto(base + "/");
  report.index = await index.locator("a").evaluateAll((links) => links.map((a) => a.getAttribute("href")));
  await index.screenshot({ path: join(shots, "index.png") });

  // Reactions: each user clicks, both see the sum.
  const room = `browser-${Date.now()}`;
  const [ann, bob] = [await open(`/reactions.html?room=${room}`), await open(`/reactions.html?room=${room}`)];
  await ann.click("button[data-kind=clap]");
  await bob.click("button[data-kind=heart]");
  await ann.click("button[data-kind=clap]");
  const counts = (page) => page.evaluate(() =>
    Object.fromEntries([...document.querySelectorAll("[data-count]")].map((e) => [e.dataset.count, e.textContent])));
  for (const page of [ann, bob]) {
    await waitFor(page, () => document.querySelector("[data-count=clap]").textContent === "2"
      && document.querySelector("[data-count=heart]").textContent === "1");
  }
  report.reactions = { ann: await counts(ann), bob: await counts(bob) };
  await bob.screenshot({ path: join(shots, "reactions.png") });

  // Presence: both appear, then Bob leaves.
  const workshop = `workshop-${Date.now()}`;
  const annTab = await open(`/presence.html?room=${workshop}&name=Ann`);
  const bobTab = await open(`/presence.html?room=${workshop}&name=Bob`);
  const names = (page) => page.locator("#users .avatar").evaluateAll((els) => els.map((e) => e.dataset.name).sort());
  for (const page of [annTab, bobTab]) {
    await waitFor(page, () => document.querySelectorAll("#users .avatar").length === 2);
  }
  report.presence = { both: await names(annTab) };
  await annTab.screenshot({ path: join(shots, "presence.png") });
  await bobTab.context().close();
  await waitFor(annTab, () => document.querySelectorAll("#users .avatar").length === 1);
  report.presence.afterBobLeft = await names(annTab);
  report.presence.count = await text(annTab, "#count");

  // Link counter: page a shows how many people are on page b.
  const pageA = await open("/links.html?page=a");
  await waitFor(pageA, () => document.querySelector("[data-page=b]").textContent === "0 here");
  report.links = { before: await text(pageA, "[data-page=b]") };
  const pageB = await open("/links.html?page=b");
  await waitFor(pageA, () => document.querySelector("[data-page=b]").textContent === "1 here");
  report.links.after = await text(pageA, "[data-page=b]");
  await pageA.screenshot({ path: join(shots, "links-a.png") });
  await pageB.screenshot({ path: join(shots, "links-b.png") });

  console.log(JSON.stringify(report));
} catch (error) {
  console.error(`${error}\nseen so far: ${JSON.stringify(report)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
