//! Settings of `serve` and `gc`: the TOML configuration file and how flags
//! override it.
//!
//! Every key is the long flag's name without the dashes' prefix, so
//! `--grace-period 10m` and `grace-period = "10m"` mean the same:
//!
//! ```toml
//! addr = "0.0.0.0:5000"
//! root = "/var/lib/oci-blocks-registry"
//! htpasswd = "/etc/oci-blocks-registry/htpasswd"
//! auth-pull = false
//! tls-cert = "/etc/oci-blocks-registry/cert.pem"
//! tls-key = "/etc/oci-blocks-registry/key.pem"
//! gc-interval = "6h"
//! grace-period = "1h"
//! delete-untagged = false
//! upload-expiry = "24h"
//! log-format = "json"
//! shutdown-timeout = "30s"
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, IoContext, Result};

/// The configuration file's contents; every key is optional.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `HOST:PORT` to listen on.
    pub addr: Option<String>,
    /// The storage root.
    pub root: Option<PathBuf>,
    /// The storage as a URL: `s3://BUCKET/PREFIX`, or a directory.
    pub storage: Option<String>,
    /// An htpasswd file of bcrypt hashes; writes then need credentials.
    pub htpasswd: Option<PathBuf>,
    /// Reads need credentials too.
    pub auth_pull: Option<bool>,
    /// PEM certificate chain for TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    pub tls_key: Option<PathBuf>,
    /// Run garbage collection this often inside `serve`.
    pub gc_interval: Option<String>,
    /// Unreferenced blobs younger than this are kept.
    pub grace_period: Option<String>,
    /// Collections also remove manifests no tag reaches.
    pub delete_untagged: Option<bool>,
    /// Upload sessions untouched this long are discarded by a collection.
    pub upload_expiry: Option<String>,
    /// `text` or `json` request logs.
    pub log_format: Option<String>,
    /// How long a graceful shutdown waits for requests in flight.
    pub shutdown_timeout: Option<String>,
}

impl FileConfig {
    /// Reads a configuration file; unknown keys are errors.
    pub fn load(path: &Path) -> Result<FileConfig> {
        let text = std::fs::read_to_string(path).at(path)?;
        toml::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))
    }
}

/// Parses a duration as `humantime` writes them (`90s`, `10m`, `1h 30m`), naming
/// the setting in the error.
pub fn duration(setting: &str, text: &str) -> Result<Duration> {
    humantime::parse_duration(text)
        .map_err(|e| Error::Config(format!("{setting} {text:?}: {e} (examples: 30s, 10m, 1h)")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_refuses_unknown_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "addr = \"127.0.0.1:0\"\nroot = \"/r\"\nauth-pull = true\ngrace-period = \"10m\"\n",
        )
        .expect("write");
        let c = FileConfig::load(&path).expect("load");
        assert_eq!(c.addr.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(c.auth_pull, Some(true));
        assert_eq!(
            duration(
                "grace-period",
                c.grace_period.as_deref().unwrap_or_default()
            )
            .expect("d"),
            Duration::from_secs(600)
        );
        std::fs::write(&path, "grace_period = \"10m\"\n").expect("write");
        let err = FileConfig::load(&path).expect_err("unknown key");
        assert!(err.to_string().contains("grace_period"), "{err}");
        let err = duration("grace-period", "soon").expect_err("bad duration");
        assert!(err.to_string().contains("grace-period \"soon\""), "{err}");
    }
}
