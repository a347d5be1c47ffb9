// Drives the yjs party with y-partykit's own client, YPartyKitProvider, as
// an editor page would. Prints one JSON line with what the step saw; exits
// 1 if the step does not finish within its time.
//
// usage: node yjs.mjs <host:port> <step> <room> [bytes | token]
//   edit      two clients type at once and converge; awareness comes and goes
//   read      a new client syncs and reports the text
//   bigawareness  an awareness state over the room's cap reaches nobody
//   readonly  a client with ?readonly=1 (or, given [token], one without
//             ?token=) syncs, and its edit reaches nobody
//   big       writes <bytes> of text and sees a second client get it all;
//             prints {"written":...}, then waits for a line on stdin and
//             reads the document again with a third client (the host may
//             evict the room meanwhile)
//   toobig    writes <bytes> of text and reports how the socket was closed
import YPartyKitProvider from "y-partykit/provider";
import * as Y from "yjs";
import WebSocket from "ws";
import { createHash } from "node:crypto";
import { createInterface } from "node:readline";

const [host, step, room, bytesArg] = process.argv.slice(2);
const report = { step };
const fail = (why) => {
  console.log(JSON.stringify({ ok: false, why, report }));
  process.exit(1);
};
setTimeout(() => fail("timed out"), 50_000).unref?.();

const connect = (params = {}) => {
  const doc = new Y.Doc();
  const provider = new YPartyKitProvider(host, room, doc, {
    party: "yjs",
    params,
    WebSocketPolyfill: WebSocket,
  });
  return { doc, provider, text: doc.getText("codemirror") };
};
const synced = ({ provider }) =>
  provider.synced ? Promise.resolve() : new Promise((resolve) => provider.once("synced", resolve));
const until = (what, test, ms = 20_000) =>
  new Promise((resolve) => {
    const started = Date.now();
    const poll = () => {
      if (test()) return resolve();
      if (Date.now() - started > ms) fail(`never: ${what}`);
      setTimeout(poll, 10);
    };
    poll();
  });
const hash = (text) => createHash("sha256").update(text).digest("hex");
const bigText = (bytes) => {
  const line = "The quick brown fox jumps over the lazy dog. 0123456789\n";
  return line.repeat(Math.ceil(bytes / line.length)).slice(0, bytes);
};
const remoteNames = ({ provider }) =>
  [...provider.awareness.getStates()]
    .filter(([id]) => id !== provider.awareness.clientID)
    .map(([, state]) => state.user?.name)
    .filter(Boolean)
    .sort();

if (step === "edit") {
  const ann = connect();
  const bob = connect();
  await Promise.all([synced(ann), synced(bob)]);
  // Both type before either hears of the other's edit.
  ann.text.insert(0, "Hello from Ann. ");
  bob.text.insert(0, "Hello from Bob. ");
  await until("converged", () => ann.text.length === 32 && ann.text.toString() === bob.text.toString());
  report.text = ann.text.toString();
  ann.provider.awareness.setLocalStateField("user", { name: "Ann" });
  bob.provider.awareness.setLocalStateField("user", { name: "Bob" });
  await until("awareness both ways", () => remoteNames(bob).includes("Ann") && remoteNames(ann).includes("Bob"));
  report.bobSees = remoteNames(bob);
  // Ann's connection drops without a word (destroy() would first send her
  // awareness as gone): the room must tell Bob.
  ann.provider.shouldConnect = false;
  ann.provider.ws.terminate();
  await until("Ann's awareness gone", () => remoteNames(bob).length === 0);
  report.bobSeesAfterAnnLeft = remoteNames(bob);
  bob.provider.destroy();
} else if (step === "bigawareness") {
  // An awareness state over the room's 16 KiB cap, then a small one: the
  // room drops the first, so Bob sees only the second (they travel in order).
  const ann = connect();
  const bob = connect();
  await Promise.all([synced(ann), synced(bob)]);
  const blobs = [];
  bob.provider.awareness.on("change", () => {
    for (const [, state] of bob.provider.awareness.getStates()) if (state.user?.blob) blobs.push(state.user.name);
  });
  ann.provider.awareness.setLocalStateField("user", { name: "Huge Ann", blob: "x".repeat(20_000) });
  ann.provider.awareness.setLocalStateField("user", { name: "Ann" });
  await until("Ann's small state at Bob", () => remoteNames(bob).includes("Ann"));
  report.bobSees = remoteNames(bob);
  report.blobsSeen = blobs;
  for (const c of [ann, bob]) c.provider.destroy();
} else if (step === "read") {
  const reader = connect();
  await synced(reader);
  report.text = reader.text.toString();
  report.length = reader.text.length;
  report.sha256 = hash(reader.text.toString());
  reader.provider.destroy();
} else if (step === "readonly") {
  // With a token (the room's YJS_WRITE_TOKEN), the viewer is the client
  // without it; else the one that asks with ?readonly=1.
  const token = bytesArg;
  const viewer = connect(token ? {} : { readonly: "1" });
  await synced(viewer);
  report.viewerSaw = viewer.text.toString();
  viewer.text.insert(0, "VIEWER WAS HERE ");
  // A writer's edit after the viewer's: when the viewer sees it, the
  // room has handled the viewer's edit too (one room, in order).
  const writer = connect(token ? { token } : {});
  await synced(writer);
  writer.text.insert(writer.text.length, " (writer)");
  await until("the writer's edit at the viewer", () => viewer.text.toString().includes("(writer)"));
  const fresh = connect();
  await synced(fresh);
  report.stored = fresh.text.toString();
  for (const c of [viewer, writer, fresh]) c.provider.destroy();
} else if (step === "big") {
  const bytes = Number(bytesArg);
  const writer = connect();
  await synced(writer);
  const text = bigText(bytes);
  writer.text.insert(0, text);
  const reader = connect();
  await synced(reader);
  await until("the whole text at a second client", () => reader.text.length === bytes, 40_000);
  report.written = { length: bytes, sha256: hash(text) };
  reader.provider.destroy();
  console.log(JSON.stringify({ written: report.written }));
  // The test evicts the room (the writer's socket stays open), then says go.
  for await (const _ of createInterface({ input: process.stdin })) break;
  const third = connect();
  await synced(third);
  await until("the whole text after eviction", () => third.text.length === bytes, 40_000);
  report.reloaded = { length: third.text.length, sha256: hash(third.text.toString()) };
  writer.provider.destroy();
  third.provider.destroy();
} else if (step === "toobig") {
  const writer = connect();
  await synced(writer);
  const closed = new Promise((resolve) =>
    writer.provider.on("connection-close", (event) => resolve({ code: event.code, reason: event.reason })),
  );
  writer.text.insert(0, bigText(Number(bytesArg)));
  report.closed = await closed;
  writer.provider.destroy();
} else {
  fail(`unknown step ${step}`);
}

console.log(JSON.stringify({ ok: true, report }));
process.exit(0);
