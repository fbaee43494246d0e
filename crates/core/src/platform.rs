//! Platforms, in one place: `OS/ARCH[/VARIANT]` parsed, this machine's, and
//! which entry of an index a client of a platform takes (`spec/fallback.md`,
//! "How clients choose").
//!
//! The builder (a base image), the client (a pull) and the unpacker all
//! choose through [`choose`], so that they agree: the platform is found as a
//! client unaware of blocks finds it, ignoring `io.oci-blocks.variant`; among
//! the entries of exactly that platform the first blocks manifest is taken,
//! else the first plain one; the legacy manifest of a blocks manifest is the
//! first plain entry of its platform. Architectures are compared after the
//! aliases containerd knows (`x86_64` is `amd64`, `aarch64` is `arm64`), and
//! `arm64` with variant `v8` is `arm64`.

use std::fmt;

use serde_json::Value;

use crate::names::{ANNOTATION_VARIANT, VARIANT_BLOCKS};
use crate::{Error, Result};

/// A platform: operating system, architecture and, optionally, variant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    /// `linux`, `windows`...
    pub os: String,
    /// `amd64`, `arm64`...
    pub architecture: String,
    /// `v7`, `v8`...
    pub variant: Option<String>,
}

fn normalize(architecture: &str, variant: Option<&str>) -> (String, Option<String>) {
    let arch = match architecture {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "i386" | "i686" => "386",
        "armhf" => return ("arm".into(), Some("v7".into())),
        "armel" => return ("arm".into(), Some("v6".into())),
        other => other,
    };
    let variant = match (arch, variant) {
        ("arm64", Some("v8")) | (_, Some("")) => None,
        (_, v) => v.map(str::to_string),
    };
    (arch.to_string(), variant)
}

impl Platform {
    /// Parses `OS/ARCH[/VARIANT]`.
    pub fn parse(text: &str) -> Result<Platform> {
        let parts: Vec<&str> = text.split('/').collect();
        let bad = || Error::Malformed {
            what: format!("platform {text:?}"),
            reason: "expected OS/ARCH or OS/ARCH/VARIANT".into(),
        };
        match parts.as_slice() {
            [os, arch] | [os, arch, _] if !os.is_empty() && !arch.is_empty() => {
                let variant = parts.get(2).copied();
                if variant == Some("") {
                    return Err(bad());
                }
                let (architecture, variant) = normalize(arch, variant);
                Ok(Platform {
                    os: os.to_string(),
                    architecture,
                    variant,
                })
            }
            _ => Err(bad()),
        }
    }

