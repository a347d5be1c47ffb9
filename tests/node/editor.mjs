// The shared editor page (web/public/editor.html) in headless Chromium: two
// people type into the same document, and each sees the other's text and
// cursor (with their name, from awareness). Saves a screenshot. Prints one
// JSON line with what the pages showed; exits 1 when a step times out.
//
// usage: node editor.mjs <host:port> <screenshot dir>
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const [host, shots] = [process.argv[2], process.argv[3]];
mkdirSync(shots, { recursive: true });
const browser = await launchChromium();
const room = `editor-${Date.now()}`;
const report = {};

async function open(name) {
  const context = await browser.newContext({ viewport: { width: 800, height: 500 } });
  const page = await context.newPage();
  page.on("pageerror", (error) => console.error(`page error for ${name}: ${error}`));
  await page.goto(`http://${host}/editor.html?room=${room}&name=${name}`);
  await page.locator("#status", { hasText: "synced" }).waitFor({ timeout: 10_000 });
  return page;
}
// The document as the editor holds it (the page exposes its EditorView);
// the DOM's text also holds the other people's caret labels.
const content = (page) => page.evaluate(() => window.editor.state.doc.toString());
const waitFor = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: 10_000 });

try {
  const ann = await open("Ann");
  const bob = await open("Bob");
  await ann.click(".cm-content");
  await ann.keyboard.type("Ann was here.");
  await waitFor(bob, () => window.editor.state.doc.toString() === "Ann was here.");
  await bob.click(".cm-content");
  await bob.keyboard.press("End");
  await bob.keyboard.type(" Bob too.");
  for (const page of [ann, bob]) {
    await waitFor(page, () => window.editor.state.doc.toString() === "Ann was here. Bob too.");
  }
  report.text = { ann: await content(ann), bob: await content(bob) };
  // The other person's caret, labelled with their name.
  const caretOf = (page, name) =>
    waitFor(page, (name) => [...document.querySelectorAll(".cm-ySelectionInfo")].some((e) => e.textContent === name), name);
  await caretOf(ann, "Bob");
  await caretOf(bob, "Ann");
  report.carets = {
    ann: await ann.locator(".cm-ySelectionInfo").allInnerTexts(),
    bob: await bob.locator(".cm-ySelectionInfo").allInnerTexts(),
  };
  report.people = await ann.locator("#people li").evaluateAll((els) => els.map((e) => e.dataset.name).sort());
  await ann.screenshot({ path: join(shots, "editor.png") });
  console.log(JSON.stringify(report));
} catch (error) {
  console.error(`${error}\nseen so far: ${JSON.stringify(report)}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
