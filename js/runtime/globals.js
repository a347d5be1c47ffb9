// The web globals a PartyKit server expects, where the engine's own differ.
//
// Evaluated before the party's code (the bundle imports it first), so the
// party and its npm packages see these from their first line.
//
// - `console` writes to the host's log, tagged with party and room, at the
//   level its method names.
// - `setTimeout(fn)` with no delay (or 0) runs `fn` later in the same event,
//   as a deferral; with a delay, and `setInterval`, throw: nothing runs
//   between events, so a timer could never fire. Work for later belongs in
//   the room's alarm (`room.storage.setAlarm`).

import { log } from "partyhost:party/runtime@0.2.0";

/** The engine's own timer, kept for the runtime's idle detection. */
export const engineSetTimeout = globalThis.setTimeout.bind(globalThis);
export const engineClearTimeout = globalThis.clearTimeout.bind(globalThis);

/** Zero-delay timers the party has scheduled and that have not run yet. */
const deferred = new Set();

/** How many zero-delay timers of the party are still due in this event. */
export function deferredCount() {
  return deferred.size;
}

function timersUnavailable(what) {
  return new Error(
    `${what} is not available in a partyhost party: nothing runs between events, ` +
      "so the timer could never fire. Use this.room.storage.setAlarm(time) and onAlarm() " +
      "for work later; setTimeout(fn) with no delay runs fn later in the same event.",
  );
}

globalThis.setTimeout = function setTimeout(fn, delay, ...args) {
  if (delay !== undefined && Number(delay) > 0) throw timersUnavailable(`setTimeout(fn, ${delay})`);
  if (typeof fn !== "function") throw new TypeError("setTimeout needs a function");
  let id;
  id = engineSetTimeout(() => {
    deferred.delete(id);
    fn(...args);
  }, 0);
  deferred.add(id);
  return id;
};
globalThis.clearTimeout = function clearTimeout(id) {
  if (deferred.delete(id)) engineClearTimeout(id);
};
globalThis.setInterval = function setInterval() {
  throw timersUnavailable("setInterval");
};
globalThis.clearInterval = function clearInterval() {};

/** Stack frames an error's log line shows. */
const STACK_FRAMES = 12;

/** One log line from console arguments, like a browser's console. */
export function describe(values) {
  return values.map(describeOne).join(" ");
}

function describeOne(value) {
  if (typeof value === "string") return value;
  if (value instanceof Error) {
    // Deep recursion makes stacks of thousands of frames: the first few tell.
    const frames = (value.stack ?? "").split("\n").filter(Boolean);
    const shown = frames.slice(0, STACK_FRAMES).join("\n");
    const more = frames.length > STACK_FRAMES ? `\n... ${frames.length - STACK_FRAMES} more frames` : "";
    return shown ? `${value}\n${shown}${more}` : String(value);
  }
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value !== "object" || value === null) return String(value);
  try {
    return JSON.stringify(value, (_key, v) => (typeof v === "bigint" ? `${v}n` : v));
  } catch {
    return String(value);
  }
}

/**
 * Lines logged while the module loads: that runs when the build snapshots
 * it, where no host is there to log to. They go out with the first event.
 */
let early = [];
const EARLY_LINES = 64;

/** Called at each event: from now on, lines go straight to the host. */
export function hostIsListening() {
  if (early === null) return;
  const lines = early;
  early = null;
  for (const [level, line] of lines) log(level, line);
}

function write(level, line) {
  if (early === null) log(level, line);
  else if (early.length < EARLY_LINES) early.push([level, line]);
}

const levels = { trace: "trace", debug: "debug", log: "info", info: "info", warn: "warn", error: "error" };
const hostConsole = {};
for (const [method, level] of Object.entries(levels)) {
  hostConsole[method] = (...values) => write(level, describe(values));
}
hostConsole.assert = (condition, ...values) => {
  if (!condition) write("error", `Assertion failed${values.length ? ": " + describe(values) : ""}`);
};
hostConsole.dir = hostConsole.log;
hostConsole.table = hostConsole.log;
globalThis.console = hostConsole;
