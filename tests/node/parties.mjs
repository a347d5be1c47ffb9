// Drives presence, page and counter with real PartySocket clients, the way
// their original browser clients do. Prints one JSON line with what each
// step saw; exits 1 if a step does not happen within 10 s.
//
// usage: node parties.mjs <host:port>
import PartySocket from "partysocket";
import WebSocket from "ws";

const host = process.argv[2];
const socket = (party, room, id) => new PartySocket({ host, party, room, id, WebSocket });

/** Resolves with the first message (parsed) that satisfies `test`. */
const next = (ws, test) =>
  new Promise((resolve) => {
    const listener = (event) => {
      const msg = JSON.parse(event.data);
      if (test(msg)) {
        ws.removeEventListener("message", listener);
        resolve(msg);
      }
    };
    ws.addEventListener("message", listener);
  });
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
const report = {};

setTimeout(() => {
  console.log(JSON.stringify({ ok: false, report }));
  process.exit(1);
}, 10_000);

// presence: two tabs add users; closing one drops its user for the other.
const ann = socket("presence", "node-workshop", "tab-ann");
const bob = socket("presence", "node-workshop", "tab-bob");
await Promise.all([ann, bob].map((ws) => new Promise((r) => ws.addEventListener("open", r))));
const both = next(ann, (m) => m.payload.users.length === 2);
ann.send(JSON.stringify({ type: "add-user", payload: { id: "ann", name: "Ann", avatarUrl: "https://cdn.discordapp.com/a.png" } }));
bob.send(JSON.stringify({ type: "add-user", payload: { id: "bob", name: "Bob" } }));
report.presence = (await both).payload.users.map((u) => u.id);
const alone = next(ann, (m) => m.payload.users.length === 1);
bob.close();
report.presenceAfterClose = (await alone).payload.users.map((u) => u.id);

// link counter: a links to b; b links to a and to itself. b's visitor
// arrives once a has its first counts, as a second person would.
const onA = socket("page", "node-a");
onA.send(JSON.stringify({ type: "subscribe", links: ["node-b"] }));
report.aFirst = (await next(onA, (m) => m.type === "update")).connections;
const aSeesB = next(onA, (m) => same(m.connections, { "node-b": 1 }));
const onB = socket("page", "node-b");
onB.send(JSON.stringify({ type: "subscribe", links: ["node-a", "node-b"] }));
report.bFirst = (await next(onB, (m) => m.type === "update")).connections;
report.aSeesB = (await aSeesB).connections;

console.log(JSON.stringify({ ok: true, report }));
for (const ws of [ann, onA, onB]) ws.close();
process.exit(0);
