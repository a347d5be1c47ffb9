// example-reactions' client: buttons that send a reaction, counts that
// follow the room's `update` broadcasts.
import { connect, showStatus } from "./connect.js";

const room = new URLSearchParams(window.location.search).get("room") ?? "lobby";
const socket = connect("reactions", room);
showStatus(socket, document.querySelector("#status"));
document.querySelector("#room").textContent = room;

for (const button of document.querySelectorAll("button[data-kind]")) {
  button.addEventListener("click", () => {
    socket.send(JSON.stringify({ type: "reaction", kind: button.dataset.kind }));
  });
}

socket.addEventListener("message", (event) => {
  const message = JSON.parse(event.data);
  if (message.type !== "update") return;
  for (const count of document.querySelectorAll("[data-count]")) {
    count.textContent = message.reactions[count.dataset.count] ?? 0;
  }
});
