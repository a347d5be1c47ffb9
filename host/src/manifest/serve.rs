//! `serve`: a folder of static files (the project's web pages) served at
//! `/` beside the parties, like PartyKit's `serve` in partykit.json.
//!
//! Written either as `serve = "public"` or as a table:
//!
//! ```toml
//! [serve]
//! path = "public"
//! single_page_app = true  # unknown paths get index.html
//! browser_ttl = 3600      # seconds browsers may cache a file
//! ```

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use std::fmt;
use std::path::{Path, PathBuf};

/// `serve` as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeTable {
    /// The folder, relative to the manifest.
    pub path: PathBuf,
    /// Answer paths that match no file with the folder's `index.html`.
    #[serde(default)]
    pub single_page_app: bool,
    /// `Cache-Control: max-age` in seconds; without it browsers revalidate
    /// every time (cheap: the ETag makes it a 304).
    pub browser_ttl: Option<u32>,
}

/// `serve = "public"` or a `[serve]` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeManifest(pub ServeTable);

/// `serve`, with its folder resolved against the manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeSpec {
    pub dir: PathBuf,
    pub single_page_app: bool,
    pub browser_ttl: Option<u32>,
}

/// Whether a file or folder name in the serve folder is ever served:
/// dotfiles and `node_modules` are not (as in PartyKit), nor are they
/// uploaded by `partyhost deploy`.
pub fn is_served_name(name: &str) -> bool {
    !name.starts_with('.') && name != "node_modules"
}

impl ServeManifest {
    pub(super) fn resolve(self, base: &Path) -> ServeSpec {
        let ServeTable { path, single_page_app, browser_ttl } = self.0;
        ServeSpec { dir: base.join(path), single_page_app, browser_ttl }
    }
}

/// A string is the folder; a table is read field by field, so its mistakes
/// get toml's exact messages (an untagged enum would only say "did not
/// match any variant").
impl<'de> Deserialize<'de> for ServeManifest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ServeVisitor;
        impl<'de> Visitor<'de> for ServeVisitor {
            type Value = ServeManifest;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a folder path, or a table with `path`, `single_page_app` and `browser_ttl`")
            }

            fn visit_str<E: de::Error>(self, path: &str) -> Result<ServeManifest, E> {
                Ok(ServeManifest(ServeTable {
                    path: PathBuf::from(path),
                    single_page_app: false,
                    browser_ttl: None,
                }))
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ServeManifest, A::Error> {
                ServeTable::deserialize(de::value::MapAccessDeserializer::new(map)).map(ServeManifest)
            }
        }
        deserializer.deserialize_any(ServeVisitor)
    }
}
