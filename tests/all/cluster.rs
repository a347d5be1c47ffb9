//! Several nodes (README "Several nodes"): real PostgreSQL, HAProxy and
//! node processes, started by `scripts/cluster.sh` as a user starts them,
//! and faults made as they happen: SIGKILL, SIGSTOP, a database crash
//! (`pg_ctl restart -m immediate`), a cut between a node and the database.
//! Rooms run the hostile test party: `append:<n>` stores `a:<n>` and
//! answers `acked <n>` once durable; GET `.../appends` counts them.

use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::common::{Client, partyhost_binary, quiet_machine, raw_http, repo_root, temp_dir, within_for};
use crate::guests::HOSTILE;

/// The nodes' lease in these tests: short, so takeovers are quick.
const LEASE: Duration = Duration::from_millis(3000);
/// How long a room may be unanswered after its node dies: the lease, plus
/// HAProxy's health checks (two failures 500 ms apart) and a reconnect.
const TAKEOVER: Duration = Duration::from_millis(3000 + 2500);

/// Each cluster of the run gets its own ports, so one left behind by a
/// failed test cannot answer for the next.
static NEXT_PORTS: AtomicU16 = AtomicU16::new(0);

struct Cluster {
    /// Holds the manifest, the shared data folder and the cluster's folder.
    dir: tempfile::TempDir,
    proxy: u16,
    pg_port: u16,
    node_port: u16,
    db: tokio_postgres::Client,
    /// Nodes the test started itself (restarted, or behind a relay).
    own_nodes: Vec<tokio::process::Child>,
}

#[derive(Debug, Clone)]
#[allow(dead_code)]
struct Node {
    name: String,
    pid: u32,
    address: String,
}

impl Cluster {
    /// `scripts/cluster.sh up <nodes>` with the hostile party, a 3 s lease
    /// and the commit audit on.
    async fn up(nodes: usize) -> Result<Self> {
        let dir = temp_dir();
        let proxy = 21_000 + 700 * NEXT_PORTS.fetch_add(1, Ordering::Relaxed);
        let manifest = format!(
            "name = \"cluster-test\"\ndata_dir = {data:?}\n\
             [limits]\nwall_ms = 3000\n\
             [edge]\nmax_connections_per_ip = 10000\n\
             [cluster]\naudit = true\n\
             [parties.hostile]\nwasm = {HOSTILE:?}\n",
            data = dir.path().join("data"),
        );
        std::fs::write(dir.path().join("partykit.toml"), manifest)?;
        let out = run_script(&cluster_env(dir.path(), proxy), &["up", &nodes.to_string()]).await?;
        ensure!(out.status.success(), "cluster.sh up failed:\n{}", String::from_utf8_lossy(&out.stderr));
        let pg_port = proxy + 432;
        let url = format!("postgres://partyhost@127.0.0.1:{pg_port}/partyhost");
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        Ok(Self { dir, proxy, pg_port, node_port: proxy + 101, db, own_nodes: Vec::new() })
    }

    async fn script(&self, args: &[&str]) -> Result<std::process::Output> {
        run_script(&cluster_env(self.dir.path(), self.proxy), args).await
    }

    /// `scripts/cluster.sh status`: the live nodes.
    async fn nodes(&self) -> Result<Vec<Node>> {
        let out = self.script(&["status"]).await?;
        String::from_utf8(out.stdout)?
            .lines()
            .map(|line| match line.split(' ').collect::<Vec<_>>()[..] {
                [name, pid, address] => {
                    Ok(Node { name: name.into(), pid: pid.parse()?, address: address.into() })
                }
                _ => bail!("unexpected status line {line:?}"),
            })
            .collect()
    }

    async fn node(&self, name: &str) -> Result<Node> {
        self.nodes().await?.into_iter().find(|n| n.name == name).with_context(|| format!("no live {name}"))
    }

    fn proxy_ws(&self, room: &str) -> String {
        format!("ws://127.0.0.1:{}/parties/hostile/{room}", self.proxy)
    }

