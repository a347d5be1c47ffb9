// Live reaction counts per room, in PartyKit's own style: the TypeScript
// twin of guests/reactions (partykit/example-reactions on the wire).
import type * as Party from "partykit/server";
import { rateLimit } from "./limiter";

type Counts = Record<string, number>;
const kinds = new Set(["clap", "heart", "thumbsup", "party"]);

export default class Reactions implements Party.Server {
  options: Party.ServerOptions = { hibernate: true };
  reactions: Counts = {};

  constructor(readonly room: Party.Room) {}

  async onStart() {
    this.reactions = (await this.room.storage.get<Counts>("reactions")) ?? {};
  }

  onConnect(connection: Party.Connection) {
    connection.send(this.update());
  }

  onRequest(_req: Party.Request) {
    return new Response(this.update(), { headers: { "content-type": "application/json" } });
  }

  onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    if (typeof message !== "string") return;
    let parsed: { type?: unknown; kind?: unknown };
    try {
      parsed = JSON.parse(message);
    } catch {
      return;
    }
    if (parsed?.type !== "reaction" || typeof parsed.kind !== "string" || !kinds.has(parsed.kind)) return;
    const kind = parsed.kind;
    const cooldown = Number(this.room.env.RATE_LIMIT_MS ?? 100);
    rateLimit(sender, cooldown, () => {
      this.reactions[kind] = (this.reactions[kind] ?? 0) + 1;
      this.room.storage.put("reactions", this.reactions);
      this.room.broadcast(this.update());
    });
  }

  update() {
    return JSON.stringify({ type: "update", reactions: this.reactions });
  }
}
