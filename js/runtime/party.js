// PartyKit's server API over partyhost's WIT world (wit/party.wit).
//
// `handlers(Server)` turns a class written against `partykit/server` into
// the `handlers` export. The host calls one export at a time; each returns
// once the party's handler has finished or is parked awaiting a room-to-room
// fetch (the engine's event loop is idle). A parked `onRequest` or gate
// reports its result later through `tasks`, when `resume` delivers the
// response it awaited. A handler that throws is logged; a promise that never
// settles just stays in memory: neither kills the instance.

import * as room from "partyhost:party/room@0.2.0";
import * as connections from "partyhost:party/connections@0.2.0";
import * as storage from "partyhost:party/storage@0.2.0";
import * as alarms from "partyhost:party/alarms@0.2.0";
import * as outbound from "partyhost:party/outbound@0.2.0";
import * as tasks from "partyhost:party/tasks@0.2.0";
import { engineSetTimeout, engineClearTimeout, deferredCount, describe, hostIsListening } from "./globals.js";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// --- running one event -----------------------------------------------------

/**
 * Runs `work` and waits until it settles or the event loop is idle (only
 * the engine's timer callbacks run after every microtask): `{ done: true,
 * value }` or `{ done: true, error }` when it finished, `{ done: false }`
 * when it is parked.
 */
function settle(work) {
  hostIsListening();
  return new Promise((resolve) => {
    let finished = false;
    let promise;
    try {
      promise = Promise.resolve(work());
    } catch (error) {
      promise = Promise.reject(error);
    }
    let timer;
    const done = (outcome) => {
      finished = true;
      // A finished handler leaves no timer for the engine to wait for.
      engineClearTimeout(timer);
      resolve(outcome);
    };
    promise.then(
      (value) => done({ done: true, value }),
      (error) => done({ done: true, error }),
    );
    const check = () => {
      if (finished) return;
      // The party deferred work with setTimeout(fn): let it run first.
      if (deferredCount() > 0) timer = engineSetTimeout(check, 0);
      else resolve({ done: false });
    };
    timer = engineSetTimeout(check, 0);
  });
}

/** Waits until the event loop is idle: what `resume` needs. */
function idle() {
  return settle(() => new Promise(() => {}));
}

function logError(what, error) {
  console.error(`${what} threw: ${describe([error])}`);
}

// --- values across the boundary ----------------------------------------------

/** A refusal from the host as an Error naming the call. */
function refused(call, error) {
  const refusal = error?.payload ?? error;
  if (refusal && typeof refusal === "object" && "tag" in refusal) {
    const detail = refusal.val === undefined ? "" : `: ${refusal.val}`;
    return new Error(`${call} refused (${refusal.tag})${detail}`);
  }
  return error instanceof Error ? error : new Error(`${call} failed: ${error}`);
}

function hostCall(call, f) {
  try {
    return f();
  } catch (error) {
    throw refused(call, error);
  }
}

function bytesOf(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError("expected a string, ArrayBuffer or typed array");
}

/** A message as the WIT's `message` variant. */
function wireMessage(message) {
  if (typeof message === "string") return { tag: "text", val: message };
  return { tag: "binary", val: bytesOf(message) };
}

/** The WIT's `message` as PartyKit hands it to `onMessage`. */
function partyMessage(message) {
  if (message.tag === "text") return message.val;
  const bytes = message.val;
  return bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
}

const bodiless = new Set(["GET", "HEAD"]);

/** The WIT's `request` as a fetch `Request`. */
function toRequest(request) {
  const headers = new Headers();
  for (const { name, value } of request.headers) headers.append(name, value);
  const init = { method: request.method, headers };
  if (!bodiless.has(request.method) && request.body.length > 0) init.body = request.body;
  return new Request(request.url, init);
}

async function bodyBytes(message) {
  return message.body === null ? new Uint8Array() : new Uint8Array(await message.arrayBuffer());
}

function headerList(headers) {
  const list = [];
  for (const [name, value] of headers) list.push({ name: name.toLowerCase(), value });
  return list;
}

/** A fetch `Request` as the WIT's `request`. */
async function fromRequest(request) {
  return { method: request.method, url: request.url, headers: headerList(request.headers), body: await bodyBytes(request) };
}

/** A fetch `Response` as the WIT's `response`. */
async function fromResponse(response) {
  if (!(response instanceof Response)) {
    throw new TypeError(`expected a Response, got ${describe([response])}`);
  }
  return { status: response.status, headers: headerList(response.headers), body: await bodyBytes(response) };
}

