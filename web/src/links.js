// example-link-counter's pages a-d: each page is a room of the `page`
// party; it subscribes to the pages it links to and shows how many people
// are on each of them, live.
import { connect, showStatus } from "./connect.js";

const LINKS = { a: ["b", "c", "d"], b: ["a", "b", "c"], c: ["a", "b", "d"], d: ["a"] };
const requested = new URLSearchParams(window.location.search).get("page");
const page = requested in LINKS ? requested : "a";
const links = LINKS[page];

document.querySelector("#page").textContent = page;
document.title = `Page ${page}`;
const list = document.querySelector("#links");
list.replaceChildren(
  ...links.map((link) => {
    const item = document.createElement("li");
    item.innerHTML = `<a href="?page=${link}">Page ${link}</a> <span class="count" data-page="${link}">…</span>`;
    return item;
  }),
);

const socket = connect("page", page);
showStatus(socket, document.querySelector("#status"));
socket.addEventListener("open", () => {
  socket.send(JSON.stringify({ type: "subscribe", links }));
});
socket.addEventListener("message", (event) => {
  const message = JSON.parse(event.data);
  if (message.type !== "update") return;
  for (const [link, count] of Object.entries(message.connections)) {
    const span = list.querySelector(`[data-page="${link}"]`);
    if (span) span.textContent = `${count} here`;
  }
});
