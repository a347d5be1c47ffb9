//! Collaborative documents: one Yjs document per room, on the wire what
//! y-partykit's server speaks to its `YPartyKitProvider` (the y-websocket
//! protocol, binary frames), so the original client works unchanged:
//! `new YPartyKitProvider(host, room, doc, { party: "yjs" })`.
//!
//! - On connect the room sends sync step 1 (its state vector) and, if any,
//!   everyone's awareness. A client's step 1 is answered with step 2 (what
//!   it lacks); its step 2 and updates are applied, stored, and sent on to
//!   the others. Awareness is applied and sent to everyone, the sender
//!   included (clients count it as a sign of life); a closed connection's
//!   awareness is removed and that removal sent on.
//! - Messages the client splits (`y-pk-batch#` text frames around binary
//!   chunks, for messages over 1 MB) are put back together.
//! - Storage: see [`persist`]; the document survives restarts, eviction and
//!   hibernation, and is compacted by size, when the last client leaves,
//!   and by an alarm.
//! - Read-only connections: `?readonly=1`, or any connection without
//!   `?token=<YJS_WRITE_TOKEN>` when that var is set. They sync and show
//!   their awareness, and their edits are ignored (as y-partykit's
//!   `readOnly`).
//! - A document may store at most `YJS_MAX_BYTES` (default 5 MiB); an edit
//!   past it is refused and its sender closed with 4413 saying so; frames
//!   that are not the protocol close theirs with 4400.

mod persist;

use partyhost_guest::{
    AlarmInfo, Close, Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party,
    log, now,
};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::collections::{BTreeSet, HashMap};
use std::rc::Rc;
use yrs::sync::{Awareness, AwarenessUpdate, Message as YMessage, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ClientID, Doc, ReadTxn, StateVector, Transact, Update, WriteTxn};

use persist::Stored;

const DEFAULT_MAX_BYTES: usize = 5 << 20;
/// Updates wait at most this long before the alarm folds them into the
/// snapshot.
const COMPACT_AFTER_MS: u64 = 30_000;
/// Close codes (an application may send 1000 and 3000-4999 only): an edit
/// past the size limit, and frames that are not the protocol.
const TOO_LARGE: u16 = 4413;
const INVALID: u16 = 4400;
/// The largest awareness update a client may send (a user's name, colour
/// and cursor take well under a kilobyte).
const MAX_AWARENESS_BYTES: usize = 16 * 1024;
/// The text frames around a message the client sent in chunks.
const BATCH_PREFIX: &str = "y-pk-batch#";

/// What the room knows of one connection.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Peer {
    #[serde(rename = "readOnly")]
    read_only: bool,
    /// The awareness client ids this connection speaks for.
    #[serde(skip)]
    clients: BTreeSet<u64>,
    /// A message arriving in chunks.
    #[serde(skip)]
    batch: Option<Batch>,
}

#[derive(Debug, Deserialize)]
struct BatchMarker {
    id: String,
    r#type: String,
    #[serde(default)]
    size: usize,
    #[serde(default)]
    count: usize,
}

#[derive(Debug)]
struct Batch {
    id: String,
    size: usize,
    count: usize,
    chunks: usize,
    bytes: Vec<u8>,
}

struct Yjs {
    room: Room,
    awareness: RefCell<Awareness>,
    /// Updates the document emitted in the last transaction (the observer
    /// cannot send or store: the transaction is still open).
    emitted: Rc<RefCell<Vec<Vec<u8>>>>,
    stored: RefCell<Stored>,
    peers: RefCell<HashMap<String, Peer>>,
    max_bytes: usize,
    write_token: Option<String>,
}

impl Yjs {
    fn doc(&self) -> Doc {
        self.awareness.borrow().doc().clone()
    }

    /// The connection's entry, made from its stored state if this instance
    /// has not seen it (after a restart or eviction).
    fn with_peer<T>(&self, conn: &Connection, f: impl FnOnce(&mut Peer) -> T) -> T {
        let mut peers = self.peers.borrow_mut();
        // Without a stored state (it could not be kept), read-only.
        let peer = peers
            .entry(conn.id().to_owned())
            .or_insert_with(|| conn.state().unwrap_or(Peer { read_only: true, ..Peer::default() }));
        f(peer)
    }

