// Drives a partyhost with real PartySocket clients, as example-reactions'
// browser client does: each client connects, waits for the first update,
// sends one reaction, and the run ends when every client has seen all of
// them. Prints one JSON line with what each client saw; exits 1 on timeout.
//
// usage: node reactions.mjs <host:port> <room> <clients>
import PartySocket from "partysocket";
import WebSocket from "ws";

const [host, room, count] = [process.argv[2], process.argv[3], Number(process.argv[4] ?? 3)];
const kinds = ["clap", "heart", "thumbsup", "party"];
const expected = {};
const clients = [];

for (let i = 0; i < count; i++) {
  const kind = kinds[i % kinds.length];
  expected[kind] = (expected[kind] ?? 0) + 1;
  // Half the clients name no party (PartyKit's default `main`), half name
  // the reactions party directly: both must reach the same room.
  const party = i % 2 === 0 ? undefined : "reactions";
  const socket = new PartySocket({ host, room, party, id: `client-${i}`, WebSocket });
  const client = { socket, last: null, sent: false };
  socket.addEventListener("message", (event) => {
    const msg = JSON.parse(event.data);
    if (msg.type !== "update") throw new Error(`unexpected message ${event.data}`);
    client.last = msg.reactions;
    if (!client.sent) {
      client.sent = true;
      socket.send(JSON.stringify({ type: "reaction", kind }));
    }
    check();
  });
  clients.push(client);
}

const matches = (seen) => seen && Object.entries(expected).every(([k, n]) => (seen[k] ?? 0) >= n);

async function check() {
  if (!clients.every((c) => matches(c.last))) return;
  // PartySocket.fetch: HTTP to the same room returns the same counts.
  const response = await PartySocket.fetch({ host, room, party: "reactions" });
  const body = await response.json();
  console.log(JSON.stringify({ ok: true, seen: clients.map((c) => c.last), http: body }));
  for (const c of clients) c.socket.close();
  process.exit(0);
}

setTimeout(() => {
  console.log(JSON.stringify({ ok: false, expected, seen: clients.map((c) => c.last) }));
  process.exit(1);
}, 10_000);
