// One page of a site: the TypeScript twin of guests/page, speaking
// partykit/example-link-counter's page party on the wire. It tells the
// counter its connection count on connect and close, and hears about the
// pages it links to.
import type * as Party from "partykit/server";

const GLOBAL_COUNTER_ID = "all-pages";
const CLEANUP_ALARM_DELAY_MS = 60 * 60 * 1000;

type Summary = Record<string, number>;
type CountUpdate = { action: "update"; id: string; connectionCount: number };

export default class Page implements Party.Server {
  options: Party.ServerOptions = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  counter() {
    return this.room.context.parties.counter.get(GLOBAL_COUNTER_ID);
  }

  cleanupAt() {
    return Date.now() + Number(this.room.env.CLEANUP_ALARM_DELAY_MS ?? CLEANUP_ALARM_DELAY_MS);
  }

  async save(connections: Summary) {
    await this.room.storage.put("connections", connections);
    await this.room.storage.setAlarm(this.cleanupAt());
  }

  async sendCountToCounter() {
    const connectionCount = [...this.room.getConnections()].length;
    await this.counter().fetch({
      method: "POST",
      body: JSON.stringify({ action: "update", id: this.room.id, connectionCount }),
    });
  }

  async onConnect() {
    await this.sendCountToCounter();
  }

  async onClose() {
    await this.sendCountToCounter();
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection) {
    if (typeof message !== "string") return;
    let parsed: { type?: string; links?: unknown };
    try {
      parsed = JSON.parse(message);
    } catch {
      return;
    }
    if (parsed.type !== "subscribe" || !Array.isArray(parsed.links)) return;
    const response = await this.counter().fetch({
      method: "POST",
      body: JSON.stringify({ action: "subscribe", subscriberId: this.room.id, subscribeToRoomIds: parsed.links }),
    });
    const connections = (await response.json()) as Summary;
    await this.save(connections);
    sender.send(JSON.stringify({ type: "update", connections }));
  }

  async onRequest(req: Party.Request) {
    if (req.method === "POST") {
      const update = (await req.json().catch(() => null)) as CountUpdate | null;
      if (update?.action === "update") {
        const connections = await this.room.storage.get<Summary>("connections");
        if (connections) {
          connections[update.id] = update.connectionCount;
          await this.save(connections);
          this.room.broadcast(JSON.stringify({ type: "update", connections }));
        }
      }
    }
    return new Response("Bad request", { status: 400 });
  }

  async onAlarm() {
    if ([...this.room.getConnections()].length === 0) {
      await this.room.storage.delete("connections");
    } else {
      await this.room.storage.setAlarm(this.cleanupAt());
    }
  }
}