    /// Sync step 1: the room's state vector, for a client to answer with
    /// what the room lacks.
    fn sync_step_1(&self) -> Vec<u8> {
        let state = self.doc().transact().state_vector();
        YMessage::Sync(SyncMessage::SyncStep1(state)).encode_v1()
    }

    /// One message per frame, as y-partykit reads them (a frame packed
    /// with thousands of requests would cost the room that many answers).
    /// A reassembled batch carries document data only.
    fn handle_frame(&self, bytes: &[u8], sender: &Connection, batched: bool) {
        let message = match YMessage::decode_v1(bytes) {
            Ok(message) => message,
            Err(e) => {
                log::warn(&format!("connection {}: not a y-websocket message: {e}", sender.id()));
                sender.close_with(INVALID, "not a y-websocket message");
                return;
            }
        };
        if matches!(message, YMessage::Awareness(_)) && (batched || bytes.len() > MAX_AWARENESS_BYTES) {
            log::warn(&format!(
                "connection {}: awareness update of {} bytes ignored",
                sender.id(),
                bytes.len()
            ));
            return;
        }
        match message {
            YMessage::Sync(SyncMessage::SyncStep1(their_state)) => {
                let missing = self.doc().transact().encode_state_as_update_v1(&their_state);
                sender.send(YMessage::Sync(SyncMessage::SyncStep2(missing)).encode_v1());
            }
            YMessage::Sync(SyncMessage::SyncStep2(update) | SyncMessage::Update(update)) => {
                if !self.with_peer(sender, |peer| peer.read_only) {
                    self.apply(&update, sender);
                }
            }
            YMessage::Awareness(update) => self.apply_awareness(update, bytes, sender),
            YMessage::AwarenessQuery => {
                if let Ok(all) = self.awareness.borrow().update() {
                    sender.send(YMessage::Awareness(all).encode_v1());
                }
            }
            YMessage::Auth(_) | YMessage::Custom(..) => {}
        }
    }

    /// Applies a client's update; what it changed is stored, then sent to
    /// the other clients (the host sends nothing before the write commits).
    fn apply(&self, update: &[u8], sender: &Connection) {
        if self.stored.borrow().bytes() + update.len() > self.max_bytes {
            self.compact();
            let stored = self.stored.borrow().bytes();
            if stored + update.len() > self.max_bytes {
                self.refuse_as_too_large(sender, update.len());
                return;
            }
        }
        let decoded = match Update::decode_v1(update) {
            Ok(decoded) => decoded,
            Err(e) => {
                log::warn(&format!("connection {}: invalid Yjs update: {e}", sender.id()));
                sender.close_with(INVALID, "invalid Yjs update");
                return;
            }
        };
        let doc = self.doc();
        let (applied, incomplete) = {
            let mut txn = doc.transact_mut();
            let applied = txn.apply_update(decoded);
            // Parts waiting for edits the room never got would be neither
            // stored nor counted: drop them, and ask the sender (below).
            let incomplete = txn.has_missing_updates();
            if incomplete {
                txn.prune_pending();
            }
            (applied, incomplete)
        };
        // Whatever was integrated is stored and sent on, even if the rest
        // of the update failed.
        let emitted = std::mem::take(&mut *self.emitted.borrow_mut());
        for change in emitted {
            if let Err(e) = self.stored.borrow_mut().append(&self.room.storage(), &change) {
                // Memory now holds an edit storage does not: start again
                // from storage (the host discards this call's writes).
                panic!("could not store an update of {} bytes: {e:?}", change.len());
            }
            let frame = YMessage::Sync(SyncMessage::Update(change)).encode_v1();
            self.room.broadcast(frame, &[sender.id()]);
        }
        if let Err(e) = applied {
            log::warn(&format!("connection {}: Yjs update not applied: {e}", sender.id()));
            sender.close_with(INVALID, "invalid Yjs update");
            return;
        }
        if incomplete {
            sender.send(self.sync_step_1());
        }
        if self.stored.borrow().wants_compaction() {
            self.compact();
        } else if self.stored.borrow().has_updates() && self.room.storage().get_alarm().is_none() {
            self.room.storage().set_alarm(now() + COMPACT_AFTER_MS);
        }
    }

