// One place that opens a PartySocket to this page's own host, so the pages
// work wherever partyhost serves them (ws:// locally, wss:// behind TLS).
import PartySocket from "partysocket";

export function connect(party, room) {
  return new PartySocket({
    host: window.location.host,
    protocol: window.location.protocol === "https:" ? "wss" : "ws",
    party,
    room,
  });
}

/// Shows the socket's state in the page's status line.
export function showStatus(socket, element) {
  const show = (text) => () => (element.textContent = text);
  socket.addEventListener("open", show("connected"));
  socket.addEventListener("close", show("reconnecting…"));
}
