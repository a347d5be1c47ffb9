//! Deploy impact: what a tenant's deployment costs the rooms already
//! serving. One client makes round trips to a room of the host's own
//! project, in alternating phases: nothing else happening, then a tenant
//! deploying over and over (each deployment carries a component with a
//! fresh custom section, so it is really compiled). Compiles run on the
//! host's background worker, one at a time, below the serving threads'
//! priority; this shows what is left of their cost.

use std::time::{Duration, Instant};

use crate::host::ChildHost;
use crate::load::{connect, next_text, send_reaction};
use crate::stats::Percentiles;

pub async fn impact(seconds: u64, rounds: usize) -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hostile = root.join("target/guests/wasm32-wasip2/guest/hostile.wasm");
    anyhow::ensure!(hostile.exists(), "{} is missing: run scripts/build-guests.sh", hostile.display());
    let component = std::fs::read(&hostile)?;
    let reactions = crate::host::reactions_wasm()?;

    let (token, hash) = partyhost::manifest::new_token()?;
    let tenants = format!("keep_versions = 2\n[projects.tenant]\ntoken_sha256 = \"{hash}\"\n");
    let toml = format!(
        "name = \"bench\"\n[limits]\nmessages_per_second = 1000000\n[parties.reactions]\nwasm = {:?}\n\
         [parties.reactions.vars]\nRATE_LIMIT_MS = \"0\"\n",
        reactions.display().to_string()
    );
    let host = ChildHost::start_with_tenants(&toml, &tenants).await?;
    let project = tempfile::tempdir()?;
    std::fs::write(
        project.path().join("partykit.toml"),
        "name = \"tenant\"\n[parties.x]\nwasm = \"x.wasm\"\n",
    )?;
    let url = format!("http://127.0.0.1:{}", host.port);

    let mut socket = connect(&host, "neighbour").await?;
    next_text(&mut socket).await?;
    let phase = Duration::from_secs(seconds);
    let (mut quiet, mut deploying) = (Vec::new(), Vec::new());
    let mut deploy_times = Vec::new();
    let mut nonce = 0;
    for _ in 0..rounds {
        quiet.extend(round_trips(&mut socket, phase).await?);
        // Deployments in a task of their own while the client goes on.
        let deployer = {
            let (manifest, component, target_url, token) =
                (project.path().join("partykit.toml"), component.clone(), url.clone(), token.clone());
            let until = Instant::now() + phase;
            let first = nonce;
            tokio::spawn(async move {
                let target = partyhost::client::Target {
                    url: &target_url,
                    project: "tenant",
                    token: &token,
                    ca_cert: None,
                };
                let mut times = Vec::new();
                let mut n = first;
                while Instant::now() < until {
                    n += 1;
                    let wasm = crate::reload::with_custom_section(&component, n);
                    std::fs::write(manifest.with_file_name("x.wasm"), wasm)?;
                    let started = Instant::now();
                    partyhost::client::deploy(&target, &manifest).await?;
                    times.push(started.elapsed());
                }
                anyhow::Ok((times, n))
            })
        };
        deploying.extend(round_trips(&mut socket, phase).await?);
        let (times, last) = deployer.await??;
        deploy_times.extend(times);
        nonce = last;
    }
    let deploys = deploy_times.len();
    let deploy = Percentiles::of(&mut deploy_times);
    println!(
        "Deploy impact: one client's round trips (reaction -> update) on the host's own project, \
         {rounds} x {seconds} s quiet and {rounds} x {seconds} s while a tenant deploys \
         ({deploys} deployments, each compiled anew: p50 {:.0} ms, max {:.0} ms)",
        deploy.p50.as_secs_f64() * 1e3,
        deploy.max.as_secs_f64() * 1e3
    );
    println!();
    println!("| phase | round trips | p50 | p90 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    println!("| quiet | {} | {} |", quiet.len(), Percentiles::of(&mut quiet).row());
    println!("| a tenant deploying | {} | {} |", deploying.len(), Percentiles::of(&mut deploying).row());
    Ok(())
}

/// Reactions one at a time for `phase`; the time of each.
async fn round_trips(socket: &mut crate::load::Socket, phase: Duration) -> anyhow::Result<Vec<Duration>> {
    let until = Instant::now() + phase;
    let mut times = Vec::new();
    while Instant::now() < until {
        let started = Instant::now();
        send_reaction(socket).await?;
        next_text(socket).await?;
        times.push(started.elapsed());
    }
    Ok(times)
}
