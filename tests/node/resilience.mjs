// A PartySocket through a host restart, as a browser tab lives through a
// deploy: it connects with a `prefix` (a tenant's `/p/<project>/parties`),
// sends binary and text, prints `{"phase":"connected"}` so the test can
// restart the host, then reconnects by itself with the same id and checks
// it is back in the same room. Prints one JSON report; exits 1 on timeout.
//
// usage: node resilience.mjs <host:port> <prefix> <party> <room>
import PartySocket from "partysocket";
import WebSocket from "ws";

const [host, prefix, party, room] = process.argv.slice(2);
const report = { ok: false, hellos: [], closes: [] };
const socket = new PartySocket({
  host, prefix, party, room, id: "resilient", query: { token: "good" }, WebSocket,
  minReconnectionDelay: 50, maxReconnectionDelay: 300, connectionTimeout: 2000,
});
socket.binaryType = "arraybuffer";

socket.addEventListener("close", (event) => report.closes.push(event.code));
socket.addEventListener("message", (event) => {
  if (typeof event.data !== "string") {
    report.binary = Array.from(new Uint8Array(event.data));
    console.log(JSON.stringify({ phase: "connected" }));
    return;
  }
  const text = event.data;
  if (text.startsWith("hello ")) {
    report.hellos.push(text);
    // First run: store something, then binary. After the restart: read it back.
    socket.send(report.hellos.length === 1 ? "put-many k=before" : "get-many k");
  } else if (text === "ok") {
    socket.send(new Uint8Array([1, 2, 3, 250]));
  } else {
    report.afterRestart = text;
    report.ok = true;
    console.log(JSON.stringify(report));
    socket.close();
    process.exit(0);
  }
});

setTimeout(() => {
  console.log(JSON.stringify(report));
  process.exit(1);
}, 30_000);
