//! Java: the Maven coordinates of a jar, from its `META-INF/maven/**/pom.properties`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// `groupId:artifactId:version` when the jar has exactly one `pom.properties`
/// with all three keys; `None` for none or several (shaded jars).
pub fn maven_coordinates(path: &Path) -> Result<Option<String>> {
    let malformed = |reason: String| Error::MalformedJar {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| malformed(e.to_string()))?;
    let poms: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok())
        .filter(|n| n.starts_with("META-INF/maven/") && n.ends_with("/pom.properties"))
        .map(|n| n.to_string())
        .collect();
    let [pom] = poms.as_slice() else {
        return Ok(None);
    };
    let mut text = String::new();
    zip.by_name(pom)
        .map_err(|e| malformed(format!("{pom}: {e}")))?
        .take(64 * 1024)
        .read_to_string(&mut text)
        .map_err(|e| malformed(format!("{pom}: {e}")))?;
    let get = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().to_string())
    };
    Ok(match (get("groupId"), get("artifactId"), get("version")) {
        (Some(g), Some(a), Some(v)) => Some(format!("{g}:{a}:{v}")),
        _ => None,
    })
}
