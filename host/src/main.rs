//! The `partyhost` command: parses arguments, sets up logging, binds the
//! listener and hands over to [`partyhost::run`].

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

use partyhost::manifest::Deployment;

/// A self-hosted, PartyKit-compatible real-time rooms server.
#[derive(Parser)]
#[command(version, about)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// How the host logs: `text` for people, `json` (one object per line)
    /// for log collectors.
    #[arg(long, global = true, env = "PARTYHOST_LOG", default_value = "text")]
    log_format: LogFormat,
    /// With no command, `partyhost` serves: these are `serve`'s options.
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the parties of a manifest (the default command).
    Serve(ServeArgs),
    /// Serve, and rebuild and swap in parties as their files change; sockets
    /// stay open.
    Dev(ServeArgs),
    /// Build the manifest's TypeScript and JavaScript parties into
    /// components (`serve`, `dev` and `deploy` do this too when needed).
    Build {
        /// The manifest. Default: partykit.toml, else partykit.toml.example.
        #[arg(long, env = "PARTYHOST_MANIFEST")]
        manifest: Option<PathBuf>,
    },
    /// Upload a project (manifest, components, static files) to a running
    /// multi-tenant host; it serves the new version once it has compiled.
    Deploy(RemoteArgs),
    /// Switch a deployed project back to its previous version.
    Rollback(RemoteArgs),
    /// A project's secrets, kept on the host and read by its parties as
    /// vars (never in the manifest or the deploy bundle).
    Env {
        #[command(subcommand)]
        action: EnvAction,
    },
    /// The running rooms of a project: party, id, connections, live or
    /// hibernated, storage bytes.
    Rooms {
        /// Only this party's rooms.
        #[arg(long)]
        party: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Follow a project's guest logs, failed calls and limit hits live.
    Tail {
        /// Only this party.
        #[arg(long)]
        party: Option<String>,
        /// Only this room id.
        #[arg(long)]
        room: Option<String>,
        /// Print each event as a JSON line.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Print a new deploy token and the line that grants it in tenants.toml
    /// (`partyhost token --operator`: a token for the operator's calls).
    Token {
        /// The project the token is for.
        #[arg(required_unless_present = "operator")]
        project: Option<String>,
        /// A token for the operator: metrics and every project's calls.
        #[arg(long, conflicts_with = "project")]
        operator: bool,
    },
    /// Create a party crate under guests/ (or with --ts, a TypeScript
    /// server in src/) and add it to the manifest.
    New {
        /// The party's name: a-z, 0-9, `-` and `_`.
        name: String,
        /// A TypeScript PartyKit server class instead of a Rust crate; makes
        /// the manifest too when there is none.
        #[arg(long)]
        ts: bool,
        /// The manifest to add it to. Default: partykit.toml, else
        /// partykit.toml.example.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum EnvAction {
    /// Set NAME; the value is read from standard input unless given.
    Set {
        name: String,
        value: Option<String>,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// The names of the project's secrets (values never come back).
    List {
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Remove NAME.
    Remove {
        name: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// The manifest. Default: partykit.toml, else partykit.toml.example.
    #[arg(long, env = "PARTYHOST_MANIFEST")]
    manifest: Option<PathBuf>,
    /// Listen address, overriding the manifest's `listen`.
    #[arg(long, env = "PARTYHOST_LISTEN")]
    listen: Option<SocketAddr>,
    /// Host other people's projects too: the tenants, their tokens and the
    /// host's hard caps (see the README's security model).
    #[arg(long, env = "PARTYHOST_TENANTS")]
    tenants: Option<PathBuf>,
    /// Serve HTTPS (and wss://) with this PEM certificate chain; needs
    /// --tls-key.
    #[arg(long, env = "PARTYHOST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "PARTYHOST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// The SHA-256 of the operator's token (`partyhost token --operator`):
    /// with it, metrics and every project's admin calls answer beyond
    /// loopback.
    #[arg(long, env = "PARTYHOST_OPERATOR_TOKEN_SHA256")]
    operator_token_sha256: Option<String>,
    /// Count nothing and serve no /_partyhost/metrics.
    #[arg(long)]
    no_metrics: bool,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// A node of a cluster: the manifest's `[cluster]`, and what differs
/// between nodes.
#[derive(clap::Args)]
struct ClusterArgs {
    /// The cluster's PostgreSQL database (over the manifest's `[cluster]
    /// database`): `postgres://user[:password]@host:port/db`. With it (or
    /// the manifest's), this host serves as a node of the cluster.
    #[arg(long, env = "PARTYHOST_CLUSTER_DATABASE", hide_env_values = true)]
    cluster_database: Option<String>,
    /// This node's name (logs, `scripts/cluster.sh status`). Default: its
    /// advertised address.
    #[arg(long, env = "PARTYHOST_CLUSTER_NODE")]
    cluster_node: Option<String>,
    /// The `host:port` other nodes reach this one at. Default: the listen
    /// address, unless it is unspecified (0.0.0.0).
    #[arg(long, env = "PARTYHOST_CLUSTER_ADVERTISE")]
    cluster_advertise: Option<String>,
    /// How long the node keeps its rooms without renewing its lease (over
    /// the manifest's `lease_ms`; default 10000).
    #[arg(long, env = "PARTYHOST_CLUSTER_LEASE_MS")]
    cluster_lease_ms: Option<u64>,
    /// Record (epoch, sequence) of every commit in `partyhost_commits`.
    #[arg(long)]
    cluster_audit: bool,
}

impl ClusterArgs {
    /// The node's configuration, if it is in a cluster.
    fn config(self, deployment: &Deployment) -> anyhow::Result<Option<partyhost::storage::ClusterConfig>> {
        let spec = deployment.cluster.clone().unwrap_or_default();
        let Some(database_url) = self.cluster_database.or(spec.database) else {
            anyhow::ensure!(
                self.cluster_node.is_none()
                    && self.cluster_advertise.is_none()
                    && deployment.cluster.is_none(),
                "a cluster node needs a database: [cluster] database, or --cluster-database"
            );
            return Ok(None);
        };
        let advertise = match self.cluster_advertise.or(spec.advertise) {
            Some(address) => address,
            None if deployment.listen.ip().is_unspecified() => {
                anyhow::bail!(
                    "listening on {}: give --cluster-advertise, the address other nodes reach this one at",
                    deployment.listen
                )
            }
            None => deployment.listen.to_string(),
        };
        let lease_ms = self.cluster_lease_ms.or(spec.lease_ms).unwrap_or(10_000);
        anyhow::ensure!(lease_ms >= 300, "the cluster lease must be at least 300 ms (got {lease_ms})");
        Ok(Some(partyhost::storage::ClusterConfig {
            database_url,
            node: self.cluster_node.or(spec.node).unwrap_or_else(|| advertise.clone()),
            advertise,
            lease: std::time::Duration::from_millis(lease_ms),
            audit: self.cluster_audit || spec.audit,
        }))
    }
}

#[derive(clap::Args)]
struct RemoteArgs {
    /// The project's manifest. Default: partykit.toml, else
    /// partykit.toml.example.
    #[arg(long)]
    manifest: Option<PathBuf>,
    /// The host's address: `https://...` (or `http://` on loopback and
    /// trusted networks; the token crosses in clear).
    #[arg(long, env = "PARTYHOST_URL", default_value = "http://127.0.0.1:1999")]
    url: String,
    /// Also trust the PEM certificates in this file (a host with a
    /// self-signed or private certificate).
    #[arg(long, env = "PARTYHOST_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// The project. Default: the manifest's `name`.
    #[arg(long, env = "PARTYHOST_PROJECT")]
    project: Option<String>,
    /// The project's token (`partyhost token` makes one), or the
    /// operator's. None is needed on the host's own machine (loopback),
    /// except to deploy.
    #[arg(long, env = "PARTYHOST_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // One line with the whole chain of causes; no backtrace for users.
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    match cli.command.unwrap_or(Command::Serve(cli.serve)) {
        Command::Serve(args) => serve_until_stopped(runtime, args, false),
        Command::Dev(args) => serve_until_stopped(runtime, args, true),
        Command::Build { manifest } => build_scripts(&manifest.unwrap_or_else(default_manifest)).map(drop),
        Command::Deploy(args) => runtime.block_on(remote(args, true)),
        Command::Rollback(args) => runtime.block_on(remote(args, false)),
        Command::Env { action } => runtime.block_on(env(action)),
        Command::Rooms { party, remote } => runtime.block_on(rooms(party, remote)),
        Command::Tail { party, room, json, remote } => runtime.block_on(tail(party, room, json, remote)),
        Command::Token { project: None, .. } => {
            let (token, hash) = partyhost::manifest::new_token()?;
            println!("operator token (keep it; it is not stored anywhere):\n  {token}");
            println!("serve with:\n  partyhost serve --operator-token-sha256 {hash}");
            Ok(())
        }
        Command::Token { project: Some(project), .. } => {
            partyhost::ids::ProjectName::try_from(project.as_str())
                .map_err(|reason| anyhow::anyhow!("project name {project:?} {reason}"))?;
            let (token, hash) = partyhost::manifest::new_token()?;
            println!("token for `{project}` (give it to the project; it is not stored anywhere):\n  {token}");
            println!("add to tenants.toml:\n  [projects.{project}]\n  token_sha256 = \"{hash}\"");
            Ok(())
        }
        Command::New { name, ts, manifest } => {
            use partyhost::scaffold::Language;
            // A new TypeScript project starts its own partykit.toml.
            let manifest = manifest.unwrap_or_else(|| match ts {
                true if !Path::new("partykit.toml.example").exists() => PathBuf::from("partykit.toml"),
                _ => default_manifest(),
            });
            let language = if ts { Language::TypeScript } else { Language::Rust };
            let created = partyhost::scaffold::new_party(&manifest, &name, language)?;
            println!("created {}", created.display());
            println!("added [parties.{name}] to {}", manifest.display());
            match language {
                Language::Rust => println!("next: scripts/build-guests.sh {name}, then partyhost dev"),
                Language::TypeScript => {
                    println!("next: partyhost dev (it builds the party, and again on save)")
                }
            }
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, dev: bool) -> anyhow::Result<()> {
    let manifest = args.manifest.unwrap_or_else(default_manifest);
    // Absolute, so the paths the watcher reports match the manifest's.
    let manifest =
        std::path::absolute(&manifest).with_context(|| format!("resolving {}", manifest.display()))?;
    let path = manifest.clone();
    let mut deployment = tokio::task::spawn_blocking(move || build_scripts(&path)).await??;
    if let Some(listen) = args.listen {
        deployment.listen = listen;
    }
    let cluster = args.cluster.config(&deployment)?;
    let listener = tokio::net::TcpListener::bind(deployment.listen)
        .await
        .with_context(|| format!("binding {}", deployment.listen))?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(partyhost::edge::server_config(cert, key)?),
        _ => None,
    };
    let tenants = match &args.tenants {
        Some(path) => {
            anyhow::ensure!(!dev, "--tenants is for `serve`; `dev` serves only the local project");
            Some(partyhost::manifest::Tenants::load(path)?)
        }
        None => None,
    };
    let operator_token = match &args.operator_token_sha256 {
        Some(hex) => Some(partyhost::manifest::TokenHash::parse(hex).context(
            "--operator-token-sha256 is not 64 hex digits (`partyhost token --operator` prints one)",
        )?),
        None => None,
    };
    // `partyhost dev` reads secrets from a `.env` beside the manifest.
    let dotenv = dev.then(|| manifest.parent().unwrap_or(Path::new(".")).join(".env"));
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let options = partyhost::Options {
        tenants,
        tls,
        dev,
        dotenv,
        operator_token,
        no_metrics: args.no_metrics,
        compile_cache: None,
        cluster,
    };
    let host = partyhost::Host::start_with(deployment, options, listener, shutdown.clone()).await?;
    if dev {
        host.reloader(manifest).spawn(shutdown)?;
    }
    host.wait().await
}

/// Serves until shutdown; tasks a shutdown abandoned (rooms past the
/// deadline) do not hold up the exit.
fn serve_until_stopped(runtime: tokio::runtime::Runtime, args: ServeArgs, dev: bool) -> anyhow::Result<()> {
    let served = runtime.block_on(serve(args, dev));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    served
}

/// The project `args` name (else the manifest's), and its manifest.
fn project_of(args: &RemoteArgs) -> anyhow::Result<(String, PathBuf)> {
    let manifest = args.manifest.clone().unwrap_or_else(default_manifest);
    match &args.project {
        Some(project) => Ok((project.clone(), manifest)),
        None => Ok((Deployment::load(&manifest)?.name, manifest)),
    }
}

fn target<'a>(args: &'a RemoteArgs, project: &'a str) -> partyhost::client::Target<'a> {
    partyhost::client::Target {
        url: &args.url,
        project,
        token: args.token.as_deref().unwrap_or_default(),
        ca_cert: args.ca_cert.as_deref(),
    }
}

/// `partyhost env set|list|remove`.
async fn env(action: EnvAction) -> anyhow::Result<()> {
    let (EnvAction::Set { remote: args, .. }
    | EnvAction::List { remote: args }
    | EnvAction::Remove { remote: args, .. }) = &action;
    let (project, _) = project_of(args)?;
    let target = target(args, &project);
    match &action {
        EnvAction::Set { name, value, .. } => {
            let value = match value.clone() {
                Some(value) => value,
                None => {
                    eprint!("value of {name} (one line; not echoed anywhere else): ");
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line).context("reading the value from standard input")?;
                    line.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            let path = format!("/env/{}", encoded(name));
            partyhost::client::call(&target, "PUT", &path, value.into_bytes()).await?;
            println!("set {name} for project `{project}`; its rooms read it from their next event");
        }
        EnvAction::List { .. } => {
            let answer = partyhost::client::call(&target, "GET", "/env", Vec::new()).await?;
            for name in answer["names"].as_array().into_iter().flatten().filter_map(|n| n.as_str()) {
                println!("{name}");
            }
        }
        EnvAction::Remove { name, .. } => {
            let path = format!("/env/{}", encoded(name));
            let answer = partyhost::client::call(&target, "DELETE", &path, Vec::new()).await?;
            if answer["removed"].as_bool() == Some(true) {
                println!("removed {name} from project `{project}`");
            } else {
                println!("project `{project}` has no secret named {name}");
            }
        }
    }
    Ok(())
}

/// `text` as one piece of a URL's path or query.
fn encoded(text: &str) -> percent_encoding::PercentEncode<'_> {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC)
}

/// `partyhost rooms`: one line per running room.
async fn rooms(party: Option<String>, args: RemoteArgs) -> anyhow::Result<()> {
    let (project, _) = project_of(&args)?;
    let query = party.map(|p| format!("?party={}", encoded(&p))).unwrap_or_default();
    let answer =
        partyhost::client::call(&target(&args, &project), "GET", &format!("/rooms{query}"), Vec::new())
            .await?;
    let rooms = answer["rooms"].as_array().cloned().unwrap_or_default();
    println!("{:<16} {:<32} {:>11} {:<10} {:>13}", "PARTY", "ROOM", "CONNECTIONS", "STATE", "STORAGE BYTES");
    for room in &rooms {
        println!(
            "{:<16} {:<32} {:>11} {:<10} {:>13}",
            room["party"].as_str().unwrap_or_default(),
            room["id"].as_str().unwrap_or_default(),
            room["connections"],
            room["state"].as_str().unwrap_or_default(),
            room["storage_bytes"],
        );
    }
    eprintln!("{} running rooms", rooms.len());
    Ok(())
}

/// `partyhost tail`: the live log until interrupted or the host stops.
async fn tail(
    party: Option<String>,
    room: Option<String>,
    json: bool,
    args: RemoteArgs,
) -> anyhow::Result<()> {
    let (project, _) = project_of(&args)?;
    let query: Vec<String> = [("party", party), ("room", room)]
        .into_iter()
        .filter_map(|(name, value)| Some(format!("{name}={}", encoded(&value?))))
        .collect();
    let rest = if query.is_empty() { "/tail".to_owned() } else { format!("/tail?{}", query.join("&")) };
    partyhost::client::tail(&target(&args, &project), &rest, |event| {
        if json {
            println!("{event}");
        } else if event["kind"] == "open" {
            eprintln!("following project `{project}` (Ctrl-C to stop)");
        } else if event["kind"] == "missed" {
            eprintln!("... {} events missed (the tail fell behind)", event["events"]);
        } else {
            // A guest's text may hold terminal escapes: shown, not obeyed.
            let text = |field: &str| -> String {
                let raw = event[field].as_str().unwrap_or_default();
                raw.chars()
                    .map(|c| if c.is_control() { c.escape_default().to_string() } else { c.to_string() })
                    .collect()
            };
            println!(
                "{} {}/{} {} {}: {}",
                event["time_ms"],
                text("party"),
                text("room"),
                text("kind"),
                text("level"),
                text("message"),
            );
        }
    })
    .await?;
    eprintln!("the host ended the live log");
    Ok(())
}

/// `partyhost deploy` (`upload`) or `partyhost rollback`.
async fn remote(args: RemoteArgs, upload: bool) -> anyhow::Result<()> {
    let (project, manifest) = project_of(&args)?;
    anyhow::ensure!(args.token.is_some(), "deploying needs the project's --token (or PARTYHOST_TOKEN)");
    let target = target(&args, &project);
    let answer = if upload {
        partyhost::client::deploy(&target, &manifest).await?
    } else {
        partyhost::client::rollback(&target).await?
    };
    let parties =
        answer["parties"].as_array().map(|p| p.iter().filter_map(|v| v.as_str()).collect::<Vec<_>>());
    println!(
        "project `{project}` now serves version {} (parties: {}; validated and compiled in {} ms)",
        answer["version"],
        parties.unwrap_or_default().join(", "),
        answer["took_ms"]
    );
    Ok(())
}

/// Loads a manifest and builds its script parties (cached by content).
fn build_scripts(manifest: &Path) -> anyhow::Result<Deployment> {
    let deployment = Deployment::load(manifest)?;
    partyhost::js::build_all(&deployment)?;
    Ok(deployment)
}

fn default_manifest() -> PathBuf {
    let toml = Path::new("partykit.toml");
    if toml.exists() { toml.to_path_buf() } else { PathBuf::from("partykit.toml.example") }
}

/// Cancels `shutdown` on Ctrl-C or SIGTERM.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}

/// Logs to stderr; `RUST_LOG` filters (default `info`); `--log-format
/// json` (or `PARTYHOST_LOG=json`) writes one JSON object per line.
fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
