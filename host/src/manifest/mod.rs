//! `partykit.toml`: the manifest that says which `.wasm` serves which party.
//!
//! [`Manifest`] is the file as written; [`Deployment`] is what the host
//! runs, with names validated, paths resolved against the manifest's folder
//! and vars merged. Every mistake is a [`ManifestError`] variant that names
//! the bad value and, where TOML knows it, the line and column. This module
//! uses no wasmtime and no tokio.

mod edge;
mod error;
mod serve;
mod tenants;

pub use edge::{EdgeLimits, EdgeSpec};
pub use error::ManifestError;
pub use serve::{ServeManifest, ServeSpec, is_served_name};
pub use tenants::{Tenants, TokenHash, new_token};

use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};

use crate::ids::PartyName;

/// The name under which PartyKit clients reach the main party
/// (`/parties/main/<room>` and the legacy `/party/<room>`).
pub const MAIN_ALIAS: &str = "main";

/// PartyKit's dev port, also ours.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1999));

/// The manifest as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The project's name.
    pub name: String,
    /// Which party answers as `main`. Defaults to the party named `main`.
    pub main: Option<String>,
    /// Address to listen on; default 127.0.0.1:1999.
    pub listen: Option<SocketAddr>,
    /// Where storage and the compile cache live, relative to the manifest.
    pub data_dir: Option<PathBuf>,
    /// Vars every party sees (a party's own vars win).
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// Limits for every party; see the README's limit table.
    #[serde(default)]
    pub limits: LimitsSpec,
    /// When rooms give up their instances.
    #[serde(default)]
    pub rooms: RoomsSpec,
    /// What all rooms of this host may hold at once (the host's own
    /// manifest only; ignored in a deployed one).
    #[serde(default)]
    pub totals: TotalsSpec,
    /// Timeouts and connection caps for clients (the host's own manifest
    /// only; ignored in a deployed one).
    #[serde(default)]
    pub edge: EdgeSpec,
    /// Several nodes serving this project from one PostgreSQL database
    /// (the host's own manifest only; README "Several nodes").
    pub cluster: Option<ClusterSpec>,
    #[serde(default)]
    pub parties: BTreeMap<String, PartyManifest>,
    /// Static files served at `/` beside the parties (PartyKit's `serve`).
    pub serve: Option<ServeManifest>,
}

/// `[cluster]`: the database the nodes share, and (for a manifest per
/// node) this node's name and address; nodes that share one manifest are
/// told theirs when they start (`partyhost serve --cluster-node`,
/// `--cluster-advertise`), which win over these.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// `postgres://user[:password]@host:port/database`.
    pub database: Option<String>,
    /// How long a node keeps its rooms without renewing (default 10 s).
    pub lease_ms: Option<u64>,
    /// This node's name (default: its advertised address).
    pub node: Option<String>,
    /// The `host:port` other nodes reach this one at (default: `listen`).
    pub advertise: Option<String>,
    /// Record (epoch, sequence) of every commit in `partyhost_commits`.
    #[serde(default)]
    pub audit: bool,
}

/// One `[parties.<name>]` table.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartyManifest {
    /// The component, relative to the manifest.
    pub wasm: Option<PathBuf>,
    /// Or a TypeScript or JavaScript file whose default export is a
    /// PartyKit server class (partykit.json's `main`); `partyhost build`
    /// turns it into a component (see [`crate::js`]).
    pub main: Option<PathBuf>,
    /// Evict the room's instance when idle even while sockets are open
    /// (PartyKit's `hibernate: true`).
    #[serde(default)]
    pub hibernate: bool,
    #[serde(default)]
    pub vars: BTreeMap<String, String>,
    /// How `partyhost dev` rebuilds the component (PartyKit's `build`).
    pub build: Option<BuildSpec>,
    /// This party's own limits, over the project's `[limits]`.
    #[serde(default)]
    pub limits: LimitsSpec,
}

/// `[parties.<name>.build]`: `partyhost dev` runs `command` (in the
/// manifest's folder) when a file under `watch` changes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub command: String,
    /// Files or folders, relative to the manifest.
    #[serde(default)]
    pub watch: Vec<PathBuf>,
}

