// The site-wide counter: the TypeScript twin of guests/counter, speaking
// partykit/example-link-counter's counter party on the wire. Pages subscribe
// to the pages they link to; on each update it tells every subscriber, all
// at once.
import type * as Party from "partykit/server";

const CLEANUP_ALARM_DELAY_MS = 60 * 60 * 1000;

type PageState = { id: string; connectionCount: number; subscriberIds: string[] };
type CounterRequest =
  | { action: "subscribe"; subscriberId: string; subscribeToRoomIds: string[] }
  | { action: "update"; id: string; connectionCount: number };

export default class Counter implements Party.Server {
  constructor(readonly room: Party.Room) {}

  cleanupAt() {
    return Date.now() + Number(this.room.env.CLEANUP_ALARM_DELAY_MS ?? CLEANUP_ALARM_DELAY_MS);
  }

  async updatePage(pageId: string, update: (state: PageState) => void) {
    const state = (await this.room.storage.get<PageState>(pageId)) ?? {
      id: pageId,
      connectionCount: 0,
      subscriberIds: [],
    };
    update(state);
    await this.room.storage.put(pageId, state);
    if ((await this.room.storage.getAlarm()) === null) {
      await this.room.storage.setAlarm(this.cleanupAt());
    }
    return state;
  }

  async onRequest(req: Party.Request) {
    const body = req.method === "POST" ? ((await req.json().catch(() => null)) as CounterRequest | null) : null;
    if (body?.action === "subscribe" && Array.isArray(body.subscribeToRoomIds)) {
      const summary: Record<string, number> = {};
      for (const pageId of body.subscribeToRoomIds) {
        const state = await this.updatePage(pageId, (state) => {
          state.subscriberIds = [body.subscriberId, ...state.subscriberIds.filter((id) => id !== body.subscriberId)];
        });
        summary[state.id] = state.connectionCount;
      }
      return Response.json(summary);
    }
    if (body?.action === "update" && typeof body.id === "string") {
      const state = await this.updatePage(body.id, (state) => {
        state.connectionCount = body.connectionCount;
      });
      const update = JSON.stringify({ action: "update", id: state.id, connectionCount: state.connectionCount });
      await Promise.all(
        state.subscriberIds.map((subscriber) =>
          this.room.context.parties.page.get(subscriber).fetch({ method: "POST", body: update }),
        ),
      );
      return Response.json({ success: true });
    }
    return new Response("Bad request", { status: 400 });
  }

  async onAlarm() {
    const pages = await this.room.storage.list<PageState>();
    for (const [pageId, state] of pages) {
      if (state.connectionCount === 0) await this.room.storage.delete(pageId);
    }
    if ((await this.room.storage.list()).size > 0) {
      await this.room.storage.setAlarm(this.cleanupAt());
    }
  }
}
