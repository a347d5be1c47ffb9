// example-reactions' per-connection limiter. Its state lives in the
// connection's state, so it survives the room's instance hibernating.
import type * as Party from "partykit/server";

type Limiter = { nextAllowedTime?: number; violations: number };

/** Runs `action` unless the sender is inside its cooldown; then it gets
 * `slowdown`, and at the 10th violation in a row `goaway` and a close. A
 * cooldown of 0 turns the limiter off. */
export function rateLimit(sender: Party.Connection<Limiter>, cooldownMs: number, action: () => void) {
  if (cooldownMs === 0) return action();
  const now = Date.now();
  const limiter: Limiter = { violations: 0, ...(sender.state ?? {}) };
  let next = limiter.nextAllowedTime ?? now;
  if (next <= now) {
    action();
    next = now;
    limiter.violations = 0;
  } else {
    limiter.violations++;
    if (limiter.violations < 10) {
      sender.send("slowdown");
    } else {
      sender.send("goaway");
      sender.close();
    }
  }
  limiter.nextAllowedTime = next + cooldownMs;
  sender.setState(limiter);
}