    /// Closes `sender`, whose edit of `bytes` would take the document past
    /// its size limit.
    fn refuse_as_too_large(&self, sender: &Connection, bytes: usize) {
        let reason = format!("the document is over its size limit ({} bytes)", self.max_bytes);
        log::warn(&format!("connection {}: edit of {bytes} bytes refused: {reason}", sender.id()));
        sender.close_with(TOO_LARGE, &reason);
    }

    /// Applies a client's awareness and sends its `frame` on as it came.
    fn apply_awareness(&self, update: AwarenessUpdate, frame: &[u8], sender: &Connection) {
        let summary = match self.awareness.borrow_mut().apply_update_summary(update) {
            Ok(summary) => summary,
            Err(e) => {
                log::warn(&format!("connection {}: invalid awareness update: {e}", sender.id()));
                return;
            }
        };
        if let Some(summary) = summary {
            self.with_peer(sender, |peer| {
                peer.clients.extend(summary.added.iter().chain(&summary.updated).map(ClientID::get));
                for removed in &summary.removed {
                    peer.clients.remove(&removed.get());
                }
            });
        }
        self.room.broadcast(frame.to_vec(), &[]);
    }

    /// Folds the stored updates into one snapshot of the document.
    fn compact(&self) {
        if !self.stored.borrow().has_updates() {
            return;
        }
        let state = self.doc().transact().encode_state_as_update_v1(&StateVector::default());
        if let Err(e) = self.stored.borrow_mut().compact(&self.room.storage(), &state) {
            panic!("could not store a snapshot of {} bytes: {e:?}", state.len());
        }
    }

    fn receive_text(&self, text: &str, sender: &Connection) {
        let Some(marker) = text.strip_prefix(BATCH_PREFIX) else { return };
        let Ok(marker) = serde_json::from_str::<BatchMarker>(marker) else {
            sender.close_with(INVALID, "malformed y-pk-batch marker");
            return;
        };
        match marker.r#type.as_str() {
            "start" if marker.size <= self.max_bytes => self.with_peer(sender, |peer| {
                peer.batch = Some(Batch {
                    id: marker.id,
                    size: marker.size,
                    count: marker.count,
                    chunks: 0,
                    bytes: Vec::new(),
                });
            }),
            "start" => self.refuse_as_too_large(sender, marker.size),
            "end" => {
                let batch = self.with_peer(sender, |peer| peer.batch.take());
                match batch {
                    Some(batch)
                        if batch.id == marker.id
                            && batch.chunks == batch.count
                            && batch.bytes.len() == batch.size =>
                    {
                        self.handle_frame(&batch.bytes, sender, true);
                    }
                    _ => sender.close_with(INVALID, "y-pk-batch chunks do not add up"),
                }
            }
            _ => sender.close_with(INVALID, "malformed y-pk-batch marker"),
        }
    }

    /// A binary frame: a chunk of a batch under way, else a message.
    fn receive_binary(&self, bytes: Vec<u8>, sender: &Connection) {
        let overflow = self.with_peer(sender, |peer| {
            let batch = peer.batch.as_mut()?;
            batch.chunks += 1;
            batch.bytes.extend_from_slice(&bytes);
            Some(batch.bytes.len() > batch.size)
        });
        match overflow {
            None => self.handle_frame(&bytes, sender, false),
            Some(false) => {}
            Some(true) => sender.close_with(INVALID, "y-pk-batch chunks do not add up"),
        }
    }
}

