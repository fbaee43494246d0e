//! Compiles every vector description under `vectors/GROUP/NAME.toml` into the
//! binary, so that the suite runs anywhere without the source tree.

use std::fmt::Write;
use std::path::Path;

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("vectors");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut ids = Vec::new();
    let groups = std::fs::read_dir(&root).expect("conformance/vectors exists");
    for group in groups {
        let group = group.expect("readable vectors directory").path();
        println!("cargo:rerun-if-changed={}", group.display());
        let Ok(files) = std::fs::read_dir(&group) else {
            continue;
        };
        for file in files {
            let path = file.expect("readable vector group").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let group_name = group.file_name().expect("a group name").to_string_lossy();
                let stem = path.file_stem().expect("a file name").to_string_lossy();
                ids.push((format!("{group_name}/{stem}"), path.clone()));
            }
        }
    }
    ids.sort();
    let mut out = String::from(
        "/// Every vector description: its id and its TOML text.\nconst SOURCES: &[(&str, &str)] = &[\n",
    );
    for (id, path) in &ids {
        writeln!(
            out,
            "    ({id:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("write to a string");
    }
    out.push_str("];\n");
    let dest = Path::new(&std::env::var("OUT_DIR").expect("OUT_DIR")).join("vectors.rs");
    std::fs::write(dest, out).expect("write vectors.rs");
}