    /// This machine's platform (`linux/amd64` on x86-64 Linux).
    pub fn host() -> Platform {
        let (architecture, variant) = normalize(std::env::consts::ARCH, None);
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture,
            variant,
        }
    }

    /// The platform of an index entry (its `platform` object), if it has one.
    pub fn of_entry(entry: &Value) -> Option<Platform> {
        let p = entry.get("platform")?;
        let os = p.get("os")?.as_str()?;
        let arch = p.get("architecture")?.as_str()?;
        let (architecture, variant) = normalize(arch, p.get("variant").and_then(Value::as_str));
        Some(Platform {
            os: os.to_string(),
            architecture,
            variant,
        })
    }

    /// Whether an entry of platform `offered` serves a client of this one: the
    /// same OS and architecture, and the variant when this one names one.
    pub fn accepts(&self, offered: &Platform) -> bool {
        self.os == offered.os
            && self.architecture == offered.architecture
            && (self.variant.is_none() || self.variant == offered.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What a client of a platform takes from an index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The entry to take.
    pub index: usize,
    /// Whether it is a blocks manifest.
    pub blocks: bool,
    /// For a blocks manifest, the legacy manifest of its platform (the entry
    /// a client unaware of blocks takes), if the index has one.
    pub legacy: Option<usize>,
}

fn variant(entry: &Value) -> Option<&str> {
    entry
        .get("annotations")
        .and_then(|a| a.get(ANNOTATION_VARIANT))
        .and_then(Value::as_str)
}

/// The first plain entry (no `io.oci-blocks.variant`) whose `platform` is
/// exactly that of `entries[of]`: the legacy manifest of a blocks manifest.
pub fn legacy_of(entries: &[Value], of: usize) -> Option<usize> {
    let platform = entries.get(of)?.get("platform");
    entries
        .iter()
        .position(|e| variant(e).is_none() && e.get("platform") == platform)
}

/// The entry of an index's `manifests` that a client of `wanted` takes, or
/// `None` when no entry serves it.
pub fn choose(entries: &[Value], wanted: &Platform) -> Option<Choice> {
    // The platform a client unaware of blocks would find: the first entry
    // that serves it, whatever its variant annotation, but never an anchor
    // or a variant this client does not know.
    let first = entries.iter().position(|e| {
        matches!(variant(e), None | Some(VARIANT_BLOCKS))
            && Platform::of_entry(e).is_some_and(|p| wanted.accepts(&p))
    })?;
    let platform = entries[first].get("platform");
    let exact = |e: &&Value| e.get("platform") == platform;
    let blocks = entries
        .iter()
        .position(|e| exact(&e) && variant(e) == Some(VARIANT_BLOCKS));
    let plain = entries
        .iter()
        .position(|e| exact(&e) && variant(e).is_none());
    match (blocks, plain) {
        (Some(index), legacy) => Some(Choice {
            index,
            blocks: true,
            legacy,
        }),
        (None, Some(index)) => Some(Choice {
            index,
            blocks: false,
            legacy: None,
        }),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(os: &str, arch: &str, variant: Option<&str>, blocks: bool) -> Value {
        let mut p = json!({"os": os, "architecture": arch});
        if let Some(v) = variant {
            p["variant"] = json!(v);
        }
        let mut e = json!({"platform": p});
        if blocks {
            e["annotations"] = json!({ANNOTATION_VARIANT: VARIANT_BLOCKS});
        }
        e
    }

    #[test]
    fn each_platform_gets_its_own_blocks_manifest() {
        let anchor = json!({"platform": {"os": "unknown", "architecture": "unknown"}, "annotations": {ANNOTATION_VARIANT: "anchor"}});
        let entries = vec![
            entry("linux", "amd64", None, false),
            entry("linux", "arm64", Some("v8"), false),
            anchor,
            entry("linux", "amd64", None, true),
            entry("linux", "arm64", Some("v8"), true),
        ];
        let arm = Platform::parse("linux/arm64").expect("platform");
        assert_eq!(
            choose(&entries, &arm),
            Some(Choice {
                index: 4,
                blocks: true,
                legacy: Some(1)
            })
        );
        let amd = Platform::parse("linux/x86_64").expect("platform");
        assert_eq!(
            choose(&entries, &amd).map(|c| (c.index, c.legacy)),
            Some((3, Some(0)))
        );
        assert_eq!(legacy_of(&entries, 4), Some(1));
        assert_eq!(
            choose(&entries, &Platform::parse("linux/s390x").expect("p")),
            None
        );
        // Without blocks entries, the plain entry of the platform.
        let plain = vec![
            entry("linux", "arm64", None, false),
            entry("linux", "amd64", None, false),
        ];
        assert_eq!(
            choose(&plain, &amd),
            Some(Choice {
                index: 1,
                blocks: false,
                legacy: None
            })
        );
    }

    #[test]
    fn platforms_parse_and_normalize() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").expect("p").to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/aarch64").expect("p").to_string(),
            "linux/arm64"
        );
        assert_eq!(
            Platform::parse("linux/arm/v7").expect("p").to_string(),
            "linux/arm/v7"
        );
        for bad in ["linux", "/amd64", "linux/", "linux/amd64/", "a/b/c/d"] {
            assert!(Platform::parse(bad).is_err(), "{bad}");
        }
        let v7 = Platform::parse("linux/arm/v7").expect("p");
        let v6 = Platform::parse("linux/arm/v6").expect("p");
        assert!(!v7.accepts(&v6));
        assert!(Platform::parse("linux/arm").expect("p").accepts(&v6));
        assert_eq!(Platform::host().os, std::env::consts::OS);
    }
}
