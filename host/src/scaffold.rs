//! `partyhost new <name>`: a working party crate under `guests/`, added to
//! the manifest with a build section so `partyhost dev` rebuilds it; with
//! `--ts`, a PartyKit server class in `src/<name>.ts` instead, added as the
//! party's `main` (and a manifest made for it when there is none).

use anyhow::{Context, anyhow, bail};
use std::path::{Path, PathBuf};

use crate::ids::PartyName;
use crate::manifest::Deployment;

/// What a new party is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Language {
    Rust,
    TypeScript,
}

/// Creates the party's code next to `manifest` (`guests/<name>/` for Rust,
/// `src/<name>.ts` for TypeScript) and appends the party to the manifest
/// (as text, so its comments stay). A TypeScript party may start a new
/// manifest. Returns what was created.
///
/// # Errors
/// When the name is invalid, the manifest is invalid or already has the
/// party, or the code's path exists.
pub fn new_party(manifest: &Path, name: &str, language: Language) -> anyhow::Result<PathBuf> {
    let party = PartyName::try_from(name).map_err(|reason| anyhow!("party name {name:?} {reason}"))?;
    let fresh = language == Language::TypeScript && !manifest.exists();
    let mut text = if fresh {
        format!(
            "# partyhost manifest: which code serves which party.\nname = \"{name}\"\nmain = \"{name}\"\n"
        )
    } else {
        let deployment = Deployment::load(manifest)?;
        if deployment.parties.contains_key(&party) {
            bail!("{} already has a party named `{party}`", manifest.display());
        }
        std::fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?
    };
    let base = manifest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let created = match language {
        Language::Rust => base.join("guests").join(name),
        Language::TypeScript => base.join("src").join(format!("{name}.ts")),
    };
    if created.exists() {
        bail!("{} already exists", created.display());
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&match language {
        Language::Rust => manifest_entry(name),
        Language::TypeScript => script_manifest_entry(name),
    });
    Deployment::parse(&text, base).context("the manifest with the new party does not parse")?;
    match language {
        Language::Rust => {
            std::fs::create_dir_all(created.join("src"))
                .with_context(|| format!("creating {}", created.display()))?;
            std::fs::write(created.join("Cargo.toml"), cargo_toml(name))?;
            std::fs::write(created.join("src/lib.rs"), lib_rs(name))?;
        }
        Language::TypeScript => {
            let dir = base.join("src");
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            std::fs::write(&created, server_ts(name))
                .with_context(|| format!("writing {}", created.display()))?;
        }
    }
    std::fs::write(manifest, text).with_context(|| format!("writing {}", manifest.display()))?;
    Ok(created)
}

fn cargo_toml(name: &str) -> String {
    format!(
        r#"[package]
name = "{name}"
publish = false
version.workspace = true
edition.workspace = true
rust-version.workspace = true
license.workspace = true

[lib]
crate-type = ["cdylib"]

[dependencies]
partyhost-guest = {{ path = "../../guest-sdk" }}

[lints]
workspace = true
"#
    )
}

fn lib_rs(name: &str) -> String {
    format!(
        r##"//! The `{name}` party: greets each client, and broadcasts every message to
//! the room with a running count kept in storage.

use partyhost_guest::{{Connection, ConnectionContext, Message, Party, Request, Response, Room, export_party}};
use std::cell::Cell;

struct App {{
    room: Room,
    messages: Cell<u64>,
}}

impl Party for App {{
    fn new(room: Room) -> Self {{
        Self {{ room, messages: Cell::new(0) }}
    }}

    async fn on_start(&self) {{
        self.messages.set(self.room.storage().get("messages").unwrap_or(0));
    }}

    async fn on_connect(&self, conn: Connection, _ctx: ConnectionContext) {{
        conn.send(format!("welcome to {{}}: {{}} messages so far", self.room.id(), self.messages.get()));
    }}

    async fn on_message(&self, message: Message, sender: Connection) {{
        let count = self.messages.get() + 1;
        self.messages.set(count);
        let _ = self.room.storage().put("messages", &count);
        let text = message.as_text().unwrap_or("(binary)");
        self.room.broadcast(format!("#{{count}} from {{}}: {{text}}", sender.id()), &[]);
    }}

    async fn on_request(&self, _request: Request) -> Response {{
        Response::json(&self.messages.get())
    }}
}}

export_party!(App);
"##
    )
}

fn server_ts(name: &str) -> String {
    format!(
        r#"// The `{name}` party: greets each client, and broadcasts every message to
// the room with a running count kept in storage. A PartyKit server class:
// `partyhost dev` builds it and rebuilds it on save.
import type * as Party from "partykit/server";

export default class Server implements Party.Server {{
  messages = 0;

  constructor(readonly room: Party.Room) {{}}

  async onStart() {{
    this.messages = (await this.room.storage.get<number>("messages")) ?? 0;
  }}

  onConnect(connection: Party.Connection) {{
    connection.send(`welcome to ${{this.room.id}}: ${{this.messages}} messages so far`);
  }}

  async onMessage(message: string | ArrayBuffer, sender: Party.Connection) {{
    this.messages += 1;
    await this.room.storage.put("messages", this.messages);
    const text = typeof message === "string" ? message : "(binary)";
    this.room.broadcast(`#${{this.messages}} from ${{sender.id}}: ${{text}}`);
  }}

  onRequest(_req: Party.Request) {{
    return Response.json(this.messages);
  }}
}}
"#
    )
}

fn script_manifest_entry(name: &str) -> String {
    format!("\n[parties.{name}]\nmain = \"src/{name}.ts\"\n")
}

fn manifest_entry(name: &str) -> String {
    let wasm = name.replace('-', "_");
    format!(
        r#"
[parties.{name}]
wasm = "target/guests/wasm32-wasip2/guest/{wasm}.wasm"

[parties.{name}.build]
command = "scripts/build-guests.sh {name}"
watch = ["guests/{name}/src", "guests/{name}/Cargo.toml"]
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_party_writes_a_crate_and_extends_the_manifest() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let manifest = dir.path().join("partykit.toml");
        std::fs::write(&manifest, "# my project\nname = \"p\"\n[parties.main]\nwasm = \"main.wasm\"")?;

        let crate_dir = new_party(&manifest, "chat-room", Language::Rust)?;
        assert!(crate_dir.join("Cargo.toml").exists() && crate_dir.join("src/lib.rs").exists());
        let text = std::fs::read_to_string(&manifest)?;
        assert!(text.starts_with("# my project\n"), "comments are kept");
        let deployment = Deployment::load(&manifest)?;
        let chat = deployment.parties.get("chat-room").ok_or_else(|| anyhow!("no chat-room party"))?;
        assert!(chat.wasm.ends_with("target/guests/wasm32-wasip2/guest/chat_room.wasm"));
        let build = chat.build.as_ref().ok_or_else(|| anyhow!("no build section"))?;
        assert_eq!(build.command, "scripts/build-guests.sh chat-room");

        let again = new_party(&manifest, "chat-room", Language::Rust).map_err(|e| e.to_string());
        assert_eq!(again, Err(format!("{} already has a party named `chat-room`", manifest.display())));
        let bad = new_party(&manifest, "Chat", Language::Rust).map_err(|e| e.to_string());
        assert_eq!(
            bad,
            Err("party name \"Chat\" may contain only a-z, 0-9, `-` and `_`, not 'C'".to_owned())
        );
        Ok(())
    }
}