function toResponse(response) {
  const headers = new Headers();
  for (const { name, value } of response.headers) headers.append(name, value);
  const nullBody = response.status === 204 || response.status === 205 || response.status === 304;
  return new Response(nullBody ? null : response.body, { status: response.status, headers });
}

function internalError(what) {
  return { status: 500, headers: [{ name: "content-type", value: "text/plain;charset=UTF-8" }], body: encoder.encode(`${what} failed\n`) };
}

/** Storage and connection state hold JSON (PartyKit uses structured clone). */
function toJson(what, value) {
  const text = JSON.stringify(value);
  if (text === undefined) throw new TypeError(`${what}: ${typeof value} cannot be stored (values are JSON)`);
  return encoder.encode(text);
}

function fromJson(bytes) {
  return JSON.parse(decoder.decode(bytes));
}

// --- outbound fetches ---------------------------------------------------------

/** Fetches in flight: ticket -> { resolve, reject }. */
const inFlight = new Map();

function fetchRoom(party, id, input, init) {
  return new Promise((resolve, reject) => {
    const request = input instanceof Request ? new Request(input, init) : new Request(new URL(String(input ?? "/"), "http://room/"), init);
    fromRequest(request).then((wire) => {
      let ticket;
      try {
        ticket = hostCall(`fetch to ${party}/${id}`, () => outbound.fetch(party, id, wire));
      } catch (error) {
        return reject(error);
      }
      inFlight.set(ticket, { resolve, reject });
    }, reject);
  });
}

/** PartyKit's `context.parties`: `parties.<name>.get(id).fetch(...)`. */
const parties = new Proxy(
  {},
  {
    get(_target, party) {
      if (typeof party !== "string") return undefined;
      return {
        get(id) {
          return {
            fetch: (input, init) => {
              // `stub.fetch(init)` as PartyKit documents it, or `stub.fetch(path, init)`.
              if (input !== undefined && typeof input === "object" && !(input instanceof Request) && !(input instanceof URL)) {
                return fetchRoom(party, id, "/", input);
              }
              return fetchRoom(party, id, input, init);
            },
            connect() {
              throw new Error("stub.connect() is not available in partyhost: rooms reach each other with fetch");
            },
          };
        },
      };
    },
  },
);

// --- the room -----------------------------------------------------------------

let varsCache;
function env() {
  if (varsCache === undefined) varsCache = Object.fromEntries(room.vars());
  return varsCache;
}

/** Connections of this instance by id, so a party sees the same object each event. */
const known = new Map();

/** One connection's stored blob: `{ s: state, a: attachment }` as JSON. */
function decodeBlob(bytes) {
  if (bytes === undefined) return {};
  try {
    const blob = fromJson(bytes);
    return blob && typeof blob === "object" ? blob : {};
  } catch {
    return {};
  }
}

class Connection {
  #blob;
  constructor(info) {
    this.id = info.id;
    this.uri = info.uri;
    this.tags = info.tags;
    this.#blob = decodeBlob(info.state);
    this.readyState = 1;
  }

  /** @deprecated in PartyKit: the connection is the socket. */
  get socket() {
    return this;
  }

  get url() {
    return this.uri;
  }

  send(message) {
    hostCall("connection.send", () => connections.send(this.id, wireMessage(message)));
  }

  close(code = 1000, reason = "") {
    hostCall("connection.close", () => connections.close(this.id, code, reason));
  }

  get state() {
    return this.#blob.s ?? null;
  }

  setState(next) {
    const state = typeof next === "function" ? next(this.state) : next;
    this.#store({ ...this.#blob, s: state ?? undefined });
    return this.state;
  }

  serializeAttachment(attachment) {
    this.#store({ ...this.#blob, a: attachment ?? undefined });
  }

  deserializeAttachment() {
    return this.#blob.a ?? null;
  }

  #store(blob) {
    const empty = blob.s === undefined && blob.a === undefined;
    const bytes = empty ? undefined : toJson("connection state", blob);
    hostCall("connection.setState", () => connections.setState(this.id, bytes));
    this.#blob = empty ? {} : fromJson(bytes);
  }

  // Enough of the WebSocket shape for code that checks it.
  addEventListener() {}
  removeEventListener() {}
}

function connectionFor(info) {
  let connection = known.get(info.id);
  if (connection === undefined || connection.uri !== info.uri) {
    connection = new Connection(info);
    known.set(info.id, connection);
  }
  return connection;
}

function connectionById(id) {
  const cached = known.get(id);
  if (cached) return cached;
  const info = connections.getConnection(id);
  return info ? connectionFor(info) : undefined;
}