impl Party for Yjs {
    fn new(room: Room) -> Self {
        let doc = Doc::new();
        let emitted = Rc::new(RefCell::new(Vec::new()));
        let sink = emitted.clone();
        // A fresh document has no transaction open: this cannot fail.
        let _ =
            doc.observe_update_v1("partyhost", move |_, event| sink.borrow_mut().push(event.update.clone()));
        let max_bytes = room.env("YJS_MAX_BYTES").and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MAX_BYTES);
        let write_token = room.env("YJS_WRITE_TOKEN").filter(|token| !token.is_empty());
        Self {
            room,
            awareness: RefCell::new(Awareness::new(doc)),
            emitted,
            stored: RefCell::new(Stored::default()),
            peers: RefCell::new(HashMap::new()),
            max_bytes,
            write_token,
        }
    }

    async fn on_start(&self) {
        let (stored, blobs) = match Stored::load(&self.room.storage()) {
            Ok(loaded) => loaded,
            Err(e) => panic!("could not read the stored document: {e:?}"),
        };
        let doc = self.doc();
        {
            let mut txn = doc.transact_mut();
            for blob in blobs {
                // Going on without it would compact the loss into the
                // snapshot: stop instead, and leave storage as it is.
                let update = Update::decode_v1(&blob)
                    .unwrap_or_else(|e| panic!("a stored update does not decode: {e}"));
                if let Err(e) = txn.apply_update(update) {
                    panic!("a stored update does not apply: {e}");
                }
            }
        }
        self.emitted.borrow_mut().clear();
        *self.stored.borrow_mut() = stored;
        // After an eviction or a restart: clients still connected send what
        // the stored document lacks (an edit the room lost with a trap).
        let step_1 = self.sync_step_1();
        for conn in self.room.connections() {
            conn.send(step_1.clone());
        }
    }

    async fn on_connect(&self, conn: Connection, ctx: ConnectionContext) {
        let asked_read_only = matches!(ctx.request.query("readonly").as_deref(), Some("1" | "true"));
        let without_token = self
            .write_token
            .as_deref()
            .is_some_and(|token| ctx.request.query("token").as_deref() != Some(token));
        let peer = Peer { read_only: asked_read_only || without_token, ..Peer::default() };
        if let Err(e) = conn.set_state(&peer) {
            log::warn(&format!("connection {}: state not kept: {e:?}", conn.id()));
        }
        self.peers.borrow_mut().insert(conn.id().to_owned(), peer);
        conn.send(self.sync_step_1());
        if let Ok(all) = self.awareness.borrow().update()
            && !all.clients.is_empty()
        {
            conn.send(YMessage::Awareness(all).encode_v1());
        }
    }

    async fn on_message(&self, message: Message, sender: Connection) {
        match message {
            Message::Binary(bytes) => self.receive_binary(bytes, &sender),
            Message::Text(text) => self.receive_text(&text, &sender),
        }
    }

    async fn on_close(&self, conn: Connection, _close: Close) {
        let peer = self.peers.borrow_mut().remove(conn.id());
        let clients: Vec<ClientID> =
            peer.map(|peer| peer.clients.into_iter().map(ClientID::new).collect()).unwrap_or_default();
        if !clients.is_empty() {
            let mut awareness = self.awareness.borrow_mut();
            for client in &clients {
                awareness.remove_state(*client);
            }
            if let Ok(gone) = awareness.update_with_clients(clients) {
                self.room.broadcast(YMessage::Awareness(gone).encode_v1(), &[conn.id()]);
            }
        }
        if self.room.connections().iter().all(|other| other.id() == conn.id()) {
            self.compact();
        }
    }

    async fn on_alarm(&self, _info: AlarmInfo) {
        self.compact();
    }

    /// `GET`: the document's size, as stored and as one update.
    async fn on_request(&self, _request: Request) -> Response {
        let state = self.doc().transact().encode_state_as_update_v1(&StateVector::default());
        let stored = self.stored.borrow();
        Response::json(&serde_json::json!({
            "stateBytes": state.len(),
            "storedBytes": stored.bytes(),
            "connections": self.peers.borrow().len(),
        }))
    }
}

export_party!(Yjs);
