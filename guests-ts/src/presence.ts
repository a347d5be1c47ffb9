// Who is where in a workshop: the TypeScript twin of guests/presence, on
// the wire like the presence party of epicweb-dev/kcdshop. Messages are
// validated with zod, as the original does: unknown fields are dropped and
// `null` is kept. Users live in connection state, so presence survives the
// room's instance hibernating.
import type * as Party from "partykit/server";
import { z } from "zod";

const UserSchema = z.object({
  id: z.string(),
  avatarUrl: z.string().nullable().optional(),
  name: z.string().nullable().optional(),
  location: z
    .object({
      workshopTitle: z.string().nullable().optional(),
      exercise: z
        .object({
          type: z.enum(["problem", "solution"]).nullable().optional(),
          exerciseNumber: z.number().nullable().optional(),
          stepNumber: z.number().nullable().optional(),
        })
        .nullable()
        .optional(),
    })
    .nullable()
    .optional(),
});
type User = z.infer<typeof UserSchema>;

const MessageSchema = z.discriminatedUnion("type", [
  z.object({ type: z.literal("add-user"), payload: UserSchema }),
  z.object({ type: z.literal("remove-user"), payload: z.object({ id: z.string() }) }),
  z.object({ type: z.literal("add-anonymous-user"), payload: z.object({ id: z.string() }) }),
  z.object({ type: z.literal("presence"), payload: z.unknown() }),
]);

type ConnectionState = { user?: User };

function score(user: User) {
  let score = 0;
  if (user.avatarUrl) score += 1;
  if (user.avatarUrl?.includes("discordapp")) score += 0.5;
  if (user.name) score += 1;
  return score;
}

export default class Presence implements Party.Server {
  options: Party.ServerOptions = { hibernate: true };

  constructor(readonly room: Party.Room) {}

  /** One entry per user id (the last connection's user wins, at the first
   * connection's place), best-described users first. */
  users(): User[] {
    const users = new Map<string, User>();
    for (const connection of this.room.getConnections<ConnectionState>()) {
      const user = connection.state?.user;
      if (user) users.set(user.id, user);
    }
    // Array.prototype.sort is stable: equal scores keep connection order.
    return [...users.values()].sort((a, b) => score(b) - score(a));
  }

  broadcastPresence() {
    this.room.broadcast(JSON.stringify({ type: "presence", payload: { users: this.users() } }));
  }

  onMessage(message: string | ArrayBuffer, sender: Party.Connection<ConnectionState>) {
    if (typeof message !== "string") return;
    let json: unknown;
    try {
      json = JSON.parse(message);
    } catch {
      return;
    }
    const parsed = MessageSchema.safeParse(json);
    if (!parsed.success) return;
    const { data } = parsed;
    switch (data.type) {
      case "add-user":
        sender.setState({ user: data.payload });
        this.broadcastPresence();
        break;
      case "remove-user":
        sender.setState(null);
        this.broadcastPresence();
        break;
      case "add-anonymous-user":
        sender.setState({ user: { id: data.payload.id } });
        break;
    }
  }

  onClose() {
    this.broadcastPresence();
  }

  onError() {
    this.broadcastPresence();
  }

  onRequest(req: Party.Request) {
    if (new URL(req.url).pathname.endsWith("/presence")) {
      return Response.json({ users: this.users() });
    }
    return new Response("not found", { status: 404 });
  }
}