/// `[rooms]`: each field overrides the host's default when set.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomsSpec {
    /// Milliseconds without an event before an instance is evicted
    /// (hibernating parties) or an empty room stops. Default 10000.
    pub idle_timeout_ms: Option<u64>,
    /// Most live instances; the least recently used idle ones are evicted
    /// past it. Default 1000.
    pub max_live_instances: Option<usize>,
    /// Milliseconds shutdown waits for rooms to finish what they are doing
    /// before abandoning them (and exiting). Default 10000.
    pub shutdown_deadline_ms: Option<u64>,
    /// KiB of client messages and requests that may wait in one room's
    /// mailbox; past it senders wait (TCP pushes back). Default 8192.
    pub mailbox_kib: Option<u64>,
    /// Milliseconds before a failed `on-alarm` first runs again; doubled
    /// for each of its six retries. Default 2000, as Durable Objects.
    pub alarm_retry_ms: Option<u64>,
}

/// `[totals]`: what all rooms of a scope may hold at once. In the host's
/// manifest it bounds the whole host; in `tenants.toml` each deployed
/// project. An unset field takes the scope's default, never "unlimited".
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TotalsSpec {
    /// Running rooms (each holds its sockets and storage cache).
    pub rooms: Option<u64>,
    /// Live guest instances.
    pub instances: Option<u64>,
    /// Guest linear memory and tables of every live instance, in MiB.
    pub memory_mib: Option<u64>,
    /// Room-to-room fetches in flight.
    pub fetches_in_flight: Option<u64>,
    /// Stored keys plus values, in MiB.
    pub storage_mib: Option<u64>,
    /// Rooms with an alarm set.
    pub alarms: Option<u64>,
    /// Rooms started per second, with bursts of a fifth of that.
    pub room_starts_per_second: Option<u64>,
}

impl TotalsSpec {
    /// The whole host's defaults.
    pub fn host_defaults() -> Self {
        Self {
            rooms: Some(50_000),
            instances: Some(10_000),
            memory_mib: Some(8 << 10),
            fetches_in_flight: Some(4096),
            storage_mib: Some(64 << 10),
            alarms: Some(1_000_000),
            room_starts_per_second: Some(20_000),
        }
    }

    /// Each deployed project's defaults.
    pub fn project_defaults() -> Self {
        Self {
            rooms: Some(5000),
            instances: Some(2000),
            memory_mib: Some(2 << 10),
            fetches_in_flight: Some(256),
            storage_mib: Some(4 << 10),
            alarms: Some(100_000),
            room_starts_per_second: Some(100),
        }
    }

    /// No caps at all (tests and tools).
    pub fn unlimited() -> Self {
        Self::default()
    }

    /// `over`'s fields where set, else `self`'s.
    #[must_use]
    pub fn overlay(&self, over: &Self) -> Self {
        Self {
            rooms: over.rooms.or(self.rooms),
            instances: over.instances.or(self.instances),
            memory_mib: over.memory_mib.or(self.memory_mib),
            fetches_in_flight: over.fetches_in_flight.or(self.fetches_in_flight),
            storage_mib: over.storage_mib.or(self.storage_mib),
            alarms: over.alarms.or(self.alarms),
            room_starts_per_second: over.room_starts_per_second.or(self.room_starts_per_second),
        }
    }

    /// The cap on `resource`, in its counting unit (bytes for memory and
    /// storage).
    pub fn cap(&self, resource: crate::budget::Resource) -> Option<u64> {
        use crate::budget::Resource;
        let mib = |v: Option<u64>| v.map(|v| v.saturating_mul(1 << 20));
        match resource {
            Resource::Rooms => self.rooms,
            Resource::Instances => self.instances,
            Resource::Memory => mib(self.memory_mib),
            Resource::Fetches => self.fetches_in_flight,
            Resource::Storage => mib(self.storage_mib),
            Resource::Alarms => self.alarms,
            Resource::RoomStarts => self.room_starts_per_second,
        }
    }
}