    /// Which node owns `room` now, and under which epoch.
    async fn owner(&self, room: &str) -> Result<Option<(String, i64)>> {
        let row = self
            .db
            .query_opt(
                "SELECT n.name, r.epoch FROM partyhost_rooms r JOIN partyhost_nodes n ON n.id = r.owner
                 WHERE r.party = 'hostile' AND r.room = $1",
                &[&room],
            )
            .await?;
        Ok(row.map(|row| (row.get(0), row.get(1))))
    }

    /// The `append` numbers stored for `room`, read from the database on
    /// a connection of its own (a crash of the database ends the others).
    async fn stored_appends(&self, room: &str) -> Result<BTreeSet<u64>> {
        let url = format!("postgres://partyhost@127.0.0.1:{}/partyhost", self.pg_port);
        let (db, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        let rows = db
            .query(
                "SELECT key FROM partyhost_kv WHERE party = 'hostile' AND room = $1 AND key LIKE 'a:%'",
                &[&room],
            )
            .await?;
        rows.iter()
            .filter_map(|row| row.get::<_, &str>(0).strip_prefix("a:").map(str::to_owned))
            .map(|n| n.parse::<u64>().with_context(|| format!("append key {n:?}")))
            .collect()
    }

    /// Clients appending to `count` rooms named `<prefix>-<i>` through the
    /// proxy, each reconnecting when its socket drops, until [`Writers::check`].
    fn start_writers(&self, prefix: &str, count: usize) -> Writers {
        let rooms: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
        let stop = CancellationToken::new();
        let tasks = rooms
            .iter()
            .map(|room| tokio::spawn(append_until(self.proxy_ws(room), 0, stop.clone())))
            .collect();
        Writers { rooms, tasks, stop }
    }

    /// Starts a node the way `cluster.sh` does, with `database` as its
    /// database (a relay, say), and waits until it is ready.
    async fn start_node(&mut self, name: &str, port: u16, database: &str) -> Result<()> {
        let log = std::fs::File::create(self.dir.path().join(format!("{name}-own.log")))?;
        let child = tokio::process::Command::new(partyhost_binary())
            .args(["serve", "--manifest"])
            .arg(self.dir.path().join("partykit.toml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--cluster-database", database])
            .args(["--cluster-node", name, "--cluster-advertise", &format!("127.0.0.1:{port}")])
            .args(["--cluster-lease-ms", &LEASE.as_millis().to_string(), "--cluster-audit"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.own_nodes.push(child);
        let ready = async {
            loop {
                if let Ok(response) = http(&format!("127.0.0.1:{port}"), "/_partyhost/ready").await
                    && response.0 == 200
                {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        within_for(Duration::from_secs(30), "the node to be ready", ready).await;
        Ok(())
    }

    /// Epochs of `room`'s commits in the order they were made.
    async fn audited_epochs(&self, room: &str) -> Result<Vec<i64>> {
        let rows = self
            .db
            .query(
                "SELECT epoch FROM partyhost_commits WHERE party = 'hostile' AND room = $1 ORDER BY id",
                &[&room],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in &mut self.own_nodes {
            let _ = child.start_kill();
        }
        // Everything stops even when the test failed half-way.
        let _ = std::process::Command::new("bash")
            .arg(repo_root().join("scripts/cluster.sh"))
            .arg("down")
            .envs(cluster_env(self.dir.path(), self.proxy))
            .output();
    }
}

/// What `scripts/cluster.sh` is told of a test's cluster.
fn cluster_env(dir: &Path, proxy: u16) -> Vec<(&'static str, String)> {
    vec![
        ("PARTYHOST_CLUSTER_DIR", dir.join("cluster").display().to_string()),
        ("PARTYHOST_CLUSTER_PORT", proxy.to_string()),
        ("PARTYHOST_CLUSTER_MANIFEST", dir.join("partykit.toml").display().to_string()),
        ("PARTYHOST_BIN", partyhost_binary().display().to_string()),
        ("PARTYHOST_CLUSTER_LEASE_MS", LEASE.as_millis().to_string()),
    ]
}

async fn run_script(env: &[(&'static str, String)], args: &[&str]) -> Result<std::process::Output> {
    let mut command = tokio::process::Command::new("bash");
    command
        .arg(repo_root().join("scripts/cluster.sh"))
        .args(args)
        .envs(env.iter().cloned())
        .kill_on_drop(true);
    within_for(Duration::from_secs(120), "scripts/cluster.sh", command.output())
        .await
        .context("running cluster.sh")
}

fn signal(pid: u32, signal: &str) -> Result<()> {
    let status =
        std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()?;
    ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

async fn http(address: &str, path: &str) -> Result<(u16, String)> {
    let response = raw_http(address.parse()?, "GET", path, &[], "").await?;
    Ok((response.status, response.body))
}

/// What [`Cluster::start_writers`] started.
struct Writers {
    rooms: Vec<String>,
    tasks: Vec<tokio::task::JoinHandle<Result<(BTreeSet<u64>, Duration)>>>,
    stop: CancellationToken,
}

impl Writers {
    /// Stops the writers and checks that every acknowledged append is
    /// stored, and that each room took more than a few. Returns the
    /// longest a room went unanswered.
    async fn check(self, cluster: &Cluster) -> Result<Duration> {
        self.stop.cancel();
        let mut longest_of_all = Duration::ZERO;
        for (room, task) in self.rooms.iter().zip(self.tasks) {
            let (acked, longest) = task.await??;
            let stored = cluster.stored_appends(room).await?;
            let lost: Vec<_> = acked.difference(&stored).collect();
            assert!(lost.is_empty(), "room {room}: acknowledged appends lost: {lost:?}");
            assert!(acked.len() > 10, "room {room}: only {} appends were acknowledged", acked.len());
            longest_of_all = longest_of_all.max(longest);
        }
        Ok(longest_of_all)
    }
}

/// Sends `append:<n>` for n = start, start+1, ... through the proxy until
/// `stop`, reconnecting whenever the socket drops (resending the
/// unacknowledged number: a put of the same value again). Returns the
/// acknowledged numbers and the longest wait for an acknowledgement.
async fn append_until(url: String, start: u64, stop: CancellationToken) -> Result<(BTreeSet<u64>, Duration)> {
    let mut acked = BTreeSet::new();
    let (mut n, mut longest, mut since) = (start, Duration::ZERO, Instant::now());
    let mut client: Option<Client> = None;
    while !stop.is_cancelled() {
        let Some(socket) = client.as_mut() else {
            match Client::connect(&url).await {
                Ok(socket) => client = Some(socket),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let answered = async {
            socket.send_text(&format!("append:{n}")).await?;
            socket.recv_text().await
        };
        match answered.await {
            Ok(text) if text == format!("acked {n}") => {
                acked.insert(n);
                longest = longest.max(since.elapsed());
                since = Instant::now();
                n += 1;
            }
            Ok(text) => bail!("unexpected answer {text:?}"),
            Err(_) => client = None,
        }
    }
    Ok((acked, longest))
}

#[tokio::test]
async fn a_killed_node_loses_no_acknowledged_write_and_its_rooms_answer_within_the_lease() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(3).await?;
    let writers = cluster.start_writers("load", 6);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The node owning the first room dies; its rooms must come back elsewhere.
    let (victim, _) = cluster.owner("load-0").await?.context("the first room has no owner")?;
    let victim = cluster.node(&victim).await?;
    signal(victim.pid, "KILL")?;
    let killed_at = Instant::now();
    tokio::time::sleep(TAKEOVER + Duration::from_millis(1500)).await;
    let rooms = writers.rooms.clone();
    let longest = writers.check(&cluster).await?;
    assert!(longest < TAKEOVER, "a room went unanswered for {longest:?} after its node died");
    for room in &rooms {
        let (owner, _) = cluster.owner(room).await?.context("no owner")?;
        assert_ne!(owner, victim.name, "room {room} is still owned by the killed node");
    }
    eprintln!("rooms answered again within {TAKEOVER:?} of the kill ({:?} ago)", killed_at.elapsed());
    Ok(())
}

/// Answers of `client` to `append:<n>`: "acked <n>", or the close frame.
async fn append(client: &mut Client, n: u64) -> Result<()> {
    client.send_text(&format!("append:{n}")).await?;
    let answer = client.recv_text().await?;
    ensure!(answer == format!("acked {n}"), "append {n}: {answer}");
    Ok(())
}

#[tokio::test]
async fn a_node_stopped_past_its_lease_can_neither_write_nor_speak_when_it_continues() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let (node1, node2) = (cluster.node("node1").await?, cluster.node("node2").await?);
    // Straight to node1: it claims the room.
    let mut old = Client::connect(&format!("ws://{}/parties/hostile/stopped", node1.address)).await?;
    append(&mut old, 1).await?;
    assert_eq!(cluster.owner("stopped").await?.map(|(name, _)| name).as_deref(), Some("node1"));

    signal(node1.pid, "STOP")?;
    // Sent while node1 is stopped: a message that writes nothing (its echo
    // waits for no commit), and a write.
    old.send_text("hello").await?;
    old.send_text("append:2").await?;
    tokio::time::sleep(LEASE + Duration::from_millis(500)).await;
    // node1's lease has run out: node2 may claim the room.
    let mut new = Client::connect(&format!("ws://{}/parties/hostile/stopped", node2.address)).await?;
    append(&mut new, 3).await?;
    assert_eq!(cluster.owner("stopped").await?.map(|(name, _)| name).as_deref(), Some("node2"));

    signal(node1.pid, "CONT")?;
    // Nothing of what node1 did after the claim reaches its client: not the
    // acknowledgement, not the echo; only the close that sends it elsewhere.
    let (code, reason) = old.recv_close().await?;
    assert_eq!(code, 1012, "{reason}");
    append(&mut new, 4).await?;
    assert_eq!(
        cluster.stored_appends("stopped").await?,
        BTreeSet::from([1, 3, 4]),
        "node1's late write landed"
    );
    // Commits in the order they were made never go back to an older epoch.
    let epochs = cluster.audited_epochs("stopped").await?;
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "epochs interleave: {epochs:?}");
    assert!(epochs.first() < epochs.last(), "one epoch only: {epochs:?}");
    Ok(())
}

/// A TCP relay the test can cut: a partition between a node and the
/// database without any privileges.
struct Relay {
    port: u16,
    cut: CancellationToken,
}

impl Relay {
    async fn start(target: String) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let cut = CancellationToken::new();
        let stop = cut.clone();
        tokio::spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let Ok((mut inbound, _)) = accepted else { continue };
                let (target, stop) = (target.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else { return };
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Ok(Self { port, cut })
    }
}

#[tokio::test]
async fn a_node_cut_off_from_the_database_fences_itself_and_another_takes_its_rooms() -> Result<()> {
    let _quiet = quiet_machine();
    let mut cluster = Cluster::up(1).await?;
    let relay = Relay::start(format!("127.0.0.1:{}", cluster.pg_port)).await?;
    let port = cluster.node_port + 50;
    let database = format!("postgres://partyhost@127.0.0.1:{}/partyhost", relay.port);
    cluster.start_node("island", port, &database).await?;
    let mut client = Client::connect(&format!("ws://127.0.0.1:{port}/parties/hostile/island")).await?;
    append(&mut client, 1).await?;

    relay.cut.cancel();
    let cut_at = Instant::now();
    // The node stops its rooms before its lease runs out on the database.
    let (code, reason) = within_for(LEASE + Duration::from_secs(2), "the fence", client.recv_close()).await?;
    assert_eq!(code, 1012, "{reason}");
    assert!(cut_at.elapsed() < LEASE, "fenced {:?} after the cut, past the lease", cut_at.elapsed());
    // Then node1 takes the room, with what was acknowledged.
    let node1 = cluster.node("node1").await?;
    let deadline = Instant::now() + LEASE + Duration::from_secs(5);
    loop {
        let (status, body) = http(&node1.address, "/parties/hostile/island/appends").await?;
        if status == 200 {
            assert_eq!(body, "appends 1");
            break;
        }
        ensure!(Instant::now() < deadline, "node1 never took the room: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(cluster.owner("island").await?.map(|(name, _)| name).as_deref(), Some("node1"));
    Ok(())
}

#[tokio::test]
async fn two_nodes_racing_for_a_new_room_agree_on_one_owner() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let (node1, node2) = (cluster.node("node1").await?, cluster.node("node2").await?);
    for i in 0..8 {
        let room = format!("race-{i}");
        let (url1, url2) = (
            format!("ws://{}/parties/hostile/{room}", node1.address),
            format!("ws://{}/parties/hostile/{room}", node2.address),
        );
        let (a, b) = tokio::join!(Client::connect(&url1), Client::connect(&url2));
        let (mut a, mut b) = (a?, b?);
        // One room: each client hears the other's broadcast.
        a.send_text("broadcast:from-a").await?;
        assert!(b.recv_text().await?.starts_with("broadcast from-a"));
        assert!(a.recv_text().await?.starts_with("broadcast from-a"));
        b.send_text("broadcast:from-b").await?;
        assert!(a.recv_text().await?.starts_with("broadcast from-b"));
        // One claim won; the other node forwarded instead of claiming.
        let (_, epoch) = cluster.owner(&room).await?.context("no owner")?;
        assert_eq!(epoch, 1, "room {room} was claimed more than once");
    }
    Ok(())
}

#[tokio::test]
async fn a_killed_node_that_returns_forwards_rather_than_claims() -> Result<()> {
    let _quiet = quiet_machine();
    let mut cluster = Cluster::up(2).await?;
    let (node1, node2) = (cluster.node("node1").await?, cluster.node("node2").await?);
    let mut client = Client::connect(&format!("ws://{}/parties/hostile/returns", node1.address)).await?;
    append(&mut client, 1).await?;
    signal(node1.pid, "KILL")?;
    // node2 takes the room once node1 is known gone.
    let deadline = Instant::now() + TAKEOVER;
    let mut client = loop {
        if let Ok(mut client) =
            Client::connect(&format!("ws://{}/parties/hostile/returns", node2.address)).await
            && append(&mut client, 2).await.is_ok()
        {
            break client;
        }
        ensure!(Instant::now() < deadline, "node2 never took the room");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let owner = cluster.owner("returns").await?;
    assert_eq!(owner.as_ref().map(|(name, _)| name.as_str()), Some("node2"));

    // node1 comes back on its old address: it serves the room by forwarding.
    let port: u16 = node1.address.rsplit(':').next().context("no port")?.parse()?;
    let database = format!("postgres://partyhost@127.0.0.1:{}/partyhost", cluster.pg_port);
    cluster.start_node("node1", port, &database).await?;
    let mut returned = Client::connect(&format!("ws://{}/parties/hostile/returns", node1.address)).await?;
    append(&mut returned, 3).await?;
    returned.send_text("broadcast:via-node1").await?;
    assert!(client.recv_text().await?.starts_with("broadcast via-node1"), "not the same room");
    assert_eq!(cluster.owner("returns").await?, owner, "the returning node claimed the room");
    assert_eq!(cluster.stored_appends("returns").await?, BTreeSet::from([1, 2, 3]));
    Ok(())
}

#[tokio::test]
async fn a_fetch_whose_target_node_dies_fails_and_never_runs_twice() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let (node1, node2) = (cluster.node("node1").await?, cluster.node("node2").await?);
    // The target lives on node2, the caller on node1.
    assert_eq!(http(&node2.address, "/parties/hostile/target/pong").await?.1, "pong");
    let mut caller = Client::connect(&format!("ws://{}/parties/hostile/caller", node1.address)).await?;
    caller.send_text("fetch-to:hostile:target:/pong").await?;
    assert_eq!(caller.recv_text().await?, "fetched 200: pong", "a fetch across nodes");

    caller.send_text("fetch-to:hostile:target:/slow-append").await?;
    // node2 dies in the middle of the slow request.
    tokio::time::sleep(Duration::from_millis(700)).await;
    signal(node2.pid, "KILL")?;
    let answer = caller.recv_text().await?;
    assert!(answer.starts_with("fetched 502:") && answer.contains("not sent again"), "{answer}");
    // The request never ran to its end, and is not sent again once node1
    // owns the target.
    let deadline = Instant::now() + TAKEOVER;
    loop {
        let (status, body) = http(&node1.address, "/parties/hostile/target/appends").await?;
        if status == 200 {
            assert_eq!(body, "appends 0");
            break;
        }
        ensure!(Instant::now() < deadline, "node1 never took the target: {status} {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cluster.stored_appends("target").await?, BTreeSet::new());
    assert!(
        cluster
            .db
            .query_opt("SELECT 1 FROM partyhost_kv WHERE room = 'target' AND key = 'a:slow'", &[])
            .await?
            .is_none()
    );
    Ok(())
}

#[tokio::test]
async fn an_alarm_fires_on_another_node_after_its_node_dies() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let node1 = cluster.node("node1").await?;
    let mut client = Client::connect(&format!("ws://{}/parties/hostile/alarmed", node1.address)).await?;
    client.send_text("alarm:2000").await?;
    assert!(client.recv_text().await?.starts_with("alarm set"));
    signal(node1.pid, "KILL")?;
    // Nobody asks for the room: node2's sweeper finds the due alarm.
    let fired = async {
        loop {
            let row = cluster
                .db
                .query_opt("SELECT 1 FROM partyhost_kv WHERE room = 'alarmed' AND key = 'alarms-fired'", &[])
                .await?;
            if row.is_some() {
                return anyhow::Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    within_for(Duration::from_secs(2) + TAKEOVER + LEASE, "the alarm on node2", fired).await?;
    assert_eq!(cluster.owner("alarmed").await?.map(|(name, _)| name).as_deref(), Some("node2"));
    Ok(())
}

#[tokio::test]
async fn a_database_crash_loses_nothing_acknowledged() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let writers = cluster.start_writers("crash", 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = cluster.script(&["db-restart"]).await?;
    ensure!(out.status.success(), "db-restart: {}", String::from_utf8_lossy(&out.stderr));
    let restarted_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    writers.check(&cluster).await?;
    eprintln!("writers went on for {:?} after the restart", restarted_at.elapsed());
    Ok(())
}

#[tokio::test]
async fn a_node_stopped_by_sigterm_hands_its_rooms_over_at_once() -> Result<()> {
    let _quiet = quiet_machine();
    let cluster = Cluster::up(2).await?;
    let (node1, node2) = (cluster.node("node1").await?, cluster.node("node2").await?);
    let mut client = Client::connect(&format!("ws://{}/parties/hostile/handover", node1.address)).await?;
    append(&mut client, 1).await?;
    signal(node1.pid, "TERM")?;
    let (code, _) = client.recv_close().await?;
    assert_eq!(code, 1001);
    let exited = async {
        while std::path::Path::new(&format!("/proc/{}/cmdline", node1.pid)).exists()
            && !std::fs::read(format!("/proc/{}/cmdline", node1.pid)).unwrap_or_default().is_empty()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    within_for(Duration::from_secs(15), "node1 to exit", exited).await;
    // It gave up its lease on the way out: nobody waits for it to run out.
    let row = cluster
        .db
        .query_one("SELECT lease_until < clock_timestamp() FROM partyhost_nodes WHERE name = 'node1'", &[])
        .await?;
    assert!(row.get::<_, bool>(0), "node1 left its lease running");
    let (status, body) = http(&node2.address, "/parties/hostile/handover/appends").await?;
    assert_eq!((status, body.as_str()), (200, "appends 1"));
    assert_eq!(cluster.owner("handover").await?.map(|(name, _)| name).as_deref(), Some("node2"));
    Ok(())
}