/**
 * A connection that is closing: the host still tells its state, uri and
 * tags during onClose and onError, also to a fresh instance after
 * hibernation.
 */
function departing(id) {
  return connectionById(id) ?? new Connection({ id, uri: "", tags: [id], state: undefined });
}

function keysArgument(keys) {
  return Array.isArray(keys) ? keys : null;
}

function entriesMap(entries) {
  return new Map(entries.map(([key, value]) => [key, fromJson(value)]));
}

const partyStorage = {
  async get(keys) {
    const many = keysArgument(keys);
    if (many) return entriesMap(hostCall("storage.get", () => storage.getMany(many)));
    const value = storage.get(String(keys));
    return value === undefined ? undefined : fromJson(value);
  },
  async put(key, value) {
    if (typeof key === "object" && key !== null) {
      const entries = Object.entries(key).map(([k, v]) => [k, toJson(`storage.put("${k}")`, v)]);
      hostCall("storage.put", () => storage.putMany(entries));
      return;
    }
    const bytes = toJson(`storage.put("${key}")`, value);
    hostCall("storage.put", () => storage.put(String(key), bytes));
  },
  async delete(keys) {
    const many = keysArgument(keys);
    if (many) return hostCall("storage.delete", () => storage.deleteMany(many));
    return storage.delete(String(keys));
  },
  async deleteAll() {
    storage.deleteAll();
  },
  async list(options = {}) {
    const wire = {
      prefix: options.prefix,
      start: options.start,
      startAfter: options.startAfter,
      end: options.end,
      limit: options.limit,
      reverse: Boolean(options.reverse),
    };
    return entriesMap(hostCall("storage.list", () => storage.list(wire)));
  },
  async getAlarm() {
    const at = alarms.get();
    return at === undefined ? null : Number(at);
  },
  async setAlarm(time) {
    const at = time instanceof Date ? time.getTime() : Number(time);
    if (!Number.isFinite(at)) throw new TypeError(`setAlarm needs a time, got ${describe([time])}`);
    alarms.set(BigInt(Math.max(0, Math.floor(at))));
  },
  async deleteAlarm() {
    alarms.delete();
  },
  async sync() {},
  async transaction(closure) {
    // Writes commit when the event ends, all together; there is no rollback.
    return closure(partyStorage);
  },
};

const context = { parties };

/** PartyKit's `Party.Room`, built once per instance. */
function makeRoom() {
  return {
    get id() {
      return room.id();
    },
    get internalID() {
      return `${room.party()}/${room.id()}`;
    },
    get name() {
      return room.party();
    },
    get env() {
      return env();
    },
    storage: partyStorage,
    context,
    parties,
    broadcast(message, without = []) {
      connections.broadcast(wireMessage(message), without ?? []);
    },
    getConnection(id) {
      return connectionById(id);
    },
    *getConnections(tag) {
      for (const info of connections.getConnections(tag ?? undefined)) yield connectionFor(info);
    },
    get connections() {
      return new Map([...this.getConnections()].map((c) => [c.id, c]));
    },
    blockConcurrencyWhile(closure) {
      return closure();
    },
  };
}

// --- the handlers export --------------------------------------------------------

