//! `build.toml`: a build described in a file, so it is reproducible from the
//! repository. Paths in the file are relative to the file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::{Error, Result};

/// The contents of a build file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildFile {
    /// `oci:DIR[:TAG]` of the base image.
    pub base: Option<String>,
    /// `oci:DIR[:TAG]` to write.
    pub out: Option<String>,
    /// `OS/ARCH[/VARIANT]`.
    pub platform: Option<String>,
    /// Several platforms (one index).
    #[serde(default)]
    pub platforms: Vec<String>,
    /// Per-platform tables: `[for."linux/arm64"]` with their own `add` list.
    #[serde(default, rename = "for")]
    pub per_platform: BTreeMap<String, PlatformTable>,
    /// `config.Entrypoint`.
    pub entrypoint: Option<Vec<String>>,
    /// `config.Cmd`.
    pub cmd: Option<Vec<String>>,
    /// `K=V` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// `config.WorkingDir`.
    pub workdir: Option<String>,
    /// `config.User`.
    pub user: Option<String>,
    /// `config.Labels`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Files below this size stay in the layer.
    pub block_min_size: Option<u64>,
    /// Explicit block globs.
    #[serde(default)]
    pub blocks: Vec<String>,
    /// At most this many layers.
    pub max_layers: Option<usize>,
    /// `index` (the default) or `none`.
    pub fallback: Option<crate::build::Fallback>,
    /// Layers to add, in order.
    #[serde(default)]
    pub add: Vec<FileAdd>,
}

/// A `[for."OS/ARCH"]` table.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformTable {
    /// Layers added only for this platform, after the common ones.
    #[serde(default)]
    pub add: Vec<FileAdd>,
}

/// One `[[add]]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdd {
    /// The input, relative to the build file.
    pub src: PathBuf,
    /// The absolute path in the image.
    pub dest: String,
}

/// `rel` resolved against the build file's directory `dir`, with `.` and
/// `..` taken away lexically (`examples/app/../../target/x` is
/// `target/x`), as reports and errors then print it.
fn beside(dir: &Path, rel: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in dir.join(rel).components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                let last = out.components().next_back();
                if matches!(last, Some(Component::Normal(_))) {
                    out.pop();
                } else if !matches!(last, Some(Component::RootDir)) {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

impl BuildFile {
    /// Reads a build file, resolving its relative paths against its directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut file: BuildFile = toml::from_str(&text).map_err(|e| Error::BuildFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolve_ref = |r: &mut Option<String>| {
            if let Some(rest) = r.as_deref().and_then(|r| r.strip_prefix("oci:")) {
                if !rest.starts_with('/') {
                    *r = Some(format!("oci:{}", beside(dir, Path::new(rest)).display()));
                }
            }
        };
        resolve_ref(&mut file.base);
        resolve_ref(&mut file.out);
        let per_platform = file
            .per_platform
            .values_mut()
            .flat_map(|t| t.add.iter_mut());
        for add in file.add.iter_mut().chain(per_platform) {
            if add.src.is_relative() {
                add.src = beside(dir, &add.src);
            }
        }
        Ok(file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_beside_the_build_file_are_clean() {
        let cases = [
            ("examples/app", "../../target/x", "target/x"),
            ("examples/app", "./lib", "examples/app/lib"),
            ("a", "../../b", "../b"),
            ("/srv/app", "../../../etc", "/etc"),
            ("", "lib", "lib"),
            ("a", "..", "."),
        ];
        for (dir, rel, want) in cases {
            assert_eq!(
                beside(Path::new(dir), Path::new(rel)),
                PathBuf::from(want),
                "{dir} + {rel}"
            );
        }
    }
}