/// Declares [`LimitsSpec`] once, with the list of its fields that
/// [`LimitsSpec::fields`] gives to code that treats every limit alike
/// (overlaying a party's limits on the project's, checking host caps).
macro_rules! limits_spec {
    ($($(#[$doc:meta])* $field:ident,)*) => {
        /// `[limits]` and `[parties.<name>.limits]`: each field set overrides
        /// the one below it (party over project over host default). Every
        /// limit and its default is in the README's limit table.
        #[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct LimitsSpec {
            $($(#[$doc])* pub $field: Option<u64>,)*
        }

        impl LimitsSpec {
            /// Every field by its manifest name.
            pub fn fields(&self) -> Vec<(&'static str, Option<u64>)> {
                vec![$((stringify!($field), self.$field),)*]
            }

            /// `self` with the fields set in `over` replaced.
            #[must_use]
            pub fn overlay(&self, over: &Self) -> Self {
                Self { $($field: over.$field.or(self.$field),)* }
            }

            /// Sets a field by its manifest name (no-op for unknown names).
            pub fn set(&mut self, name: &str, value: u64) {
                match name {
                    $(stringify!($field) => self.$field = Some(value),)*
                    _ => {}
                }
            }
        }
    };
}

limits_spec! {
    /// CPU milliseconds per handler call (host work done for it included).
    cpu_ms,
    /// Wall-clock milliseconds per handler call, time spent sleeping or
    /// waiting included. Default: four times `cpu_ms`.
    wall_ms,
    /// Linear memory per instance, in MiB.
    memory_mib,
    /// Largest WebSocket message or HTTP body from a client, in KiB.
    message_kib,
    /// How long an outbound fetch waits for its response, in milliseconds.
    fetch_timeout_ms,
    /// Storage per room (keys plus values), in MiB.
    storage_mib,
    /// WebSockets open at once in one room.
    connections_per_room,
    /// Messages a client may send per second (sustained; bursts of as many).
    messages_per_second,
    /// Room-to-room fetches one handler call may start.
    fetches_per_event,
    /// Bytes one handler call may send, counted once per receiver, in MiB.
    fanout_mib_per_event,
    /// Log bytes (the log import plus stdout and stderr) per handler call, in KiB.
    log_kib_per_event,
    /// Largest HTTP body a handler hands the host (a response, or a fetch's
    /// request), in KiB.
    body_kib,
    /// Bytes queued for one WebSocket, in KiB; a client further behind is
    /// closed as too slow (1013).
    queue_kib,
}

/// A validated manifest, ready to run.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub name: String,
    /// The party reached as `main`, if any.
    pub main: Option<PartyName>,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub limits: LimitsSpec,
    pub rooms: RoomsSpec,
    pub totals: TotalsSpec,
    pub edge: EdgeSpec,
    pub cluster: Option<ClusterSpec>,
    pub parties: BTreeMap<PartyName, PartySpec>,
    /// The static files, if the project serves any.
    pub serve: Option<ServeSpec>,
}

/// A validated party.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartySpec {
    /// Absolute (or manifest-relative resolved) path to the component. For
    /// a script party, where `partyhost build` puts it:
    /// `.partyhost/build/<party>.wasm` beside the manifest.
    pub wasm: PathBuf,
    /// A script party's TypeScript or JavaScript entry.
    pub script: Option<PathBuf>,
    /// Project vars overlaid with the party's own.
    pub vars: BTreeMap<String, String>,
    pub hibernate: bool,
    /// For `partyhost dev`, with `watch` resolved against the manifest.
    pub build: Option<BuildSpec>,
    /// The project's `[limits]` overlaid with the party's own.
    pub limits: LimitsSpec,
}

impl PartySpec {
    /// The folder of a script party's entry: what `partyhost dev` watches
    /// to rebuild it.
    pub fn script_folder(&self) -> Option<PathBuf> {
        Some(self.script.as_ref()?.parent()?.to_path_buf())
    }
}

impl Deployment {
    /// Reads and validates the manifest at `path`.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the file and the mistake.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ManifestError::Read { path: path.to_owned(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&text, base).map_err(|e| e.in_file(path))
    }

    /// Validates manifest text; relative paths resolve against `base`.
    ///
    /// # Errors
    /// A [`ManifestError`] naming the mistake.
    pub fn parse(text: &str, base: &Path) -> Result<Self, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax { message: e.to_string() })?;
        manifest.validate(base)
    }

    /// The canonical party for a name in a URL, following the `main` alias.
    pub fn resolve_party(&self, name: &str) -> Option<&PartyName> {
        match self.parties.get_key_value(name) {
            Some((party, _)) => Some(party),
            None if name == MAIN_ALIAS => self.main.as_ref(),
            None => None,
        }
    }
}

