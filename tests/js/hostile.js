// A party that misbehaves on request, in plain JavaScript: each message or
// path does one bad thing. `ping` answers `pong starts=<n>`, where n counts
// the instances started (kept in storage), so a test sees whether the
// misdeed cost the instance.
// Logged while the build snapshots the module: the host hears it at the first event.
console.log("hostile.js loaded");

export default class Hostile {
  constructor(room) {
    this.room = room;
  }

  async onStart() {
    if (this.room.id === "bad-start") throw new Error("onStart fails on purpose");
    this.starts = ((await this.room.storage.get("starts")) ?? 0) + 1;
    await this.room.storage.put("starts", this.starts);
  }

  async onMessage(message, sender) {
    await this.misbehave(message);
    if (message === "ping") sender.send(`pong starts=${this.starts}`);
  }

  async onRequest(req) {
    const misdeed = new URL(req.url).pathname.split("/").pop();
    await this.misbehave(misdeed);
    return new Response(misdeed === "defer" ? await deferred() : `survived ${misdeed} starts=${this.starts}`);
  }

  async misbehave(misdeed) {
    switch (misdeed) {
      case "spin":
        for (;;) {}
      case "grow": {
        const hoard = [];
        for (;;) hoard.push(new Uint8Array(8 << 20));
      }
      case "recurse": {
        const down = (depth) => down(depth + 1) + 1;
        return down(0);
      }
      case "throw":
        throw new Error("thrown on purpose");
      case "hang":
        return new Promise(() => {});
      case "timer":
        return new Promise((resolve) => setTimeout(resolve, 1000));
      case "interval":
        return setInterval(() => {}, 10);
    }
  }
}

/** setTimeout with no delay runs later in the same event. */
function deferred() {
  return new Promise((resolve) => setTimeout(() => resolve("deferred ran"), 0));
}
