// A presence bar: each tab joins as a user (kcdshop's presence protocol)
// and shows everyone in the room as an avatar; the server drops a user when
// their last connection closes.
import { connect, showStatus } from "./connect.js";

const names = ["Ada", "Grace", "Linus", "Barbara", "Alan", "Margaret", "Dennis", "Frances"];
const params = new URLSearchParams(window.location.search);
const room = params.get("room") ?? "workshop";
const me = {
  id: crypto.randomUUID(),
  name: params.get("name") ?? names[Math.floor(Math.random() * names.length)],
};

const socket = connect("presence", room);
showStatus(socket, document.querySelector("#status"));
document.querySelector("#me").textContent = me.name;
socket.addEventListener("open", () => {
  socket.send(JSON.stringify({ type: "add-user", payload: me }));
});

socket.addEventListener("message", (event) => {
  const message = JSON.parse(event.data);
  if (message.type !== "presence") return;
  const bar = document.querySelector("#users");
  bar.replaceChildren(...message.payload.users.map(avatar));
  document.querySelector("#count").textContent = message.payload.users.length;
});

function avatar(user) {
  const name = user.name ?? "anonymous";
  const element = document.createElement("li");
  element.className = "avatar";
  element.title = name;
  element.dataset.name = name;
  element.textContent = name.slice(0, 2);
  element.style.background = `hsl(${hue(user.id)} 60% 45%)`;
  if (user.id === me.id) element.classList.add("me");
  return element;
}

function hue(id) {
  let h = 0;
  for (const c of id) h = (h * 31 + c.charCodeAt(0)) % 360;
  return h;
}