impl Manifest {
    fn validate(self, base: &Path) -> Result<Deployment, ManifestError> {
        if self.parties.is_empty() {
            return Err(ManifestError::NoParties);
        }
        let mut parties = BTreeMap::new();
        for (name, party) in self.parties {
            let name = PartyName::try_from(name.as_str())
                .map_err(|reason| ManifestError::PartyName { name: name.clone(), reason })?;
            let mut vars = self.vars.clone();
            vars.extend(party.vars);
            let build = party.build.map(|b| BuildSpec {
                command: b.command,
                watch: b.watch.iter().map(|w| base.join(w)).collect(),
            });
            let limits = self.limits.overlay(&party.limits);
            let (wasm, script) = source(&name, party.wasm, party.main, build.is_some(), &limits, base)?;
            let spec = PartySpec { wasm, script, vars, hibernate: party.hibernate, build, limits };
            parties.insert(name, spec);
        }
        let main = match self.main {
            Some(main) => {
                let known = parties.keys().find(|p| p.as_str() == main).cloned();
                let main = known.ok_or_else(|| ManifestError::UnknownMain {
                    main: main.clone(),
                    parties: parties.keys().map(ToString::to_string).collect(),
                })?;
                if main.as_str() != MAIN_ALIAS && parties.keys().any(|p| p.as_str() == MAIN_ALIAS) {
                    return Err(ManifestError::MainConflict { main: main.to_string() });
                }
                Some(main)
            }
            None => parties.keys().find(|p| p.as_str() == MAIN_ALIAS).cloned(),
        };
        Ok(Deployment {
            name: self.name,
            main,
            listen: self.listen.unwrap_or(DEFAULT_LISTEN),
            data_dir: base.join(self.data_dir.unwrap_or_else(|| PathBuf::from("data"))),
            limits: self.limits,
            rooms: self.rooms,
            totals: self.totals,
            edge: self.edge,
            cluster: self.cluster,
            parties,
            serve: self.serve.map(|serve| serve.resolve(base)),
        })
    }
}

/// Extensions of the scripts `main` may name.
const SCRIPT_EXTENSIONS: [&str; 8] = ["ts", "tsx", "mts", "cts", "js", "jsx", "mjs", "cjs"];

/// The least `memory_mib` a script party may have: SpiderMonkey's heap
/// starts at 9 MiB and a party's objects come on top.
pub const SCRIPT_MEMORY_FLOOR_MIB: u64 = 32;

/// Where a party's component is (and, for a script party, its entry).
fn source(
    party: &PartyName,
    wasm: Option<PathBuf>,
    main: Option<PathBuf>,
    has_build: bool,
    limits: &LimitsSpec,
    base: &Path,
) -> Result<(PathBuf, Option<PathBuf>), ManifestError> {
    let problem = |problem| ManifestError::PartySource { party: party.to_string(), problem };
    match (wasm, main) {
        (Some(wasm), None) => Ok((base.join(wasm), None)),
        (None, Some(main)) => {
            if has_build {
                return Err(problem(
                    "a `main` script is built by partyhost itself: remove [build], or use `wasm`",
                ));
            }
            // Inside the project: `partyhost dev` watches its folder.
            if !main.components().all(|c| matches!(c, std::path::Component::Normal(_))) {
                return Err(ManifestError::OutsideProject {
                    party: party.to_string(),
                    what: "main",
                    path: main.display().to_string(),
                });
            }
            let extension = main.extension().and_then(|e| e.to_str()).unwrap_or_default();
            if !SCRIPT_EXTENSIONS.contains(&extension) {
                return Err(problem("`main` must be a TypeScript or JavaScript file (.ts, .js, .mjs, ...)"));
            }
            if let Some(value) = limits.memory_mib.filter(|&mib| mib < SCRIPT_MEMORY_FLOOR_MIB) {
                return Err(ManifestError::ScriptMemory {
                    party: party.to_string(),
                    value,
                    floor: SCRIPT_MEMORY_FLOOR_MIB,
                });
            }
            let wasm = base.join(".partyhost/build").join(format!("{party}.wasm"));
            Ok((wasm, Some(base.join(main))))
        }
        (Some(_), Some(_)) => Err(problem("has both `wasm` and `main`; keep one")),
        (None, None) => {
            Err(problem("needs `wasm` (a component) or `main` (a TypeScript or JavaScript PartyKit server)"))
        }
    }
}
