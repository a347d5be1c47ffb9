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
    /// Upload a project (manifest, components, static files) to a running
    /// multi-tenant host; it serves the new version once it has compiled.
    Deploy(RemoteArgs),
    /// Switch a deployed project back to its previous version.
    Rollback(RemoteArgs),
    /// Print a new deploy token and the line that grants it in tenants.toml.
    Token {
        /// The project the token is for.
        project: String,
    },
    /// Create a party crate under guests/ and add it to the manifest.
    New {
        /// The party's name: a-z, 0-9, `-` and `_`.
        name: String,
        /// The manifest to add it to. Default: partykit.toml, else
        /// partykit.toml.example.
        #[arg(long)]
        manifest: Option<PathBuf>,
    },
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
    /// The project to deploy as. Default: the manifest's `name`.
    #[arg(long, env = "PARTYHOST_PROJECT")]
    project: Option<String>,
    /// The project's token (`partyhost token` makes one).
    #[arg(long, env = "PARTYHOST_TOKEN", hide_env_values = true)]
    token: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
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
        Command::Deploy(args) => runtime.block_on(remote(args, true)),
        Command::Rollback(args) => runtime.block_on(remote(args, false)),
        Command::Token { project } => {
            partyhost::ids::ProjectName::try_from(project.as_str())
                .map_err(|reason| anyhow::anyhow!("project name {project:?} {reason}"))?;
            let (token, hash) = partyhost::manifest::new_token()?;
            println!("token for `{project}` (give it to the project; it is not stored anywhere):\n  {token}");
            println!("add to tenants.toml:\n  [projects.{project}]\n  token_sha256 = \"{hash}\"");
            Ok(())
        }
        Command::New { name, manifest } => {
            let manifest = manifest.unwrap_or_else(default_manifest);
            let created = partyhost::scaffold::new_party(&manifest, &name)?;
            println!("created {}", created.display());
            println!("added [parties.{name}] to {}", manifest.display());
            println!("next: scripts/build-guests.sh {name}, then partyhost dev");
            Ok(())
        }
    }
}

async fn serve(args: ServeArgs, dev: bool) -> anyhow::Result<()> {
    let manifest = args.manifest.unwrap_or_else(default_manifest);
    // Absolute, so the paths the watcher reports match the manifest's.
    let manifest =
        std::path::absolute(&manifest).with_context(|| format!("resolving {}", manifest.display()))?;
    let mut deployment = Deployment::load(&manifest)?;
    if let Some(listen) = args.listen {
        deployment.listen = listen;
    }
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
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    let options = partyhost::Options { tenants, tls, dev };
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

/// `partyhost deploy` (`upload`) or `partyhost rollback`.
async fn remote(args: RemoteArgs, upload: bool) -> anyhow::Result<()> {
    let manifest = args.manifest.unwrap_or_else(default_manifest);
    let project = match args.project {
        Some(project) => project,
        None => Deployment::load(&manifest)?.name,
    };
    let target = partyhost::client::Target {
        url: &args.url,
        project: &project,
        token: &args.token,
        ca_cert: args.ca_cert.as_deref(),
    };
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

/// Logs to stderr; `RUST_LOG` filters (default `info`), and
/// `PARTYHOST_LOG=json` switches to JSON lines.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::env::var("PARTYHOST_LOG").is_ok_and(|v| v == "json") {
        builder.json().init();
    } else {
        builder.init();
    }
}
