// A shared text editor: CodeMirror 6 bound to a Yjs document that the `yjs`
// party keeps (y-partykit's provider, unchanged), with everyone's cursor and
// name from awareness. `?room=` picks the document, `?name=` your name,
// `?readonly=1` opens it for reading only.
import YPartyKitProvider from "y-partykit/provider";
import * as Y from "yjs";
import { yCollab } from "y-codemirror.next";
import { EditorView, basicSetup } from "codemirror";
import { EditorState } from "@codemirror/state";

const names = ["Ada", "Grace", "Linus", "Barbara", "Alan", "Margaret", "Dennis", "Frances"];
const colors = ["#30bced", "#6eeb83", "#ffbc42", "#ee6352", "#9ac2c9", "#8acb88", "#1be7ff", "#c97b84"];
const params = new URLSearchParams(window.location.search);
const room = params.get("room") ?? "notes";
const readOnly = params.get("readonly") === "1";
const name = params.get("name") ?? names[Math.floor(Math.random() * names.length)];
let hash = 0;
for (const c of name) hash = (hash * 31 + c.charCodeAt(0)) % colors.length;
const user = { name, color: colors[hash] };

const doc = new Y.Doc();
const provider = new YPartyKitProvider(window.location.host, room, doc, {
  party: "yjs",
  protocol: window.location.protocol === "https:" ? "wss" : "ws",
  params: readOnly ? { readonly: "1" } : {},
});
provider.awareness.setLocalStateField("user", { ...user, colorLight: `${user.color}33` });

const text = doc.getText("codemirror");
window.editor = new EditorView({
  parent: document.querySelector("#editor"),
  state: EditorState.create({
    doc: text.toString(),
    extensions: [basicSetup, EditorView.lineWrapping, EditorState.readOnly.of(readOnly), yCollab(text, provider.awareness)],
  }),
});

document.querySelector("#me").textContent = user.name;
const status = document.querySelector("#status");
provider.on("status", ({ status: state }) => (status.textContent = state));
provider.on("sync", (synced) => (status.textContent = synced ? "synced" : "syncing…"));
// The room refuses an edit past the document's size limit (4413) or a frame
// it cannot read (4400); reconnecting would send the same again.
provider.on("connection-close", (event) => {
  if (event.code === 4413 || event.code === 4400) {
    provider.disconnect();
    status.textContent = `disconnected: ${event.reason}`;
  }
});

const people = document.querySelector("#people");
provider.awareness.on("change", () => {
  const here = [...provider.awareness.getStates().values()].map((state) => state.user).filter(Boolean);
  people.replaceChildren(
    ...here.map(({ name, color }) => {
      const item = document.createElement("li");
      item.textContent = name;
      item.dataset.name = name;
      item.style.borderColor = color;
      return item;
    }),
  );
});