/** The `handlers` export for a PartyKit server class. */
export function handlers(Server) {
  // Checked when the build snapshots the module, so a wrong export fails the build.
  if (typeof Server !== "function" || Server.prototype === undefined) {
    throw new TypeError(
      `the party's default export must be a class implementing Party.Server (export default class ... ), got ${describe([Server])}`,
    );
  }
  let server;
  let started;

  /** The server object, constructed once per instance. */
  function constructed() {
    server ??= new Server(makeRoom());
    return server;
  }

  /** The server, with onStart run before any handler. */
  function ready() {
    started ??= Promise.resolve(constructed().onStart?.());
    return started.then(() => server);
  }

  /**
   * Runs one event handler whose result the host does not wait for. A
   * failure is logged; with `fails`, it also fails the call (the host
   * retries a failed onAlarm, as Durable Objects do).
   */
  async function event(what, run, fails = false) {
    let promise;
    const outcome = await settle(() => (promise = ready().then(run)));
    // Parked: a failure after its fetch returns is logged then.
    if (!outcome.done) promise.catch((error) => logError(what, error));
    else if ("error" in outcome) {
      logError(what, outcome.error);
      if (fails) throw outcome.error;
    }
  }

  /** Like `event`, but the result matters: `{ tag: 'ready', val }` or `{ tag: 'pending' }`. */
  async function answered(what, task, work, finish, complete, failed) {
    let promise;
    const outcome = await settle(() => {
      promise = work();
      return promise;
    });
    if (!outcome.done) {
      promise.then(finish).then(
        (value) => complete(task, value),
        (error) => {
          logError(what, error);
          complete(task, failed);
        },
      );
      return { tag: "pending" };
    }
    if ("error" in outcome) {
      logError(what, outcome.error);
      return { tag: "ready", val: failed };
    }
    try {
      return { tag: "ready", val: await finish(outcome.value) };
    } catch (error) {
      logError(what, error);
      return { tag: "ready", val: failed };
    }
  }

  function gate(name) {
    const method = Server[name];
    return async (task, request) => {
      const lobby = { id: room.id(), env: env(), parties, context };
      const ctx = { waitUntil() {}, passThroughOnException() {} };
      const failed = { tag: "refuse", val: internalError(name) };
      return answered(
        name,
        task,
        () => Promise.resolve(method.call(Server, toRequest(request), lobby, ctx)),
        async (result) => {
          if (result instanceof Response) return { tag: "refuse", val: await fromResponse(result) };
          if (result instanceof Request) return { tag: "pass", val: await fromRequest(result) };
          if (result === undefined || result === null) return { tag: "pass", val: request };
          throw new TypeError(`${name} must return a Request or a Response, got ${describe([result])}`);
        },
        tasks.completeGate,
        failed,
      );
    };
  }

  return {
    onStart(_task) {
      // A failed start fails the call: the host drops the instance and
      // starts afresh at the next event, as Durable Objects do.
      return event("onStart", () => {}, true);
    },
    onConnect(_task, id, request) {
      return event("onConnect", (server) => {
        known.delete(id);
        const connection = connectionById(id);
        if (connection === undefined) return;
        return server.onConnect?.(connection, { request: toRequest(request) });
      });
    },
    onMessage(_task, id, message) {
      return event("onMessage", (server) => {
        const connection = connectionById(id);
        if (connection === undefined) return;
        return server.onMessage?.(partyMessage(message), connection);
      });
    },
    onClose(_task, id, code, reason, wasClean) {
      return event("onClose", (server) => {
        const connection = departing(id);
        known.delete(id);
        connection.readyState = 3;
        return server.onClose?.(connection, code, reason, wasClean);
      });
    },
    onError(_task, id, error) {
      return event("onError", (server) => server.onError?.(departing(id), new Error(error)));
    },
    onRequest(task, request) {
      const notFound = { status: 404, headers: [], body: encoder.encode("Not found\n") };
      return answered(
        "onRequest",
        task,
        () =>
          ready().then((server) => {
            if (typeof server.onRequest !== "function") return notFound;
            return server.onRequest(toRequest(request));
          }),
        (response) => (response === notFound ? notFound : fromResponse(response)),
        tasks.completeRequest,
        internalError("onRequest"),
      );
    },
    onAlarm(_task, retryCount) {
      return event("onAlarm", (server) => server.onAlarm?.({ retryCount, isRetry: retryCount > 0 }), true);
    },
    async getConnectionTags(id, request) {
      const outcome = await settle(() =>
        ready().then((server) => {
          if (typeof server.getConnectionTags !== "function") return [];
          const connection = new Connection({ id, uri: request.url, tags: [id], state: undefined });
          return server.getConnectionTags(connection, { request: toRequest(request) });
        }),
      );
      if (!outcome.done) {
        console.error("getConnectionTags awaited something that did not come within the event: no tags");
        return [];
      }
      if ("error" in outcome) {
        logError("getConnectionTags", outcome.error);
        return [];
      }
      return Array.from(outcome.value ?? [], String);
    },
    traits() {
      hostIsListening();
      return {
        beforeConnect: typeof Server.onBeforeConnect === "function",
        beforeRequest: typeof Server.onBeforeRequest === "function",
        hibernate: Boolean(constructed().options?.hibernate),
      };
    },
    onBeforeConnect: gate("onBeforeConnect"),
    onBeforeRequest: gate("onBeforeRequest"),
    async resume(ticket, outcome) {
      const waiter = inFlight.get(ticket);
      inFlight.delete(ticket);
      if (waiter) {
        try {
          if (outcome.tag === "ok") waiter.resolve(toResponse(outcome.val));
          else waiter.reject(new Error(`fetch failed: ${outcome.val}`));
        } catch (error) {
          // A status the Response class refuses, say: the awaiting handler hears it.
          waiter.reject(error);
        }
      }
      await idle();
    },
  };
}
