// Exercises PartyKit's server API as the JavaScript runtime gives it:
// storage (single and multi-key, list options, alarms), connections
// (state, attachments, tags, uri), broadcast, gates, env, logging and the
// web globals. Each HTTP path or WebSocket message answers with what it saw.
import type * as Party from "partykit/server";

type Alarmed = { retryCount: number; isRetry: boolean };

export default class Probe implements Party.Server {
  // Not in the manifest: the instance goes when idle, sockets stay open.
  readonly options: Party.ServerOptions = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  static async onBeforeConnect(req: Party.Request, lobby: Party.Lobby) {
    const url = new URL(req.url);
    if (url.searchParams.get("token") !== lobby.env.TOKEN) {
      return new Response(`no entry to ${lobby.id}`, { status: 403 });
    }
    const passed = new Request(req);
    passed.headers.set("x-gate", `checked ${lobby.id}`);
    return passed;
  }

  static onBeforeRequest(req: Party.Request) {
    if (new URL(req.url).pathname.endsWith("/forbidden")) return new Response("refused by the gate", { status: 401 });
    const passed = new Request(req);
    passed.headers.set("x-gate", "request checked");
    return passed;
  }

  getConnectionTags(connection: Party.Connection, ctx: Party.ConnectionContext) {
    return [new URL(ctx.request.url).searchParams.get("tag") ?? "untagged"];
  }

  onConnect(connection: Party.Connection, ctx: Party.ConnectionContext) {
    connection.send(
      JSON.stringify({
        id: connection.id,
        uri: connection.uri,
        gate: ctx.request.headers.get("x-gate"),
        room: this.room.id,
        party: this.room.name,
      }),
    );
  }

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection<{ count: number }>) {
    if (typeof message !== "string") {
      // Binary back, reversed.
      sender.send(new Uint8Array(message).reverse());
      return;
    }
    const [command, arg] = message.split(":");
    switch (command) {
      case "count": {
        const state = sender.setState((previous) => ({ count: (previous?.count ?? 0) + 1 }));
        sender.send(`count ${state.count} attachment ${JSON.stringify(sender.deserializeAttachment())}`);
        break;
      }
      case "attach":
        sender.serializeAttachment({ note: arg });
        sender.send(`attached ${JSON.stringify(sender.deserializeAttachment())} state ${JSON.stringify(sender.state)}`);
        break;
      case "tagged": {
        const ids = [...this.room.getConnections(arg)].map((c) => c.id);
        sender.send(`tagged ${arg}: ${ids.join(",")}`);
        break;
      }
      case "shout":
        this.room.broadcast(`shout ${arg} from ${sender.id}`, [sender.id]);
        break;
      case "close":
        sender.close(4001, "asked to");
        break;
    }
  }

  async onClose(connection: Party.Connection, code?: number, reason?: string, wasClean?: boolean) {
    // Its state too: the host keeps it readable while the connection closes.
    await this.room.storage.put(`closed:${connection.id}`, { code, reason, wasClean, state: connection.state });
  }

  async onAlarm(alarm?: Alarmed) {
    const fired = ((await this.room.storage.get<Alarmed[]>("alarms")) ?? []).concat([alarm!]);
    await this.room.storage.put("alarms", fired);
    // A failed attempt's writes are rolled back: only the last one's stay.
    if ((await this.room.storage.get("fail-alarms")) && alarm!.retryCount < 2) {
      throw new Error(`attempt ${alarm!.retryCount} fails on purpose`);
    }
  }

  async onRequest(req: Party.Request) {
    const url = new URL(req.url);
    const what = url.pathname.split("/").pop();
    const storage = this.room.storage;
    switch (what) {
      case "storage": {
        await storage.put("one", { n: 1, list: [1, "two"], nested: { ok: true } });
        await storage.put({ "k:a": 1, "k:b": 2, "k:c": 3, "k:d": 4, other: "x" });
        const single = await storage.get("one");
        const many = await storage.get(["k:a", "k:c", "missing"]);
        const list = (options: Party.StorageListOptions) => storage.list(options).then((m) => [...m.keys()]);
        const answer = {
          single,
          many: Object.fromEntries(many),
          prefix: await list({ prefix: "k:" }),
          range: await list({ start: "k:b", end: "k:d" }),
          startAfter: await list({ prefix: "k:", startAfter: "k:b" } as Party.StorageListOptions),
          reverseLimit: await list({ prefix: "k:", reverse: true, limit: 2 }),
          deletedOne: await storage.delete("other"),
          deletedMany: await storage.delete(["k:a", "k:b", "missing"]),
          after: [...(await storage.list()).keys()],
        };
        await storage.deleteAll();
        answer.after.push(`then ${(await storage.list()).size}`);
        return Response.json(answer);
      }
      case "too-big":
        try {
          await storage.put("big", "x".repeat(200 * 1024));
          return new Response("stored");
        } catch (error) {
          return new Response(String(error), { status: 413 });
        }
      case "alarm": {
        if (url.searchParams.has("fail")) await storage.put("fail-alarms", true);
        await storage.delete("alarms");
        const at = Date.now() + Number(url.searchParams.get("in") ?? 0);
        await storage.setAlarm(new Date(at));
        return Response.json({ set: (await storage.getAlarm()) === new Date(at).getTime() });
      }
      case "alarms":
        return Response.json((await storage.get("alarms")) ?? []);
      case "closed":
        return Response.json(Object.fromEntries(await storage.list({ prefix: "closed:" })));
      case "globals": {
        const uuid = crypto.randomUUID();
        const random = crypto.getRandomValues(new Uint8Array(16));
        const bytes = new TextEncoder().encode("héllo");
        const headers = new Headers({ "X-Mixed": "Case" });
        console.log("a log line", { from: "probe" });
        console.warn("a warning");
        let timer = "";
        try {
          setTimeout(() => {}, 10);
        } catch (error) {
          timer = String(error);
        }
        const order: string[] = [];
        await new Promise<void>((resolve) => setTimeout(() => (order.push("deferred"), resolve())));
        order.push("after");
        return Response.json({
          uuid: /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/.test(uuid),
          random: random.length === 16 && random.some((b) => b !== 0),
          utf8: bytes.length,
          decoded: new TextDecoder().decode(bytes),
          header: headers.get("x-mixed"),
          query: url.searchParams.get("q"),
          gate: req.headers.get("x-gate"),
          env: this.room.env.TOKEN,
          timer,
          order,
          now: Number.isInteger(Date.now()) && Date.now() > 1.7e12,
        });
      }
      case "room": {
        const inTransaction = await storage.transaction(async (txn) => {
          await txn.put("t", 1);
          return txn.get("t");
        });
        await storage.sync();
        return Response.json({
          internalID: this.room.internalID,
          name: this.room.name,
          nobody: this.room.getConnection("nobody") === undefined,
          inTransaction,
        });
      }
      case "echo":
        return new Response(await req.text(), { status: 201, headers: { "x-method": req.method } });
      case "ask-other": {
        // A room-to-room fetch: another room of this party answers.
        const other = this.room.context.parties.probe.get(`${this.room.id}-other`);
        const response = await other.fetch("/echo", { method: "POST", body: "across rooms" });
        return new Response(`${response.status} ${await response.text()} ${response.headers.get("x-method")}`);
      }
    }
    return new Response("unknown probe", { status: 404 });
  }
}
