//! Java: the Maven coordinates of a jar, from its `META-INF/maven/**/pom.properties`.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::{Error, Result};

/// `groupId:artifactId:version` from the jar's `pom.properties` with all three
/// keys: its only one, or, in a shaded jar that carries those of the
/// libraries it includes, the one with the longest artifactId that the
/// jar's file name starts with (`spark-core_2.12` for
/// `spark-core_2.12-3.5.5.jar`); `None` when there is none, or no single one
/// is the jar's own.
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
    let stem = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let stem = stem.strip_suffix(".jar").unwrap_or(&stem);
    // META-INF/maven/GROUP/ARTIFACT/pom.properties
    let own = |pom: &&String| {
        let artifact = pom.rsplit('/').nth(1).unwrap_or_default();
        !artifact.is_empty()
            && stem
                .strip_prefix(artifact)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('-'))
    };
    let artifact_len = |pom: &&String| pom.rsplit('/').nth(1).map_or(0, str::len);
    let pom = match poms.as_slice() {
        [pom] => pom,
        several => {
            // The longest artifactId that names the jar; a tie names none.
            let matching: Vec<&String> = several.iter().filter(own).collect();
            let longest = matching.iter().map(artifact_len).max().unwrap_or(0);
            match matching
                .into_iter()
                .filter(|p| artifact_len(p) == longest)
                .collect::<Vec<_>>()
                .as_slice()
            {
                [pom] => *pom,
                _ => return Ok(None),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn jar(dir: &Path, name: &str, poms: &[(&str, &str)]) -> std::path::PathBuf {
        let path = dir.join(name);
        let mut w = zip::ZipWriter::new(File::create(&path).expect("create"));
        for (group, artifact) in poms {
            w.start_file(
                format!("META-INF/maven/{group}/{artifact}/pom.properties"),
                zip::write::SimpleFileOptions::default(),
            )
            .expect("entry");
            write!(w, "groupId={group}\nartifactId={artifact}\nversion=1.0\n").expect("write");
        }
        w.finish().expect("finish");
        path
    }

    #[test]
    fn a_shaded_jar_is_named_by_its_own_pom() -> Result<()> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let own = [
            ("org.eclipse.jetty", "jetty-plus"),
            ("org.apache.spark", "spark-core_2.12"),
        ];
        let p = jar(tmp.path(), "spark-core_2.12-3.5.5.jar", &own);
        assert_eq!(
            maven_coordinates(&p)?.as_deref(),
            Some("org.apache.spark:spark-core_2.12:1.0")
        );
        // A prefix of the name that does not end at a `-` is not the jar's;
        // of two that do, the longer is.
        let p = jar(
            tmp.path(),
            "spark-core_2.12-3.5.5.jar",
            &[("a", "spark"), ("b", "spark-co"), ("c", "spark-core_2.12")],
        );
        assert_eq!(
            maven_coordinates(&p)?.as_deref(),
            Some("c:spark-core_2.12:1.0")
        );
        let p = jar(tmp.path(), "lib-2.jar", &[("a", "lib-other"), ("b", "li")]);
        assert_eq!(maven_coordinates(&p)?, None);
        // Two that could be its own: none is.
        let p = jar(tmp.path(), "x-1.jar", &[("a", "x"), ("b", "x")]);
        assert_eq!(maven_coordinates(&p)?, None);
        let p = jar(tmp.path(), "renamed.jar", &[("g", "lib")]);
        assert_eq!(maven_coordinates(&p)?.as_deref(), Some("g:lib:1.0"));
        Ok(())
    }
}
